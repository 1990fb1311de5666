//! A load balancer node cut off from the pool: every connection attempt
//! it makes to the members fails while the other nodes reach them.
//!
//! The pool's LB view sums every balancer node's counts. When one node of
//! several loses its way to the backends (a route, a firewall rule or a
//! security group pushed to it alone, its own network), every client
//! behind it fails, yet the other nodes still open their connections: the
//! members' shares stay even and the pool reads served. The node's own
//! failed attempts are what says so, the pool-wide FAILING's test (see
//! [`super::pool::Verdict::Failing`]) applied to one node's attempts.
//!
//! Only failures to members another node opened a connection to within
//! the window count, and only for a node that opened some before: a
//! member no other node reaches is dead (its failures are its own), and
//! when no node reaches any, the pool-wide FAILING speaks.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::pool::{SHARE_WINDOW, reaches_enough};
use crate::fxhash::FxHashMap;

/// One node's attempts to the pool's members.
#[derive(Default)]
struct NodeWindow {
    /// Its failed attempts to each member in each of the last ticks,
    /// newest first (members it failed none to left out).
    per_tick: Vec<Vec<(String, u64)>>,
    /// The last tick it opened a connection to any member.
    last_opened: Option<u64>,
    /// The last tick it failed or opened one.
    last_active: u64,
}

/// A node cut off: its failed attempts since it last opened one (within
/// the window), over how many ticks, and to how many members.
#[derive(Clone, Debug, PartialEq)]
pub struct CutOffNode {
    pub node: Arc<str>,
    pub failed: u64,
    pub ticks: usize,
    pub members: usize,
}

impl CutOffNode {
    /// What the pool's reason and the node's alert say.
    pub fn reason(&self) -> String {
        format!(
            "load balancer node {} fails every connection attempt to the members: {} in the last {} ticks, to {} of them, refused or unanswered, and not one opened, while other nodes reach them: it is cut off from them (its routes, a firewall rule, its network), and every client behind it fails",
            self.node, self.failed, self.ticks, self.members
        )
    }
}

/// The last two nodes to open a connection to a member, and when.
type Openers = [Option<(Arc<str>, u64)>; 2];

/// Every load balancer node's recent attempts, by node.
#[derive(Default)]
pub(super) struct CutOff {
    nodes: HashMap<Arc<str>, NodeWindow>,
    /// Per member, the last two nodes that opened a connection to it.
    openers: HashMap<String, Openers>,
}

/// One member's attempts this tick by node: opened (new connections) and
/// failed.
pub(super) struct Attempts<'a> {
    pub id: &'a str,
    pub opened: &'a [(Arc<str>, u64)],
    pub failed: &'a [(Arc<str>, u64)],
}

impl CutOff {
    /// Records one tick's attempts; forgets nodes idle for a window and
    /// members that left.
    pub(super) fn note<'a>(&mut self, tick: u64, members: impl Iterator<Item = Attempts<'a>>) {
        for w in self.nodes.values_mut() {
            w.per_tick.insert(0, Vec::new());
            w.per_tick.truncate(SHARE_WINDOW);
        }
        let mut present = HashSet::new();
        // A pool of thousands of members behind thousands of nodes has
        // millions of (member, node) pairs a tick: an opened pair costs a
        // lookup by the node's `Arc` (an agent keeps one for all its
        // endpoints), and an opener's window is found by name once a tick
        // (a failed pair's still is, while failures are few).
        let mut opened_by: FxHashMap<*const u8, &Arc<str>> = FxHashMap::default();
        for m in members {
            present.insert(m.id);
            let latest = latest_openers(m.opened, &mut opened_by);
            // Its id copied only when it is new.
            if latest[0].is_some() && !self.openers.contains_key(m.id) {
                self.openers.insert(m.id.to_owned(), Openers::default());
            }
            if let Some(openers) = self.openers.get_mut(m.id) {
                for node in latest.into_iter().rev().flatten() {
                    match &mut openers[0] {
                        Some((last, at)) if last == node => *at = tick,
                        first => openers[1] = first.replace((node.clone(), tick)),
                    }
                }
            }
            for (node, n) in m.failed.iter().filter(|(_, n)| *n > 0) {
                let w = window(&mut self.nodes, node);
                w.per_tick[0].push((m.id.to_owned(), *n));
                w.last_active = tick;
            }
        }
        for node in opened_by.into_values() {
            let w = window(&mut self.nodes, node);
            w.last_opened = Some(tick);
            w.last_active = tick;
        }
        self.nodes
            .retain(|_, w| tick < w.last_active + SHARE_WINDOW as u64);
        self.openers.retain(|id, _| present.contains(id.as_str()));
    }

    /// Whether a node other than `node` opened a connection to member `id`
    /// within the window.
    fn reached_by_others(&self, id: &str, node: &str, tick: u64) -> bool {
        (self.openers.get(id).into_iter().flatten().flatten())
            .any(|(other, at)| &**other != node && tick < at + SHARE_WINDOW as u64)
    }

    /// The nodes that opened connections to the pool's members before and
    /// whose attempts since failed: at least `min` to members in rotation
    /// (`in_rotation`) that other nodes reach, and to enough of them (as
    /// the pool-wide FAILING asks, for the same reasons: see
    /// [`reaches_enough`]). Failures to a member no other node reaches
    /// are that member's (it is dead, or the pool-wide FAILING speaks).
    pub(super) fn nodes(
        &self,
        tick: u64,
        min: u64,
        in_rotation: &HashSet<&str>,
    ) -> Vec<CutOffNode> {
        let mut cut: Vec<CutOffNode> = (self.nodes.iter())
            .filter_map(|(node, w)| {
                let since = tick.saturating_sub(w.last_opened?);
                let ticks = (since as usize).min(w.per_tick.len());
                let mut reached: HashMap<&str, u64> = HashMap::new();
                let failures = w.per_tick[..ticks].iter().flatten();
                for (id, n) in failures.filter(|(id, _)| {
                    in_rotation.contains(id.as_str()) && self.reached_by_others(id, node, tick)
                }) {
                    *reached.entry(id.as_str()).or_default() += n;
                }
                let failed = reached.values().sum();
                (failed >= min && reaches_enough(reached.len(), in_rotation.len())).then(|| {
                    CutOffNode {
                        node: node.clone(),
                        failed,
                        ticks,
                        members: reached.len(),
                    }
                })
            })
            .collect();
        cut.sort_by(|a, b| a.node.cmp(&b.node));
        cut
    }
}

/// A member's last two nodes this tick to open one, the latest first: all
/// its openers keep of the tick. Each is noted in `opened_by` as well. A
/// node may be listed twice in a row (its TCP and UDP endpoints to one
/// address and port): once is enough.
fn latest_openers<'a>(
    opened: &'a [(Arc<str>, u64)],
    opened_by: &mut FxHashMap<*const u8, &'a Arc<str>>,
) -> [Option<&'a Arc<str>>; 2] {
    let mut latest: [Option<&Arc<str>>; 2] = [None, None];
    for (node, _) in opened.iter().filter(|(_, n)| *n > 0) {
        opened_by.entry(Arc::as_ptr(node).cast()).or_insert(node);
        if latest[0] != Some(node) {
            latest = [Some(node), latest[0]];
        }
    }
    latest
}

/// The window of `node`, new with this tick's slot if it had none.
fn window<'a>(nodes: &'a mut HashMap<Arc<str>, NodeWindow>, node: &Arc<str>) -> &'a mut NodeWindow {
    nodes.entry(node.clone()).or_insert_with(|| NodeWindow {
        per_tick: vec![Vec::new()],
        ..NodeWindow::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ticks` ticks of three members: node a opens one to each a tick,
    /// node b fails `b_fails(tick)` to each; the nodes cut off at the end.
    fn run(
        ticks: u64,
        b_fails: impl Fn(u64) -> u64,
        b_opens: impl Fn(u64) -> u64,
    ) -> Vec<CutOffNode> {
        let (a, b): (Arc<str>, Arc<str>) = ("lb-a".into(), "lb-b".into());
        let ids = ["m1", "m2", "m3"];
        let mut c = CutOff::default();
        for t in 0..ticks {
            let opened = vec![(a.clone(), 1), (b.clone(), b_opens(t))];
            let failed = vec![(b.clone(), b_fails(t))];
            c.note(
                t,
                ids.iter().map(|id| Attempts {
                    id,
                    opened: &opened,
                    failed: &failed,
                }),
            );
        }
        c.nodes(ticks - 1, 5, &ids.into_iter().collect())
    }

    #[test]
    fn a_node_whose_every_attempt_fails_while_another_opens_is_cut_off() {
        let cut = run(30, |t| u64::from(t >= 20) * 2, |t| u64::from(t < 20));
        assert_eq!(
            cut,
            vec![CutOffNode {
                node: "lb-b".into(),
                failed: 60,
                ticks: 10,
                members: 3
            }]
        );
        // Two ticks in: 12 failed since it last opened, at tick 19.
        let cut = run(22, |t| u64::from(t >= 20) * 2, |t| u64::from(t < 20));
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!((cut[0].failed, cut[0].ticks), (12, 2));
    }

    #[test]
    fn a_node_that_opens_some_or_fails_a_few_is_not_cut_off() {
        assert_eq!(run(30, |_| 2, |_| 1), vec![], "it opens some every tick");
        assert_eq!(
            run(30, |t| u64::from(t == 25), |t| u64::from(t < 20)),
            vec![],
            "three failed attempts, under the least"
        );
    }

    /// Counts by node.
    type ByNode = Vec<(Arc<str>, u64)>;

    /// One tick of attempts: each member's (opened, failed) by node.
    fn tick(c: &mut CutOff, t: u64, members: &[(&str, ByNode, ByNode)]) {
        c.note(
            t,
            members
                .iter()
                .map(|(id, opened, failed)| Attempts { id, opened, failed }),
        );
    }

    /// Node b's failures go to the members no other node reaches (dead
    /// ones, which a's balancer left out): theirs, not b's.
    #[test]
    fn failures_only_to_members_no_other_node_reaches_are_not_a_cut() {
        let (a, b): (Arc<str>, Arc<str>) = ("lb-a".into(), "lb-b".into());
        let mut c = CutOff::default();
        for t in 0..30 {
            let dead = t >= 10;
            let b_opens = vec![(a.clone(), 3), (b.clone(), u64::from(!dead))];
            let failed = vec![(b.clone(), 5 * u64::from(dead))];
            let a_opens = vec![(a.clone(), u64::from(!dead)), (b.clone(), u64::from(!dead))];
            tick(
                &mut c,
                t,
                &[
                    ("m1", b_opens.clone(), Vec::new()),
                    ("m2", b_opens, Vec::new()),
                    ("m3", a_opens.clone(), failed.clone()),
                    ("m4", a_opens, failed),
                ],
            );
        }
        let all = ["m1", "m2", "m3", "m4"].into_iter().collect();
        assert_eq!(
            c.nodes(29, 5, &all),
            vec![],
            "m3 and m4 are dead, b is not cut off"
        );
    }

    /// A node whose attempts all fail while no other node opens anything is
    /// not cut off from the others: the pool-wide FAILING speaks.
    #[test]
    fn a_lone_node_failing_is_not_cut_off() {
        let b: Arc<str> = "lb-b".into();
        let mut c = CutOff::default();
        for t in 0..20 {
            let opened = vec![(b.clone(), u64::from(t < 5))];
            let failed = vec![(b.clone(), 5 * u64::from(t >= 5))];
            tick(
                &mut c,
                t,
                &[
                    ("m1", opened.clone(), failed.clone()),
                    ("m2", opened, failed),
                ],
            );
        }
        let all = ["m1", "m2"].into_iter().collect();
        assert_eq!(c.nodes(19, 5, &all), vec![]);
    }

    /// Each node listed twice (its TCP and UDP endpoints to one address
    /// and port): a, which last opened a connection alongside b, still
    /// counts as another node reaching the members once b's attempts fail.
    #[test]
    fn a_node_listed_twice_among_the_openers_counts_once() {
        let (a, b): (Arc<str>, Arc<str>) = ("lb-a".into(), "lb-b".into());
        let mut c = CutOff::default();
        for t in 0..10 {
            let opens = u64::from(t < 5);
            let opened = vec![
                (a.clone(), opens),
                (a.clone(), opens),
                (b.clone(), opens),
                (b.clone(), opens),
            ];
            let failed = vec![(b.clone(), 2 * (1 - opens))];
            let m = |id| (id, opened.clone(), failed.clone());
            tick(&mut c, t, &[m("m1"), m("m2"), m("m3")]);
        }
        let all = ["m1", "m2", "m3"].into_iter().collect();
        let cut = c.nodes(9, 5, &all);
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!((&*cut[0].node, cut[0].failed), ("lb-b", 30));
    }

    #[test]
    fn no_node_is_cut_off_when_none_opens() {
        let (b, ids): (Arc<str>, _) = ("lb-b".into(), ["m1", "m2"]);
        let mut c = CutOff::default();
        for t in 0..20 {
            let failed = vec![(b.clone(), 5)];
            c.note(
                t,
                ids.iter().map(|id| Attempts {
                    id,
                    opened: &[],
                    failed: &failed,
                }),
            );
        }
        let all = ids.into_iter().collect();
        assert_eq!(c.nodes(19, 5, &all), vec![], "the pool-wide FAILING speaks");
    }
}
