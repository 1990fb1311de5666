//! Which load balancer nodes send a member out of rotation its new
//! connections: the node a DRAINING_VIOLATION is about. A pool's LB view
//! sums every balancer node's sends, but a violation is usually one node's
//! doing (a kube-proxy whose rules went stale, one HAProxy of several that
//! missed the drain), and the page is only actionable when it says which.

use std::{collections::BTreeMap, collections::VecDeque, sync::Arc};

/// Ticks the sends are summed over: the violation's own window.
const WINDOW: usize = 10;
/// Nodes named before the rest are counted.
const NAMED: usize = 3;

/// One member's new connections by LB node, per tick, over the last
/// [`WINDOW`] ticks it was out of rotation.
#[derive(Clone, Debug, Default)]
pub(super) struct Senders {
    ticks: VecDeque<Vec<(Arc<str>, u64)>>,
}

impl Senders {
    /// Records one tick's sends (nodes that sent none may be left out).
    pub(super) fn push(&mut self, tick: &[(Arc<str>, u64)]) {
        if self.ticks.len() == WINDOW {
            self.ticks.pop_front();
        }
        self.ticks.push_back(tick.to_vec());
    }

    /// The nodes that sent over the window, most first: "node-3 (148) and
    /// node-1 (12)"; `None` when none did.
    pub(super) fn named(&self) -> Option<String> {
        let mut by_node: BTreeMap<&str, u64> = BTreeMap::new();
        for (node, n) in self.ticks.iter().flatten() {
            *by_node.entry(node).or_default() += n;
        }
        let mut sent: Vec<(&str, u64)> = by_node.into_iter().filter(|&(_, n)| n > 0).collect();
        // Most first; by name on a tie (the map's order, kept by a stable sort).
        sent.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        let named: Vec<String> = (sent.iter().take(NAMED))
            .map(|(node, n)| format!("{node} ({n})"))
            .collect();
        let rest = sent.len().saturating_sub(NAMED);
        match (named.as_slice(), rest) {
            ([], _) => None,
            ([one], _) => Some(one.clone()),
            (_, 0) => {
                let (last, first) = named.split_last()?;
                Some(format!("{} and {last}", first.join(", ")))
            }
            (_, 1) => Some(format!("{} and 1 more node", named.join(", "))),
            (_, rest) => Some(format!("{} and {rest} more nodes", named.join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(sends: &[(&str, u64)]) -> Vec<(Arc<str>, u64)> {
        sends.iter().map(|&(n, c)| (Arc::from(n), c)).collect()
    }

    #[test]
    fn names_the_nodes_that_sent_most_first_over_the_window() {
        let mut s = Senders::default();
        assert_eq!(s.named(), None);
        s.push(&tick(&[("node-1", 0)]));
        assert_eq!(s.named(), None, "a node that sent nothing is not named");
        s.push(&tick(&[("node-1", 2), ("node-3", 40)]));
        s.push(&tick(&[("node-3", 44)]));
        assert_eq!(s.named().as_deref(), Some("node-3 (84) and node-1 (2)"));
        for _ in 0..WINDOW {
            s.push(&tick(&[("node-2", 5)]));
        }
        assert_eq!(
            s.named().as_deref(),
            Some("node-2 (50)"),
            "older ticks leave the window"
        );
        s.push(&tick(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]));
        assert_eq!(
            s.named().as_deref(),
            Some("node-2 (45), a (1), b (1) and 2 more nodes")
        );
    }
}
