//! The one judged-member type: a member of a published pool with what the
//! pools stage knew of it and the detector's verdict on it, or why it is
//! not judged.

use std::net::SocketAddr;

use crate::{
    detect,
    service::pools::{MemberMeta, PoolMember, PoolTick, Unjudged},
};

/// A member's cumulative counts as its observers' agents report them,
/// each when the member has that view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportedTotals {
    /// New connections in the server view.
    pub server: Option<u64>,
    /// New connections in the LB view.
    pub lb: Option<u64>,
    /// Failed connection attempts in the LB view (where they are counted).
    pub lb_failed: Option<u64>,
}

/// A member as one tick publishes it.
#[derive(Copy, Clone)]
pub enum PublishedMember<'a> {
    /// Judged: its input and facts, and the detector's verdict.
    Judged {
        /// What the pools stage assembled.
        member: &'a PoolMember,
        /// The detector's verdict on it.
        verdict: &'a detect::MemberVerdict,
    },
    /// Listed but not judged (not ready, terminating).
    Unjudged(&'a Unjudged),
}

impl<'a> PublishedMember<'a> {
    /// Every member of a judged pool: the judged ones with their verdicts
    /// (the detector answers in its input's order), then the unjudged.
    pub fn of(
        pool: &'a PoolTick,
        verdict: &'a detect::PoolVerdict,
    ) -> impl Iterator<Item = PublishedMember<'a>> {
        debug_assert!(
            pool.input.members.len() == verdict.members.len()
                && (pool.input.members.iter())
                    .zip(&verdict.members)
                    .all(|(member, judged)| member.input.id == judged.id),
            "the detector answers for each member in its input's order"
        );
        (pool.input.members.iter())
            .zip(&verdict.members)
            .map(|(member, verdict)| PublishedMember::Judged { member, verdict })
            .chain(pool.unjudged.iter().map(PublishedMember::Unjudged))
    }

    /// Its facts and measured rates.
    pub fn meta(&self) -> &'a MemberMeta {
        match self {
            PublishedMember::Judged { member, .. } => &member.meta,
            PublishedMember::Unjudged(unjudged) => &unjudged.meta,
        }
    }

    /// Its address and port.
    pub fn addr(&self) -> SocketAddr {
        self.meta().addr
    }

    /// Its observers' own cumulative totals, per view it has.
    pub fn reported(&self) -> ReportedTotals {
        let meta = self.meta();
        let (server, lb) = match self {
            PublishedMember::Judged { member, .. } => {
                (member.input.server.is_some(), member.input.lb.is_some())
            }
            PublishedMember::Unjudged(unjudged) => {
                (unjudged.server.is_some(), unjudged.lb.is_some())
            }
        };
        ReportedTotals {
            server: server.then_some(meta.server.reported_total),
            lb: lb.then_some(meta.lb.reported_total),
            lb_failed: lb.then_some(meta.lb.reported_failed),
        }
    }
}
