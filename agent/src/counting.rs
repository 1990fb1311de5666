//! The counting loop: every `--interval`, read the pinned maps, update the
//! totals and rates, list listeners, sample CPU, retire idle endpoints from
//! a filling map, and publish one snapshot.
//!
//! A reading that fails (a map read, a sampler's run, the interface list)
//! skips that interval's snapshot and nothing else: the programs go on
//! counting in the kernel, and the next reading that succeeds carries
//! every total, over the whole time since the last one. Only
//! [`MAX_FAILED_IN_A_ROW`] failures in a row end the agent, so that a
//! fault that stays is seen (the process exits and is restarted) rather
//! than logged forever.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use evenflow_daemon::clock;
use evenflow_proto::v1;
use tokio::sync::{mpsc::UnboundedSender, watch};
use tracing::{info, warn};

use crate::{
    changes::Coverage, cli, cpu, datapath, host, listeners, print, retire, snapshot, table,
    withheld,
};

/// Readings that may fail in a row before the agent gives up.
pub const MAX_FAILED_IN_A_ROW: u32 = 10;

/// Counts the readings that failed in a row.
#[derive(Debug, Default)]
struct Failures {
    in_a_row: u32,
    /// Since the agent started (`Snapshot.readings_failed`).
    total: u64,
}

impl Failures {
    /// A reading succeeded.
    fn cleared(&mut self) {
        if self.in_a_row > 0 {
            info!(
                skipped = self.in_a_row,
                "reading the counters again: this snapshot covers the intervals skipped"
            );
        }
        self.in_a_row = 0;
    }

    /// A reading failed: `Ok` while the agent goes on, the error once
    /// [`MAX_FAILED_IN_A_ROW`] failed in a row.
    fn failed(&mut self, e: anyhow::Error) -> Result<()> {
        self.in_a_row += 1;
        self.total += 1;
        if self.in_a_row >= MAX_FAILED_IN_A_ROW {
            return Err(e.context(format!(
                "{} readings of the counters failed in a row",
                self.in_a_row
            )));
        }
        warn!(
            error = format!("{e:#}"),
            in_a_row = self.in_a_row,
            "reading the counters failed: this interval's snapshot is skipped (the programs go on \
             counting; the next snapshot carries every total)"
        );
        Ok(())
    }
}

/// What the loop carries from one reading to the next.
struct Counting<'a> {
    args: &'a cli::Args,
    node_name: &'a str,
    retirements: Option<UnboundedSender<withheld::Retirement>>,
    table: table::Table,
    read: Vec<(agent_common::EndpointKey, agent_common::EndpointCounters)>,
    cpu_prev: cpu::Sample,
    /// When the table was last updated.
    last: Instant,
    cgroup: String,
    /// The last snapshot's number: 0 before the first.
    sequence: u64,
    /// Readings that read every endpoint (`Snapshot.readings_whole`).
    readings_whole: u64,
    prev_stats: Option<datapath::Stats>,
    full_marks: datapath::FullMarks,
}

/// Runs the counting loop until a reading has failed
/// [`MAX_FAILED_IN_A_ROW`] times in a row.
pub async fn run(
    args: &cli::Args,
    node_name: &str,
    dp: &mut datapath::Datapath,
    snap_tx: &watch::Sender<Arc<v1::Snapshot>>,
    retirements: Option<UnboundedSender<withheld::Retirement>>,
) -> Result<()> {
    let mut counting = Counting {
        args,
        node_name,
        retirements,
        table: table::Table::default(),
        read: Vec::new(),
        cpu_prev: cpu::Sample::read()?,
        last: Instant::now(),
        cgroup: dp.cgroup().display().to_string(),
        sequence: 0,
        readings_whole: 0,
        prev_stats: None,
        full_marks: datapath::FullMarks::default(),
    };
    let mut failures = Failures::default();
    loop {
        // The first report at once, the others on the wall-clock grid the
        // whole fleet keeps (`evenflow_daemon::clock`): every agent's
        // report then covers the same stretch of time as its peers'.
        if counting.sequence > 0 || failures.in_a_row > 0 {
            let wait = clock::until_next(SystemTime::now(), args.interval, Duration::ZERO);
            tokio::time::sleep(wait).await;
        }
        match counting.reading(dp, failures.total) {
            Ok(snap) => {
                failures.cleared();
                if args.print {
                    print!("{}", print::table(&snap));
                }
                snap_tx.send_replace(Arc::new(snap));
            }
            Err(e) => failures.failed(e)?,
        }
    }
}

impl Counting<'_> {
    /// One reading: the snapshot it makes, or what failed. Whatever fails
    /// leaves the table as the last reading that got that far left it,
    /// so the next one takes its differences from there. `failed`: the
    /// readings that failed before this one.
    fn reading(&mut self, dp: &mut datapath::Datapath, failed: u64) -> Result<v1::Snapshot> {
        let now = Instant::now();
        // Without --iface the agent follows the node's interfaces as they
        // come and go (pods' veths); with or without, whether it forwards.
        let all = host::interfaces()?;
        let wanted = if self.args.ifaces.is_empty() {
            host::up_ethernet(&all)
        } else {
            self.args.ifaces.clone()
        };
        let indexes = all.into_iter().map(|i| (i.name, i.index)).collect();
        let forwards = host::forwards();
        tokio::task::block_in_place(|| dp.follow(&wanted, &indexes, forwards))?;
        // Map reads are syscalls: keep them off the async workers' backs.
        let live = self.table.len();
        let (mut stats, coverage) = tokio::task::block_in_place(|| dp.read(&mut self.read, live))?;
        // The first reading covers no interval: its totals are where
        // counting stands (pinned maps keep counting across restarts), not
        // a rate, and its report says no interval (0) rather than
        // microseconds.
        let secs = match self.sequence {
            0 => 0.0,
            _ => now.duration_since(self.last).as_secs_f64(),
        };
        match coverage {
            Coverage::Whole => {
                self.table.update(&self.read, secs);
                self.readings_whole += 1;
            }
            Coverage::Changed => {
                self.table.update_changed(&self.read, secs);
                stats.live_endpoints = self.table.len() as u64;
            }
        }
        if let Some(prev) = &self.prev_stats {
            datapath::warn_new_losses(prev, &stats, dp.capacity(), &mut self.full_marks);
        }
        self.last = now;
        // A netlink dump, and /proc where the kernel gives none: blocking.
        let listeners = tokio::task::block_in_place(listeners::read).unwrap_or_else(|e| {
            warn!("listing listeners: {e:#}");
            Vec::new()
        });
        self.retire_idle(dp, &listeners, &mut stats)?;
        self.prev_stats = Some(stats);
        let addresses = host::addresses().unwrap_or_else(|e| {
            warn!("listing the node's addresses: {e:#}");
            Vec::new()
        });
        let cpu_now = cpu::Sample::read()?;
        self.sequence += 1;
        let snap = snapshot::build(&snapshot::Inputs {
            node_name: self.node_name,
            epoch: dp.epoch(),
            sequence: self.sequence,
            interval_secs: secs,
            table: &self.table,
            listeners: &listeners,
            services: &self.args.services,
            cpu_utilization: cpu_now.utilization_since(&self.cpu_prev),
            cores: cpu_now.cores(),
            stats: &stats,
            capacity: dp.capacity(),
            interfaces: dp.interfaces(),
            cgroup: &self.cgroup,
            addresses: &addresses,
            readings_failed: failed,
            readings_whole: self.readings_whole,
        });
        self.cpu_prev = cpu_now;
        Ok(snap)
    }

    /// Retires idle endpoints from a filling endpoint map (see [`retire`]),
    /// takes them out of the table and hands them to the reports to hold
    /// (see [`withheld`]).
    fn retire_idle(
        &mut self,
        dp: &mut datapath::Datapath,
        listeners: &[listeners::Listener],
        stats: &mut datapath::Stats,
    ) -> Result<()> {
        let args = self.args;
        let policy = retire::Policy::new(
            args.retire_idle_after,
            args.interval,
            dp.capacity().endpoints,
        );
        let idle = policy.candidates(&self.table, listeners, &args.services, stats.live_endpoints);
        if idle.is_empty() {
            return Ok(());
        }
        let done =
            tokio::task::block_in_place(|| dp.retire(&idle)).context("retiring idle endpoints")?;
        if done.removed > 0 {
            info!(
                retired = done.removed,
                live = stats.live_endpoints,
                capacity = policy.capacity,
                "the endpoint map is filling up: retired endpoints idle for {} with no connection open \
                 (those with failed connection attempts only: idle for {})",
                humantime::format_duration(args.retire_idle_after),
                humantime::format_duration(retire::FAILED_ONLY_IDLE.min(args.retire_idle_after))
            );
        }
        stats.note_retired(&done);
        let retired = self.table.take(&done.gone);
        if let Some(tx) = self.retirements.as_ref().filter(|_| !retired.is_empty()) {
            let endpoints = retired
                .iter()
                .map(|(key, e)| (snapshot::endpoint(&args.services, key, e), e.quiet_reads))
                .collect();
            // The reporter gone means the agent is stopping.
            let _ = tx.send(withheld::Retirement {
                snapshot: self.sequence + 1,
                endpoints,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_readings_end_the_agent_only_when_they_keep_failing() {
        let mut f = Failures::default();
        for _ in 1..MAX_FAILED_IN_A_ROW {
            f.failed(anyhow::anyhow!("EF_ENDPOINTS: no memory"))
                .expect("a failure the next reading may not see");
        }
        // A reading that succeeds starts the count again.
        f.cleared();
        for _ in 1..MAX_FAILED_IN_A_ROW {
            f.failed(anyhow::anyhow!("EF_ENDPOINTS: no memory"))
                .expect("fewer than the limit in a row");
        }
        let err = f
            .failed(anyhow::anyhow!("EF_ENDPOINTS: no memory"))
            .expect_err("the limit in a row");
        assert_eq!(f.total, 2 * u64::from(MAX_FAILED_IN_A_ROW) - 1);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("10 readings of the counters failed in a row"),
            "{msg}"
        );
        assert!(msg.contains("EF_ENDPOINTS: no memory"), "{msg}");
    }
}
