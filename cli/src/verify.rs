//! `evenflow verify`: the deploy gate for load balancer changes.
//!
//! Run it right after an LB config change. It waits the given time, then
//! judges the pool from the collector's verdicts: exit 0 when every serving
//! member receives its share, 1 when any member is ZERO, SKEW, STALE, DOWN
//! or MISMATCH (its load balancers and its own agent disagree on whether it
//! gets connections: the collector pages on it), or the pool concentrates
//! or fails (every connection attempt to its members fails), or a draining
//! member still gets traffic, or a member's load — its open connections or
//! bytes — pages, routing, pinned or refusing; and 2 when it cannot judge
//! (collector unreachable or not answering, pool unknown, too little
//! traffic, or the change not in place yet: a member its balancer has not
//! taken in, a weight change it has not followed). HOT and load warnings
//! (a restarted member refilling) are printed, not failed.

use std::{io::IsTerminal as _, time::Duration};

use evenflow_proto::v1;

use crate::render;

/// The gate's answer.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Every serving member received its share.
    Healthy { warnings: Vec<String> },
    /// These members (or the pool) are unhealthy, with why.
    Unhealthy(Vec<String>),
    /// No judgement possible, and why.
    CannotJudge(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Healthy { .. } => 0,
            Self::Unhealthy(_) => 1,
            Self::CannotJudge(_) => 2,
        }
    }
}

/// Judges one pool state.
pub fn judge(pool: &v1::Pool) -> Outcome {
    match v1::Verdict::try_from(pool.verdict) {
        Ok(v1::Verdict::InsufficientTraffic) => {
            return Outcome::CannotJudge(format!(
                "pool {} has too little traffic to decide{}",
                pool.name,
                reason_suffix(&pool.reason)
            ));
        }
        Ok(v1::Verdict::Settling) | Ok(v1::Verdict::Unspecified) => {
            return Outcome::CannotJudge(format!(
                "pool {} is not judged yet (settling after a change){}; verify for longer",
                pool.name,
                reason_suffix(&pool.reason)
            ));
        }
        _ => {}
    }
    if pool.members.is_empty() {
        return Outcome::CannotJudge(format!("pool {} has no members", pool.name));
    }
    let mut bad = Vec::new();
    let mut warnings = Vec::new();
    let mut pending = Vec::new();
    if pool.verdict == v1::Verdict::Concentration as i32 {
        bad.push(format!(
            "pool {}: CONCENTRATION: effective members {:.1} of {:.1}{}",
            pool.name,
            pool.effective_members,
            pool.expected_effective_members,
            reason_suffix(&pool.reason)
        ));
    } else if pool.verdict == v1::Verdict::Failing as i32 {
        bad.push(format!(
            "pool {}: FAILING{}",
            pool.name,
            reason_suffix(&pool.reason)
        ));
    }
    for m in &pool.members {
        let line = |kind: &str| {
            let v = render::main_view(m);
            let pod = if m.pod.is_empty() {
                String::new()
            } else {
                format!(" (pod {})", m.pod)
            };
            format!(
                "{}{pod} {kind}: share {:.1}% (expected {:.1}%), {:.1} conn/s{}",
                render::member_name(m),
                v.observed_share * 100.0,
                v.expected_share * 100.0,
                v.new_conns_per_sec,
                reason_suffix(&m.reason)
            )
        };
        match v1::Verdict::try_from(m.verdict) {
            Ok(
                v @ (v1::Verdict::Zero
                | v1::Verdict::SkewLow
                | v1::Verdict::SkewHigh
                | v1::Verdict::NoData
                | v1::Verdict::Down
                | v1::Verdict::Mismatch
                | v1::Verdict::DrainingViolation),
            ) => bad.push(line(render::verdict(v as i32))),
            Ok(v @ v1::Verdict::Hot) => warnings.push(line(render::verdict(v as i32))),
            Ok(v1::Verdict::Settling) => pending.push(format!(
                "{} is not taken in by its balancer yet{}",
                render::member_name(m),
                reason_suffix(&m.reason)
            )),
            _ => {}
        }
        if m.judged_weight > 0.0 {
            pending.push(format!(
                "{}'s balancer has not followed its weight change to {} yet (judged against {})",
                render::member_name(m),
                m.weight,
                m.judged_weight
            ));
        }
        if let Some(l) = &m.load
            && let Some(s) = &l.share
            && matches!(
                v1::Verdict::try_from(s.verdict),
                Ok(v1::Verdict::Zero | v1::Verdict::SkewLow | v1::Verdict::SkewHigh)
            )
        {
            let text = format!(
                "{} {} ({}, {}): share {:.1}% (expected {:.1}%){}",
                render::member_name(m),
                render::verdict(s.verdict),
                render::signal(l.signal),
                render::cause(s.cause),
                s.observed_share * 100.0,
                s.expected_share * 100.0,
                reason_suffix(&s.reason)
            );
            if s.page {
                bad.push(text);
            } else {
                warnings.push(text);
            }
        }
    }
    if !bad.is_empty() {
        Outcome::Unhealthy(bad)
    } else if !pending.is_empty() {
        Outcome::CannotJudge(format!(
            "pool {}: {}; verify for longer",
            pool.name,
            pending.join("; ")
        ))
    } else {
        Outcome::Healthy { warnings }
    }
}

fn reason_suffix(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" ({r})")
    }
}

/// The gate: connects to `collector`, waits `wait` and judges `pool`.
pub async fn gate(collector: &crate::client::Collector, pool: &str, wait: Duration) -> Outcome {
    match crate::client::connect(collector).await {
        Err(e) => Outcome::CannotJudge(format!("{e:#}")),
        Ok(mut c) => match wait_and_fetch(&mut c, pool, wait).await {
            Ok(p) => judge(&p),
            Err(o) => o,
        },
    }
}

/// Waits `wait`, showing progress on stderr, re-reading the pool every
/// second so progress shows its state, and returns the final state.
async fn wait_and_fetch(
    client: &mut v1::distribution_client::DistributionClient<tonic::transport::Channel>,
    pool: &str,
    wait: Duration,
) -> Result<v1::Pool, Outcome> {
    let tty = std::io::stderr().is_terminal();
    let start = tokio::time::Instant::now();
    let mut last = fetch(client, pool).await?;
    let mut printed = 0u64;
    while start.elapsed() < wait {
        tokio::time::sleep(Duration::from_secs(1).min(wait.saturating_sub(start.elapsed()))).await;
        last = fetch(client, pool).await?;
        let secs = start.elapsed().as_secs();
        let ok = last
            .members
            .iter()
            .filter(|m| m.verdict == v1::Verdict::Ok as i32)
            .count();
        let msg = format!(
            "verifying pool {pool}: {secs}s/{}s  {} members, {ok} OK, pool {}",
            wait.as_secs(),
            last.members.len(),
            render::verdict(last.verdict)
        );
        if tty {
            eprint!("\r{msg}   ");
        } else if secs >= printed + 5 {
            eprintln!("{msg}");
            printed = secs;
        }
    }
    if tty {
        eprintln!();
    }
    Ok(last)
}

async fn fetch(
    client: &mut v1::distribution_client::DistributionClient<tonic::transport::Channel>,
    pool: &str,
) -> Result<v1::Pool, Outcome> {
    match client
        .get_pool(v1::GetPoolRequest {
            name: pool.to_owned(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => {
            // A Kubernetes Service's name stands for its one pool.
            let pools = match client.list_pools(v1::ListPoolsRequest {}).await {
                Ok(r) => r.into_inner().pools,
                Err(_) => Vec::new(),
            };
            match crate::names::matching(&pools, pool).as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(Outcome::CannotJudge(format!(
                    "pool {pool} is unknown to the collector: {} (list pools with `evenflow status`)",
                    s.message()
                ))),
                many => Err(Outcome::CannotJudge(format!(
                    "{pool} names {} pools ({}): verify one of them",
                    many.len(),
                    many.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
        Err(s) if crate::client::timed_out(&s) => Err(Outcome::CannotJudge(format!(
            "{:#}",
            crate::client::call_error(s)
        ))),
        Err(s) => Err(Outcome::CannotJudge(format!(
            "collector error: {} ({:?})",
            s.message(),
            s.code()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(v: v1::Verdict) -> v1::Member {
        v1::Member {
            address: "10.0.0.1".into(),
            port: 80,
            verdict: v as i32,
            ..Default::default()
        }
    }

    fn pool(verdict: v1::Verdict, members: Vec<v1::Member>) -> v1::Pool {
        v1::Pool {
            name: "web".into(),
            verdict: verdict as i32,
            members,
            ..Default::default()
        }
    }

    #[test]
    fn all_ok_is_healthy() {
        let p = pool(v1::Verdict::Ok, vec![member(v1::Verdict::Ok); 3]);
        assert_eq!(judge(&p).exit_code(), 0);
    }

    #[test]
    fn zero_skew_stale_down_or_mismatch_fail_the_gate() {
        for v in [
            v1::Verdict::Zero,
            v1::Verdict::SkewHigh,
            v1::Verdict::SkewLow,
            v1::Verdict::NoData,
            v1::Verdict::Down,
            // The collector pages on it: its LBs send what it never gets.
            v1::Verdict::Mismatch,
        ] {
            let p = pool(v1::Verdict::Ok, vec![member(v1::Verdict::Ok), member(v)]);
            match judge(&p) {
                Outcome::Unhealthy(lines) => assert!(lines[0].contains(render::verdict(v as i32))),
                other => panic!("{v:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn concentration_or_failing_fails_even_if_members_look_fine() {
        for v in [v1::Verdict::Concentration, v1::Verdict::Failing] {
            let p = pool(v, vec![member(v1::Verdict::Ok); 2]);
            match judge(&p) {
                Outcome::Unhealthy(lines) => assert!(lines[0].contains(render::verdict(v as i32))),
                other => panic!("{v:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn quiet_or_settling_pools_cannot_be_judged() {
        assert_eq!(
            judge(&pool(
                v1::Verdict::InsufficientTraffic,
                vec![member(v1::Verdict::Ok)]
            ))
            .exit_code(),
            2
        );
        assert_eq!(
            judge(&pool(v1::Verdict::Settling, vec![member(v1::Verdict::Ok)])).exit_code(),
            2
        );
        assert_eq!(judge(&pool(v1::Verdict::Ok, vec![])).exit_code(), 2);
    }

    #[test]
    fn a_change_not_in_place_yet_cannot_be_judged_unless_something_fails() {
        // A member its balancer has not taken in yet, and a weight change
        // it has not followed: the gate cannot say the change worked.
        let joining = v1::Member {
            reason: "joined the pool 3 ticks ago".into(),
            ..member(v1::Verdict::Settling)
        };
        let reweighted = v1::Member {
            weight: 5.0,
            judged_weight: 9.0,
            ..member(v1::Verdict::Ok)
        };
        for m in [joining.clone(), reweighted] {
            match judge(&pool(
                v1::Verdict::Ok,
                vec![member(v1::Verdict::Ok), m.clone()],
            )) {
                Outcome::CannotJudge(why) => {
                    assert!(why.contains("verify for longer"), "{why}");
                    assert!(
                        why.contains("not taken in") || why.contains("weight change to 5"),
                        "{why}"
                    );
                }
                other => panic!("{m:?} gave {other:?}"),
            }
        }
        // A member that fails the gate still fails it.
        let p = pool(v1::Verdict::Ok, vec![member(v1::Verdict::Zero), joining]);
        assert_eq!(judge(&p).exit_code(), 1);
    }

    fn with_load(page: bool) -> v1::Member {
        v1::Member {
            load: Some(v1::LoadFinding {
                signal: v1::Signal::ActiveConnections as i32,
                view: v1::View::Server as i32,
                share: Some(v1::LoadShare {
                    observed_share: 0.0,
                    expected_share: 0.33,
                    verdict: v1::Verdict::Zero as i32,
                    page,
                    cause: v1::Cause::Pinned as i32,
                    reason: "0 of 90 open connections".into(),
                }),
            }),
            ..member(v1::Verdict::InsufficientTraffic)
        }
    }

    #[test]
    fn a_load_page_fails_the_gate_and_says_pinned() {
        // New connections too few to judge, the pool judged on its open
        // connections: a pinned page fails.
        let p = pool(
            v1::Verdict::Ok,
            vec![member(v1::Verdict::Ok), with_load(true)],
        );
        match judge(&p) {
            Outcome::Unhealthy(lines) => {
                assert!(
                    lines[0].contains("ZERO (active_connections, pinned)"),
                    "{lines:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_member_refilling_is_a_warning() {
        let p = pool(
            v1::Verdict::Ok,
            vec![member(v1::Verdict::Ok), with_load(false)],
        );
        match judge(&p) {
            Outcome::Healthy { warnings } => {
                assert!(warnings[0].contains("pinned"), "{warnings:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A collector that stops answering is a collector the gate cannot
    /// hear: exit 2, in bounded time.
    #[tokio::test]
    async fn a_collector_that_never_answers_cannot_judge() {
        let (collector, _task) = crate::client::stalled::collector().await;
        let outcome = tokio::time::timeout(
            Duration::from_secs(15),
            gate(&collector, "web", Duration::from_secs(1)),
        )
        .await
        .expect("the gate ends");
        match &outcome {
            Outcome::CannotJudge(why) => assert!(why.contains("did not answer"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome.exit_code(), 2);
    }

    #[test]
    fn hot_is_a_warning_not_a_failure() {
        let p = pool(v1::Verdict::Ok, vec![member(v1::Verdict::Hot)]);
        match judge(&p) {
            Outcome::Healthy { warnings } => assert_eq!(warnings.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}
