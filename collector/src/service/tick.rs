//! The detection tick: every interval, take each agent's counts
//! ([`crate::service::ingest::rates`]), build the pools
//! ([`crate::service::pools`]), evaluate them ([`crate::detect`]) and
//! publish the results ([`crate::service::publish`]). Nothing else happens
//! here.
//!
//! The tick runs on its own OS thread so a large fleet's tick never stalls
//! the async runtime that serves ingest and queries; it takes each agent's
//! lock only long enough to copy that agent's counts.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use evenflow_daemon::clock;
use tracing::{debug, error, warn};

use crate::{
    detect::{Detector, PoolInput, Settings, Transition},
    parallel::Threads,
    service::{
        declared::Sources,
        ingest::AgentTick,
        pools::{self, PoolMember, PoolTick},
        publish::{JudgedPool, Publisher},
        shared::Shared,
        webhook,
    },
};

/// The tick loop's own state.
pub struct Engine {
    shared: Arc<Shared>,
    detector: Detector,
    sources: Sources,
    publisher: Publisher,
    tick: u64,
    retention: Duration,
    /// Threads the tick's stages spread over.
    threads: Threads,
    /// Each agent's counts for this tick (reused across ticks).
    agents: Vec<AgentTick>,
    /// The pools stage, with the plan it keeps while the fleet's layout
    /// holds.
    pools: pools::Builder,
}

impl Engine {
    /// A new engine.
    pub fn new(
        shared: Arc<Shared>,
        settings: Settings,
        sources: Sources,
        webhooks: Option<webhook::Queue>,
        retention: Duration,
        threads: Threads,
    ) -> Self {
        let publisher = Publisher::new(shared.interval, webhooks, threads);
        Self {
            shared,
            detector: Detector::new(settings),
            sources,
            publisher,
            tick: 0,
            retention,
            threads,
            agents: Vec::new(),
            pools: pools::Builder::default(),
        }
    }

    /// Runs ticks until `stop` is set, each a quarter interval past a
    /// whole multiple of the interval on the wall clock: the agents report
    /// on that grid (`evenflow_daemon::clock`), so each tick takes the
    /// same stretch of time from every one of them.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let interval = self.shared.interval;
        let offset = clock::tick_offset(interval);
        // The first tick a whole interval after the start at least: the
        // agents that connect at once report before it.
        let settle = interval * 3 / 4;
        let mut next = Instant::now()
            + settle
            + clock::until_next(SystemTime::now() + settle, interval, offset);
        while !stop.load(Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            // A bug in one tick must not end detection for good: log it and
            // carry on with the next.
            if let Err(panic) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.tick_once()))
            {
                let what = (panic.downcast_ref::<&str>())
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(tick = self.tick, "detection tick panicked: {what}");
            }
            let following = Instant::now() + clock::until_next(SystemTime::now(), interval, offset);
            // Overran: the ticks skipped, rather than a burst of them.
            let gap = following.saturating_duration_since(next).as_secs_f64();
            let missed = (gap / interval.as_secs_f64()).round() as u64;
            if missed > 1 {
                (self.shared.stats.overruns).fetch_add(missed - 1, Relaxed);
            }
            next = following;
        }
    }

    /// One detection tick: take → build → evaluate → publish.
    pub fn tick_once(&mut self) {
        let started = Instant::now();
        let wall = SystemTime::now();
        self.tick += 1;
        let tick = self.tick;
        self.publisher.tick_started(tick, wall);

        self.take(started);
        let declared = self.sources.at(started);
        let pools = (self.pools).build(&self.agents, declared, tick, self.threads);
        let pool_count = pools.len();
        let (judged, gone) = self.evaluate(pools, tick);
        self.publisher.publish(
            &self.shared,
            tick,
            wall.into(),
            judged,
            gone,
            &self.detector,
        );

        self.forget_silent_agents(started);
        self.record(started, tick, pool_count);
    }

    /// Each agent's counts for the tick, one agent lock at a time, sorted
    /// by node name (as [`pools::build`] wants them).
    fn take(&mut self, started: Instant) {
        let tick_seconds = self.shared.interval.as_secs_f64();
        let handles = self.shared.registry.all();
        self.agents.resize_with(handles.len(), AgentTick::default);
        self.threads.map(
            &mut self.agents,
            |agent| agent.endpoints.len(),
            |index, agent| {
                let mut state = handles[index].lock().unwrap_or_else(|e| e.into_inner());
                state.take_tick(started, tick_seconds, agent);
            },
        );
        drop(handles);
        self.agents.sort_unstable_by(|a, b| a.node.cmp(&b.node));
    }

    /// Judges every pool; also returns the transitions of pools no longer
    /// in the fleet (their open alerts resolve).
    fn evaluate(&mut self, pools: Vec<PoolTick>, tick: u64) -> (Vec<JudgedPool>, Vec<Transition>) {
        let inputs: Vec<&PoolInput<PoolMember>> = pools.iter().map(|pool| &pool.input).collect();
        let verdicts = self.detector.evaluate_all(&inputs, self.threads);
        drop(inputs);
        let names: HashSet<String> = pools.iter().map(|pool| pool.input.name.clone()).collect();
        let judged = (pools.into_iter())
            .zip(verdicts)
            .map(|(pool, (verdict, transitions))| JudgedPool {
                pool,
                verdict,
                transitions,
            })
            .collect();
        let gone = self.detector.retain_pools(&names, tick);
        (judged, gone)
    }

    /// Forgets agents silent for longer than `--agent-retention`.
    fn forget_silent_agents(&self, started: Instant) {
        let gone = self
            .shared
            .registry
            .forget_older_than(started, self.retention.as_secs_f64());
        for node in gone {
            warn!(node = %node, "forgetting agent: no report for {:?}", self.retention);
        }
    }

    /// The tick's own counters.
    fn record(&self, started: Instant, tick: u64, pool_count: usize) {
        let took = started.elapsed().as_micros() as u64;
        let stats = &self.shared.stats;
        stats.ticks.fetch_add(1, Relaxed);
        stats.last_tick_micros.store(took, Relaxed);
        stats.max_tick_micros.fetch_max(took, Relaxed);
        debug!(
            tick,
            agents = self.agents.len(),
            pools = pool_count,
            micros = took,
            "tick"
        );
    }
}
