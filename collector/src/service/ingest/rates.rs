//! The ingest stage's hand-over to the tick: each endpoint's counts for a
//! tick are its measured rate times the tick length, so agents reporting on
//! their own clocks stay comparable.

use std::{net::IpAddr, sync::Arc, time::Instant};

use super::agent::{AgentState, Delta, EpKey, EpState, ListenerInfo};

impl AgentState {
    /// Takes this tick's view of the agent.
    ///
    /// Agents report on their own clocks, so a tick may hold no report of
    /// an agent, or two. Handing raw deltas to the detector would then make
    /// a healthy member look dark for a tick (and double the next one). So
    /// each endpoint's counts for the tick are its *rate*, measured over
    /// the agent seconds its reports since the previous tick cover, times
    /// the tick length (fractions carried over). A fresh agent with no
    /// report this tick keeps its last measured rate. An endpoint whose
    /// rate is not known yet (first report, counter reset) is unknown for
    /// the tick, never zero.
    pub fn take_tick(&mut self, now: Instant, tick: f64, out: &mut AgentTick) {
        out.node = self.node.clone();
        out.layout = self.layout;
        out.fresh = self.fresh(now, tick);
        out.age = self.age(now);
        out.reset = std::mem::take(&mut self.reset_pending);
        out.cpu = self.cpu;
        let covered = std::mem::take(&mut self.covered);
        // Last tick's endpoints are written over in place: one pass over
        // them, not a clear and a refill (half a million at 5,000 agents).
        out.endpoints.truncate(self.endpoints.len());
        for (index, state) in self.endpoints.iter_mut().enumerate() {
            let endpoint = state.take(covered, tick);
            match out.endpoints.get_mut(index) {
                Some(slot) => *slot = endpoint,
                None => out.endpoints.push(endpoint),
            }
        }
        self.drop_departed();
        if out.listeners != self.listeners {
            out.listeners.clone_from(&self.listeners);
        }
        if out.addresses != self.addresses {
            out.addresses.clone_from(&self.addresses);
        }
    }
}

impl EpState {
    /// The endpoint's counts for a tick `tick` seconds long, its reports
    /// since the last tick covering `covered` agent seconds.
    fn take(&mut self, covered: f64, tick: f64) -> TickEndpoint {
        let pending = std::mem::take(&mut self.pending);
        if covered > 0.0 {
            self.rate = Some([
                pending.conns as f64 / covered,
                pending.bytes_in as f64 / covered,
                pending.bytes_out as f64 / covered,
                pending.failed as f64 / covered,
            ]);
        }
        let mut delta = Delta::default();
        if let Some(rate) = self.rate {
            let mut emit = [0u64; 4];
            for i in 0..4 {
                self.carry[i] += rate[i] * tick;
                // The whole part by a saturating cast (a negative or NaN
                // carry emits none), not `floor`: without SSE4.1, the
                // baseline x86-64 target's `floor` is a libm call, four an
                // endpoint a tick.
                let whole = self.carry[i] as u64;
                self.carry[i] -= whole as f64;
                emit[i] = whole;
                // What is left is a fraction, unless the rate was infinite
                // or past 2^64 a tick: an infinite or NaN carry would hide
                // every later count until the endpoint's epoch changed.
                if !(0.0..1.0).contains(&self.carry[i]) {
                    self.carry[i] = 0.0;
                }
            }
            delta = Delta {
                conns: emit[0],
                bytes_in: emit[1],
                bytes_out: emit[2],
                failed: emit[3],
            };
        }
        TickEndpoint {
            key: self.key,
            service: self.service.clone(),
            delta,
            rate: self.rate.unwrap_or_default(),
            total: self.total,
            failed_total: self.failed_total,
            cumulative: self.opened,
            cumulative_failed: self.failed,
            reset: std::mem::take(&mut self.reset) || self.rate.is_none(),
            active: self.active,
        }
    }
}

/// One endpoint as the tick sees it.
#[derive(Clone, Debug)]
pub struct TickEndpoint {
    /// Which endpoint.
    pub key: EpKey,
    /// Its service label.
    pub service: Option<Arc<str>>,
    /// Counts for this tick (rate times tick length), oriented to the
    /// backend.
    pub delta: Delta,
    /// Measured per-second rates: new connections, bytes in, bytes out,
    /// failed attempts.
    pub rate: [f64; 4],
    /// Exact new connections since the collector first saw it.
    pub total: u64,
    /// Exact failed attempts since the collector first saw it.
    pub failed_total: u64,
    /// New connections as the agent's counter reports it (since its
    /// epoch; the kernel's total).
    pub cumulative: u64,
    /// Failed attempts, likewise.
    pub cumulative_failed: u64,
    /// Its counters went backwards or its rate is not known yet: the
    /// tick's count is unknown.
    pub reset: bool,
    /// Connections open now.
    pub active: u64,
}

/// One agent as the tick sees it.
#[derive(Clone, Debug, Default)]
pub struct AgentTick {
    /// Node name.
    pub node: Arc<str>,
    /// The agent's layout number: the same while its endpoints (in the
    /// same order), their labels, its listeners and node addresses are.
    pub layout: u64,
    /// Reported within three intervals.
    pub fresh: bool,
    /// Seconds since the last report.
    pub age: f64,
    /// Counters restarted (or first report) since the previous tick.
    pub reset: bool,
    /// CPU utilisation.
    pub cpu: Option<f64>,
    /// Every endpoint.
    pub endpoints: Vec<TickEndpoint>,
    /// Listening sockets.
    pub listeners: Vec<ListenerInfo>,
    /// The node's own addresses, sorted.
    pub addresses: Vec<IpAddr>,
}
