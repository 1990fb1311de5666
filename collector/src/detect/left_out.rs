//! One load balancer that leaves a member out while the others send to it.
//!
//! The pool's LB view sums every balancer node's sends. When one balancer
//! of several stops sending to a member (its configuration lost the
//! member, its kube-proxy never took it in, a rollout of a bad rule has
//! reached it first), the sum barely moves: with four balancers, the
//! member still gets three quarters of its share, inside every band, and
//! the users behind that balancer have their traffic on fewer backends.
//! So each balancer node's own split is watched for the ZERO shape: the
//! new connections it would have sent the member at its weight, summed
//! since it last sent it one, against the Poisson bound for every
//! (balancer, member) pair of the pool. It is a warning: the pool as a
//! whole is served, and a page is the pool-level verdicts' to give.
//!
//! Judged only where it means something: a balancer that sent to at least
//! two of the pool's members within the last [`SPLIT_WINDOW`] ticks (one
//! that sends everything to one member is not splitting, e.g. a hash
//! balancer with one client), about a member another balancer sent to in
//! that window (when none does, the pool-level ZERO speaks), in a pool the
//! LB view judges.

use std::{collections::HashMap, sync::Arc};

use crate::fxhash::FxHashMap;

/// Ticks within which a balancer's sends count as its current split.
const SPLIT_WINDOW: u64 = 10;
/// Ticks after which a balancer that sent nothing is forgotten.
const FORGET_AFTER: u64 = 30;
/// Nodes named among the ones still sending.
const NAMED: usize = 3;
/// Nodes kept per member among the last to send it one, whatever they
/// send to otherwise: a node that sends to one member a tick holds no
/// pairs, yet still counts as sending to it for [`SPLIT_WINDOW`] ticks.
const RECENT: usize = NAMED + 1;

/// One member eligible for a share in the LB view this tick.
pub(super) struct Eligible<'a> {
    pub id: &'a str,
    pub weight: f64,
    /// This tick's new connections by LB node (nodes absent sent none).
    pub by_node: &'a [(Arc<str>, u64)],
}

/// What one balancer knows of one member: where it started gathering
/// expectation, not the expectation itself, so that a tick costs the
/// balancer its sends, not a write to each of the pool's members (see
/// [`Balancer::per_weight`]).
#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    /// The balancer's [`Balancer::per_weight`] from which the member's
    /// weight gathers its expectation: where it stood when the balancer
    /// last sent the member one or the pair began, moved back by what was
    /// gathered at another weight when the weight changed.
    mark: f64,
    /// The tick it last sent the member one, plus one; 0 if it never did.
    sent_after: u64,
}

impl Pair {
    /// A pair that starts gathering at `per_weight`.
    fn at(per_weight: f64) -> Self {
        Self {
            mark: per_weight,
            sent_after: 0,
        }
    }

    /// Expected new connections from the balancer since it last sent one,
    /// for a member of `weight`.
    fn expected(&self, per_weight: f64, weight: f64) -> f64 {
        weight * (per_weight - self.mark)
    }

    /// Whether the balancer sent the member one within [`SPLIT_WINDOW`]
    /// ticks of `tick`.
    fn sends_at(&self, tick: u64) -> bool {
        self.sent_after > 0 && tick < self.sent_after - 1 + SPLIT_WINDOW
    }
}

/// One splitting balancer: its pair with each eligible member (in
/// [`LeftOut::ids`]' order), and when it last sent anything.
#[derive(Clone, Debug)]
struct Balancer {
    pairs: Vec<Pair>,
    /// New connections it would have sent a member of weight 1, summed over
    /// the ticks its split was judged: a member's expectation since a
    /// tick is its weight times what this gained since.
    per_weight: f64,
    last_active: u64,
}

impl Balancer {
    fn new(members: usize, tick: u64) -> Self {
        Self {
            pairs: vec![Pair::default(); members],
            per_weight: 0.0,
            last_active: tick,
        }
    }

    /// Pair `i`'s expectation at `weight`.
    fn expected(&self, i: usize, weight: f64) -> f64 {
        self.pairs[i].expected(self.per_weight, weight)
    }

    /// Whether it sent to at least two members within [`SPLIT_WINDOW`]
    /// ticks of `tick`: it splits, and its split can leave one out.
    fn splits(&self, tick: u64) -> bool {
        (self.pairs.iter())
            .filter(|p| p.sends_at(tick))
            .nth(1)
            .is_some()
    }
}

/// One member a balancer leaves out.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Finding {
    /// The balancer node.
    pub node: Arc<str>,
    /// New connections it would have sent since it last sent one.
    pub expected: f64,
    /// Their probability under the pool's dispersion.
    pub p: f64,
    /// The first [`NAMED`] by name of the other nodes that sent it new
    /// connections within [`SPLIT_WINDOW`] ticks.
    pub others: Vec<Arc<str>>,
    /// How many more did.
    pub more: usize,
}

impl Finding {
    /// Its reason, for people.
    pub(super) fn reason(&self) -> String {
        let named: Vec<&str> = self.others.iter().map(|n| &**n).collect();
        let others = match self.more {
            0 => named.join(", "),
            more => format!("{} and {more} more", named.join(", ")),
        };
        let verb = if self.others.len() + self.more == 1 {
            "sends"
        } else {
            "send"
        };
        format!(
            "load balancer {} sent it no new connection while its split would have sent {:.1} (P ≈ {:.1e}), yet sends to its peers: it leaves this member out (its configuration or rules lack it), while {others} {verb} to it",
            self.node, self.expected, self.p
        )
    }
}

/// Every splitting balancer node's split of one pool, in the LB view.
///
/// Kept lean for pools with thousands of balancer nodes (kube-proxy on
/// every node of a large cluster): a node's sends are grouped by counting
/// (see [`Sends`]), and a node that sends to one member a tick holds no
/// state until it splits.
#[derive(Clone, Debug, Default)]
pub(super) struct LeftOut {
    /// The eligible members' ids, in the order every balancer's pairs
    /// follow.
    ids: Vec<String>,
    /// Their weights, as their pairs gather at.
    weights: Vec<f64>,
    balancers: HashMap<Arc<str>, Balancer>,
    /// Per member (in `ids`' order), the last [`RECENT`] nodes to send it
    /// a new connection, and when.
    recent: Vec<Vec<(Arc<str>, u64)>>,
}

impl LeftOut {
    /// Whether it follows no balancer: a tick in which no member's sends
    /// are kept by node leaves it so, and can be skipped.
    pub(super) fn is_idle(&self) -> bool {
        self.balancers.is_empty() && self.recent.iter().all(Vec::is_empty)
    }

    /// Records one tick of the eligible members' sends by node, and
    /// returns each member some balancer leaves out (the strongest
    /// finding per member). `judged`: the LB view judges this tick (rate
    /// high enough, fresh); `gain` and `alpha` as for the pool's ZERO.
    pub(super) fn tick(
        &mut self,
        tick: u64,
        eligible: &[Eligible<'_>],
        judged: bool,
        gain: f64,
        alpha: f64,
    ) -> HashMap<String, Finding> {
        // No member eligible (the LB view stale, or every agent's counters
        // restarted): a gap, over which what was gathered waits.
        if eligible.is_empty() {
            return HashMap::new();
        }
        self.align(eligible);
        let sent = self.record(tick, eligible, judged);
        self.balancers
            .retain(|_, b| tick < b.last_active + FORGET_AFTER);
        for recent in &mut self.recent {
            recent.retain(|(_, at)| tick < at + SPLIT_WINDOW);
        }
        if !judged || self.balancers.is_empty() {
            return HashMap::new();
        }
        // Every pair of a balancer that splits is tested, whether or not it
        // sent this tick: a tick in which one node alone sent keeps what
        // the others showed.
        let tested = sent.max(self.balancers.len());
        let bound = ((eligible.len() * tested) as f64 / alpha).ln();
        let mut found: HashMap<String, Finding> = HashMap::new();
        for (node, balancer) in self.balancers.iter().filter(|(_, b)| b.splits(tick)) {
            for (i, &weight) in self.weights.iter().enumerate() {
                let expected = balancer.expected(i, weight);
                let evidence = expected * gain;
                let id = &self.ids[i];
                if evidence < bound || found.get(id).is_some_and(|f| f.expected >= expected) {
                    continue;
                }
                let (others, more) = self.others(node, i, tick);
                if others.is_empty() {
                    continue;
                }
                found.insert(
                    id.clone(),
                    Finding {
                        node: node.clone(),
                        expected,
                        p: (-evidence).exp(),
                        others,
                        more,
                    },
                );
            }
        }
        found
    }

    /// Orders every balancer's pairs as `eligible` is, when its members
    /// changed: a pair follows its member, a new member starts afresh.
    /// Then follows the members' weights.
    fn align(&mut self, eligible: &[Eligible<'_>]) {
        let same = self.ids.len() == eligible.len()
            && self.ids.iter().zip(eligible).all(|(id, m)| id == m.id);
        if !same {
            self.reorder(eligible);
        }
        self.reweigh(eligible);
    }

    /// Orders the pairs, the recent senders and the weights as `eligible`
    /// is.
    fn reorder(&mut self, eligible: &[Eligible<'_>]) {
        let index: HashMap<&str, usize> = (eligible.iter().enumerate())
            .map(|(i, m)| (m.id, i))
            .collect();
        for balancer in self.balancers.values_mut() {
            let mut pairs = vec![Pair::at(balancer.per_weight); eligible.len()];
            for (id, pair) in self.ids.iter().zip(&balancer.pairs) {
                if let Some(&i) = index.get(id.as_str()) {
                    pairs[i] = *pair;
                }
            }
            balancer.pairs = pairs;
        }
        let mut recent = vec![Vec::new(); eligible.len()];
        let mut weights: Vec<f64> = eligible.iter().map(|m| m.weight).collect();
        for ((id, was), &weight) in self.ids.iter().zip(&mut self.recent).zip(&self.weights) {
            if let Some(&i) = index.get(id.as_str()) {
                recent[i] = std::mem::take(was);
                weights[i] = weight;
            }
        }
        self.recent = recent;
        self.weights = weights;
        self.ids = eligible.iter().map(|m| m.id.to_owned()).collect();
    }

    /// A member whose weight changed keeps what it gathered at the old
    /// one and gathers at the new one from now on.
    fn reweigh(&mut self, eligible: &[Eligible<'_>]) {
        for (i, m) in eligible.iter().enumerate() {
            let old = self.weights[i];
            if old == m.weight {
                continue;
            }
            for balancer in self.balancers.values_mut() {
                let gathered = balancer.expected(i, old);
                let pair = &mut balancer.pairs[i];
                pair.mark = if m.weight > 0.0 {
                    balancer.per_weight - gathered / m.weight
                } else {
                    balancer.per_weight
                };
            }
            self.weights[i] = m.weight;
        }
    }

    /// Advances each sending, splitting balancer's `per_weight` by what it
    /// sent over the weights when the view is judged (this tick's
    /// expectation for all its pairs at once) and moves the marks of the
    /// pairs it sent to; returns how many balancers sent any.
    fn record(&mut self, tick: u64, eligible: &[Eligible<'_>], judged: bool) -> usize {
        let wsum: f64 = eligible.iter().map(|m| m.weight).sum();
        for (recent, m) in self.recent.iter_mut().zip(eligible) {
            note_recent(recent, sends(m).map(|(node, _)| node), tick);
        }
        let sends = Sends::of(eligible);
        for (node, members, total) in sends.by_node() {
            if members.len() < 2 && !self.balancers.contains_key(&**node) {
                // It sends to one member: not splitting, nothing to hold.
                continue;
            }
            let balancer = (self.balancers.entry(node.clone()))
                .or_insert_with(|| Balancer::new(eligible.len(), tick));
            balancer.last_active = tick;
            for &i in members {
                balancer.pairs[i as usize].sent_after = tick + 1;
            }
            if judged && wsum > 0.0 && balancer.splits(tick) {
                balancer.per_weight += total as f64 / wsum;
            }
            // What it sent to gathers from here: none expected this tick.
            for &i in members {
                balancer.pairs[i as usize].mark = balancer.per_weight;
            }
        }
        sends.nodes.len()
    }

    /// The nodes other than `node` that sent member `i` new connections
    /// within [`SPLIT_WINDOW`] ticks (every splitting balancer that did,
    /// and the last few others): the first [`NAMED`] by name, and how many
    /// more. Nothing is copied or sorted for the rest: a member of a pool
    /// behind a thousand kube-proxies has a thousand.
    fn others<'s>(&'s self, node: &Arc<str>, i: usize, tick: u64) -> (Vec<Arc<str>>, usize) {
        let mut named: Vec<&Arc<str>> = Vec::with_capacity(NAMED + 1);
        let mut count = 0;
        let mut note = |n: &'s Arc<str>| {
            count += 1;
            let at = named.partition_point(|m| **m < *n);
            if at < NAMED {
                named.insert(at, n);
                named.truncate(NAMED);
            }
        };
        let balancers = (self.balancers.iter())
            .filter(|&(n, b)| n != node && b.pairs[i].sends_at(tick))
            .map(|(n, _)| n);
        for n in balancers {
            note(n);
        }
        for (n, at) in &self.recent[i] {
            let counted = self
                .balancers
                .get(n)
                .is_some_and(|b| b.pairs[i].sends_at(tick));
            if tick < at + SPLIT_WINDOW && n != node && !counted {
                note(n);
            }
        }
        let more = count - named.len();
        (named.into_iter().cloned().collect(), more)
    }
}

/// This tick's new connections to member `m` by node (nodes that sent
/// some).
fn sends<'a>(m: &Eligible<'a>) -> impl Iterator<Item = (&'a Arc<str>, u64)> + use<'a> {
    let by_node: &'a [(Arc<str>, u64)] = m.by_node;
    (by_node.iter())
        .filter(|(_, n)| *n > 0)
        .map(|(node, n)| (node, *n))
}

/// Notes that `senders` sent a member one at `tick`, among the last
/// [`RECENT`] nodes to (the one that sent longest ago gives way). Once
/// every place holds one of this tick's senders, the rest would only take
/// the place of another as recent: a member with a thousand senders costs
/// a few. Which of them stay is immaterial; all sent at `tick`.
fn note_recent<'a>(
    recent: &mut Vec<(Arc<str>, u64)>,
    senders: impl Iterator<Item = &'a Arc<str>>,
    tick: u64,
) {
    for node in senders {
        if recent.len() == RECENT && recent.iter().all(|&(_, at)| at == tick) {
            return;
        }
        if let Some(seen) = recent.iter_mut().find(|(n, _)| Arc::ptr_eq(n, node)) {
            seen.1 = tick;
        } else if recent.len() < RECENT {
            recent.push((node.clone(), tick));
        } else if let Some(oldest) = recent.iter_mut().min_by_key(|(_, at)| *at) {
            *oldest = (node.clone(), tick);
        }
    }
}

/// One tick's sends grouped by node: each node that sent any (found by
/// its name's `Arc`, which an agent keeps for all its endpoints, in a map
/// keyed by the pointer), with the members it sent to and how many new
/// connections in all. Grouped by counting, not sorting: a thousand
/// kube-proxies each sending to a thousand members are a million sends a
/// tick.
struct Sends<'a> {
    /// (node, sends, total), in the order the nodes first appear.
    nodes: Vec<(&'a Arc<str>, u32, u64)>,
    /// The members each node sent to, node after node.
    members: Vec<u32>,
}

impl<'a> Sends<'a> {
    fn of(eligible: &[Eligible<'a>]) -> Self {
        let mut index: FxHashMap<*const u8, u32> = FxHashMap::default();
        let mut nodes: Vec<(&Arc<str>, u32, u64)> = Vec::new();
        // Each send as (node, member), in the members' order.
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for (i, m) in eligible.iter().enumerate() {
            for (node, n) in sends(m) {
                let k = *index.entry(Arc::as_ptr(node).cast()).or_insert_with(|| {
                    nodes.push((node, 0, 0));
                    (nodes.len() - 1) as u32
                });
                let (_, count, total) = &mut nodes[k as usize];
                *count += 1;
                *total = total.saturating_add(n);
                pairs.push((k, i as u32));
            }
        }
        // Where each node's members start, then each send in its place.
        let mut next: Vec<u32> = (nodes.iter())
            .scan(0, |at, &(_, sends, _)| {
                let start = *at;
                *at += sends;
                Some(start)
            })
            .collect();
        let mut members = vec![0u32; pairs.len()];
        for (k, i) in pairs {
            let at = &mut next[k as usize];
            members[*at as usize] = i;
            *at += 1;
        }
        Self { nodes, members }
    }

    /// Each node with the members it sent to and its total.
    fn by_node(&self) -> impl Iterator<Item = (&'a Arc<str>, &[u32], u64)> + '_ {
        (self.nodes.iter()).scan(0usize, |at, &(node, sends, total)| {
            let members = &self.members[*at..*at + sends as usize];
            *at += sends as usize;
            Some((node, members, total))
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::detect::sim::Rng;

    const ALPHA: f64 = 2e-8;

    /// The node's name, the same `Arc` every tick (as the collector's
    /// agents keep theirs).
    pub(in crate::detect) fn node_name(node: &str) -> Arc<str> {
        thread_local! {
            static NAMES: std::cell::RefCell<HashMap<String, Arc<str>>> = Default::default();
        }
        NAMES.with(|names| {
            (names.borrow_mut().entry(node.to_owned()))
                .or_insert_with(|| Arc::from(node))
                .clone()
        })
    }

    /// Members `m1..=m{members}` of weight 1, with these sends by node.
    fn tick_of(
        left: &mut LeftOut,
        t: u64,
        sends: &[Vec<(Arc<str>, u64)>],
    ) -> HashMap<String, Finding> {
        let ids: Vec<String> = (1..=sends.len()).map(|i| format!("m{i}")).collect();
        let eligible: Vec<Eligible<'_>> = (ids.iter().zip(sends))
            .map(|(id, by_node)| Eligible {
                id,
                weight: 1.0,
                by_node,
            })
            .collect();
        left.tick(t, &eligible, true, 1.0, ALPHA)
    }

    /// Each balancer's `per_tick` new connections, spread evenly over the
    /// members it `includes`.
    fn spread(balancers: &[(&str, u64, &[usize])], members: usize) -> Vec<Vec<(Arc<str>, u64)>> {
        let mut sends = vec![Vec::new(); members];
        for &(node, per_tick, includes) in balancers {
            // One name per node, as an agent's is.
            let node: Arc<str> = node_name(node);
            for &m in includes {
                sends[m].push((node.clone(), per_tick / includes.len() as u64));
            }
        }
        sends
    }

    #[test]
    fn one_balancer_that_leaves_a_member_out_is_found_and_named() {
        let mut left = LeftOut::default();
        let all: &[usize] = &[0, 1, 2];
        let mut found = None;
        for t in 0..20 {
            let lb2: &[usize] = if t < 5 { all } else { &[0, 1] };
            let sends = spread(
                &[("lb-1", 12, all), ("lb-2", 12, lb2), ("lb-3", 12, all)],
                3,
            );
            let f = tick_of(&mut left, t, &sends);
            if let Some(finding) = f.get("m3") {
                found.get_or_insert((t, finding.clone()));
            }
            assert!(!f.contains_key("m1") && !f.contains_key("m2"), "{f:?}");
        }
        let (at, finding) = found.expect("lb-2 leaves m3 out");
        // 4 expected a tick from lb-2; ln(9 / 2e-8) ≈ 19.9: the fifth tick.
        assert_eq!(at, 9, "{finding:?}");
        assert_eq!(&*finding.node, "lb-2");
        assert_eq!(finding.others, [Arc::from("lb-1"), Arc::from("lb-3")]);
        let reason = finding.reason();
        assert!(
            reason.starts_with(
                "load balancer lb-2 sent it no new connection while its split would have sent 20.0"
            ) && reason.ends_with("while lb-1, lb-3 send to it"),
            "{reason}"
        );
    }

    #[test]
    fn a_finding_among_many_balancers_names_the_first_others_by_name_and_counts_the_rest() {
        let mut left = LeftOut::default();
        let all: &[usize] = &[0, 1, 2];
        let names: Vec<String> = (1..=12).map(|i| format!("lb-{i:02}")).collect();
        let mut found = None;
        for t in 0..20 {
            let balancers: Vec<(&str, u64, &[usize])> = (names.iter())
                .map(|n| (n.as_str(), 12, if n == "lb-07" { &all[..2] } else { all }))
                .collect();
            if let Some(f) = tick_of(&mut left, t, &spread(&balancers, 3)).remove("m3") {
                found = Some(f);
                break;
            }
        }
        let finding = found.expect("lb-07 leaves m3 out");
        assert_eq!(&*finding.node, "lb-07");
        let named: Vec<&str> = finding.others.iter().map(|n| &**n).collect();
        assert_eq!((named, finding.more), (vec!["lb-01", "lb-02", "lb-03"], 8));
        let reason = finding.reason();
        assert!(
            reason.ends_with("while lb-01, lb-02, lb-03 and 8 more send to it"),
            "{reason}"
        );
    }

    #[test]
    fn a_member_keeps_as_many_recent_senders_as_it_can_whatever_the_list_repeats() {
        let nodes: Vec<Arc<str>> = ["a", "b", "c", "d", "e"].map(node_name).into();
        let mut recent = vec![(node_name("old"), 1)];
        // Each node listed twice (its TCP and UDP endpoints to the member).
        let twice = nodes.iter().flat_map(|n| [n, n]);
        note_recent(&mut recent, twice, 5);
        let mut kept: Vec<&str> = recent.iter().map(|(n, _)| &**n).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["a", "b", "c", "d"]);
        assert!(recent.iter().all(|&(_, at)| at == 5));
    }

    #[test]
    fn sends_are_grouped_by_node_whatever_order_each_member_lists_them_in() {
        let (a, b, c) = (node_name("a"), node_name("b"), node_name("c"));
        let lists = [
            vec![(b.clone(), 1), (a.clone(), 2)],
            vec![(a.clone(), 3)],
            vec![(c.clone(), 0), (b.clone(), 4)],
        ];
        let ids = ["m1", "m2", "m3"];
        let eligible: Vec<Eligible<'_>> = (ids.iter().zip(&lists))
            .map(|(id, by_node)| Eligible {
                id,
                weight: 1.0,
                by_node,
            })
            .collect();
        let sends = Sends::of(&eligible);
        let groups: Vec<(&str, Vec<u32>, u64)> = (sends.by_node())
            .map(|(node, members, total)| (&**node, members.to_vec(), total))
            .collect();
        assert_eq!(groups, [("b", vec![0, 2], 5), ("a", vec![0, 1], 5)]);
    }

    #[test]
    fn a_balancer_sending_to_one_member_or_none_sending_is_no_finding() {
        let mut left = LeftOut::default();
        for t in 0..100 {
            // lb-2 sends everything to m1 (a hash balancer with one
            // client): it does not split, and is not judged.
            let sends = spread(&[("lb-1", 12, &[0, 1, 2]), ("lb-2", 12, &[0])], 3);
            assert!(tick_of(&mut left, t, &sends).is_empty(), "tick {t}");
        }
        // It holds nothing (a node sending to one Pod of each of many
        // Services holds nothing for any of them).
        assert!(!left.balancers.contains_key("lb-2"));
        assert_eq!(left.balancers["lb-1"].pairs.len(), 3);
        let mut left = LeftOut::default();
        for t in 0..100 {
            // Both leave m3 out: the pool's own ZERO speaks.
            let sends = spread(&[("lb-1", 12, &[0, 1]), ("lb-2", 12, &[0, 1])], 3);
            assert!(tick_of(&mut left, t, &sends).is_empty(), "tick {t}");
        }
    }

    #[test]
    fn random_splits_of_many_balancers_find_nothing() {
        // Four balancers each placing 3 new connections a tick at random
        // over five members (kube-proxy's numgen random), 20,000 ticks:
        // quiet balancers give each pair about 0.6 expected a tick, the
        // shape where chance runs of silence are likeliest.
        let mut rng = Rng::new(11);
        let mut left = LeftOut::default();
        let nodes: Vec<Arc<str>> = (1..=4).map(|i| Arc::from(format!("lb-{i}"))).collect();
        for t in 0..20_000 {
            let mut sends = vec![Vec::new(); 5];
            for node in &nodes {
                let mut counts = [0u64; 5];
                for _ in 0..rng.poisson(3.0) {
                    counts[(rng.next_u64() % 5) as usize] += 1;
                }
                for (m, &n) in counts.iter().enumerate() {
                    sends[m].push((node.clone(), n));
                }
            }
            let f = tick_of(&mut left, t, &sends);
            assert!(f.is_empty(), "tick {t}: {f:?}");
        }
    }

    #[test]
    fn a_member_that_leaves_and_a_balancer_that_goes_quiet_are_forgotten() {
        let mut left = LeftOut::default();
        let all: &[usize] = &[0, 1, 2];
        for t in 0..4 {
            let sends = spread(&[("lb-1", 12, all), ("lb-2", 12, &[0, 1])], 3);
            tick_of(&mut left, t, &sends);
        }
        assert!(left.balancers["lb-2"].expected(2, 1.0) > 0.0);
        // m3 leaves the eligible set (joining again, drained, down).
        let two = spread(&[("lb-1", 12, &[0, 1]), ("lb-2", 12, &[0, 1])], 2);
        tick_of(&mut left, 4, &two);
        assert_eq!(left.ids, ["m1", "m2"]);
        assert_eq!(left.balancers["lb-2"].pairs.len(), 2);
        for t in 5..40 {
            tick_of(&mut left, t, &spread(&[("lb-1", 12, &[0, 1])], 2));
        }
        assert!(!left.balancers.contains_key("lb-2"), "quiet for 30 ticks");
    }

    #[test]
    fn a_finding_holds_through_ticks_when_the_others_are_quiet() {
        // lb-1 splits over m1 and m2 and leaves m3 out; lb-2 sends only
        // to m3, every other tick: on the ticks between, lb-1 alone sends,
        // and lb-2 (holding no pairs: one member a tick) still counts as
        // sending to m3 for the window.
        let mut left = LeftOut::default();
        let mut first = None;
        for t in 0..40 {
            let mut balancers = vec![("lb-1", 12, &[0usize, 1][..])];
            if t % 2 == 0 {
                balancers.push(("lb-2", 4, &[2][..]));
            }
            let f = tick_of(&mut left, t, &spread(&balancers, 3));
            match (first, f.get("m3")) {
                (None, Some(finding)) => {
                    assert_eq!(&*finding.node, "lb-1");
                    assert_eq!(finding.others, [Arc::from("lb-2")]);
                    first = Some(t);
                }
                (Some(at), None) => panic!("found at tick {at}, gone at {t}: {f:?}"),
                _ => {}
            }
        }
        assert!(first.is_some(), "lb-1 leaves m3 out");
        assert!(!left.balancers.contains_key("lb-2"));
    }

    #[test]
    fn a_weight_that_changes_keeps_what_was_gathered_and_gathers_at_the_new_one() {
        // lb-1 sends 12 a tick to m1 and m2, never to m3; lb-2 sends to
        // all three. m3's weight goes from 1 to 2 at tick 5: lb-1's pair
        // with it gathers 12 × 1/3 a tick for five ticks, then 12 × 2/4.
        let mut left = LeftOut::default();
        let ids = ["m1", "m2", "m3"].map(String::from);
        for t in 0..10 {
            let sends = spread(&[("lb-1", 12, &[0, 1]), ("lb-2", 12, &[0, 1, 2])], 3);
            let weights = [1.0, 1.0, if t < 5 { 1.0 } else { 2.0 }];
            let eligible: Vec<Eligible<'_>> = (ids.iter().zip(&sends).zip(weights))
                .map(|((id, by_node), weight)| Eligible {
                    id,
                    weight,
                    by_node,
                })
                .collect();
            left.tick(t, &eligible, true, 1.0, ALPHA);
        }
        let expected = left.balancers["lb-1"].expected(2, 2.0);
        assert!((expected - 50.0).abs() < 1e-9, "{expected}");
        assert_eq!(left.balancers["lb-2"].expected(2, 2.0), 0.0);
    }

    #[test]
    fn a_gap_keeps_what_was_gathered() {
        // As in the first test: lb-2 leaves m3 out from tick 5, found at
        // tick 9 (the fifth). A tick with no member eligible in between
        // (the LB view stale) delays it by that tick alone.
        let mut left = LeftOut::default();
        let all: &[usize] = &[0, 1, 2];
        let mut found = None;
        for t in 0..20 {
            if t == 7 {
                assert!(left.tick(t, &[], true, 1.0, ALPHA).is_empty());
                continue;
            }
            let lb2: &[usize] = if t < 5 { all } else { &[0, 1] };
            let sends = spread(
                &[("lb-1", 12, all), ("lb-2", 12, lb2), ("lb-3", 12, all)],
                3,
            );
            if tick_of(&mut left, t, &sends).contains_key("m3") {
                found.get_or_insert(t);
            }
        }
        assert_eq!(found, Some(10));
    }
}
