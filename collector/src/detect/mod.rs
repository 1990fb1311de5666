//! The detector: judges a pool's members from the new connections each
//! receives, one tick at a time. Pure and synchronous: no I/O, no clocks,
//! so every decision is reproducible from its inputs.
//!
//! # How it judges
//! * **Shares, not rates.** Each tick a member's expected count is the
//!   pool's observed total times its expected share (its weight over the
//!   eligible weights), so daily swings in load cancel out.
//! * **ZERO** accumulates the expected count `E` a member should have
//!   received since its last new connection. Under Poisson arrivals,
//!   `P(0 | E) = exp(-E)`; under the learned overdispersion φ (negative
//!   binomial with the same mean) `P(0) = exp(-E · ln φ / (φ - 1))`. It
//!   fires when that probability falls below `zero_alpha / members`
//!   (default 2·10⁻⁸ per pool and tick: `E ≥ 17.7` for one member, `E ≥ 20`
//!   in a pool of 10 (P ≈ 2·10⁻⁹ per member), `E ≥ 24.6` in a
//!   pool of 1,000), the Poisson floor on speed: `ln(M/α) / rate` seconds.
//!   A false ZERO needs a run of silence that starts at a tick with traffic
//!   (probability `1 − e^{−r}` at `r` expected per tick) and, to page, lasts
//!   the alert's confirmation tick too (`e^{−r}`); `(1 − e^{−r}) e^{−r} ≤ ¼`,
//!   so false ZERO pages stay below `86,400 · zero_alpha / 4` per pool-day
//!   (0.43 per 1,000 pool-days), whatever the rate.
//! * **SKEW** compares observed with expected counts over several windows
//!   (1, 3, 10 and 30 ticks): it needs the ratio outside a band (page: below
//!   0.5 or above 2; warning: 0.7 / 1.4) *and* a variance-stabilised z-score
//!   `2 (√(O+3/8) − √(E+3/8)) / √φ` beyond a Bonferroni bound at
//!   `skew_alpha` (default 10⁻⁹ per pool and tick) for the pool's size, so
//!   a 3-member pool at 5 conn/s stays quiet on noise while a 1,000-member
//!   pool still finds one member at half or triple its share.
//! * **Dispersion φ** is learned per pool and view from healthy ticks (the
//!   Pearson χ² / degrees of freedom of counts against expectations), since
//!   real traffic is burstier than Poisson.
//! * **CONCENTRATION**: the effective number of members `1 / Σ share²`
//!   falls well below what the weights give; one alert for the incident's
//!   shape instead of one per member.
//! * **FAILING**: every connection attempt to the pool's members fails,
//!   enough of them since one last opened to say clients are trying (see
//!   [`Verdict::Failing`]): one page for the pool, where its new
//!   connections alone would read a quiet pool.
//! * **NO_DATA** (stale observer, counter reset) is never judged ZERO.
//! * **DOWN**: a member whose own agent listed a listener on its port and
//!   no longer does is not listening, so its silence is no evidence about
//!   the balancer: it leaves the shares (its peers' expectations grow, as
//!   its connections go to them), gathers no ZERO evidence, and its
//!   windows start again when it listens again. It warns, and pages once
//!   it has been down `down_page_ticks` more ticks than up (one long
//!   outage, or a crash loop). So does a member its balancers cannot reach while
//!   its own agent is stale (a host that died with its agent): their
//!   failed attempts are another observer's word, not a guess from the
//!   silence.
//! * **Load** (`load.rs`): what each member carries — its open
//!   connections (a binomial placement test on the connections open now,
//!   never summed over ticks, which see the same connections) and its
//!   bytes (per connection, log scale, medians) — with pages bounded by
//!   `86,400 · load_alpha` per pool-day, and a cause: *routing* when new
//!   connections are skewed too, *pinned* when old connections hold it.
//!   A pool with many open connections is judged on them even when it
//!   opens too few new ones.
//! * **Least-connections pools** ([`Balancing::LeastConnections`], a
//!   hint users declare): the balancer sends every new connection to the
//!   member holding the fewest, so a restarted member takes them all while
//!   the others take none. Their new connections raise no ZERO, SKEW or
//!   CONCENTRATION; their open connections are judged as everywhere, and
//!   the member holding the fewest that gets less than half its share of
//!   new connections is not refilling (the balancer should be catching it
//!   up).
//! * Hysteresis: alerts fire when evidence crosses its bound, clear after
//!   `clear_ticks` ticks back inside the warning band, wait for
//!   `settle_ticks` after the member set changes (in a set that keeps
//!   changing, only the members that changed wait), and an alert that
//!   flaps is reopened (held open longer) instead of firing again.

mod alerts;
mod cut_off;
mod joining;
mod left_out;
mod load;
mod pool;
mod reweight;
mod senders;
pub mod sim;
mod tail;

pub use alerts::{Alert, AlertKind, Severity, Transition};
pub use cut_off::CutOffNode;
pub use load::{Cause, LoadSummary, LoadVerdict, PINNED_FIXES, Signal};
pub use pool::{
    Balancing, MemberInput, MemberVerdict, PoolInput, PoolVerdict, Verdict, View, ViewInput,
    ViewVerdict,
};
pub use tail::binomial_log_tail;

use std::collections::HashMap;

use crate::parallel::Threads;

/// Detection settings. Every field is a collector flag.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Per-pool false-alarm probability per tick for ZERO verdicts, split
    /// across members (Bonferroni); pages are at most a quarter of that
    /// (see the module docs).
    pub zero_alpha: f64,
    /// Per-pool false-alarm probability per tick for SKEW pages.
    pub skew_alpha: f64,
    /// Page band: observed/expected below this...
    pub page_low: f64,
    /// ...or above this.
    pub page_high: f64,
    /// Warning band, low side.
    pub warn_low: f64,
    /// Warning band, high side.
    pub warn_high: f64,
    /// Ticks back inside the warning band before an alert clears.
    pub clear_ticks: u32,
    /// Ticks of silence after the member set changes.
    pub settle_ticks: u32,
    /// Ticks a member that joins a pool (or listens again after being
    /// down) may take to be picked up by its balancer before it is judged
    /// on its share, and a changed weight to be followed by it; sooner
    /// once the member takes `warn_low` of its share over 3 ticks, or the
    /// split fits the new weights. 0 judges both at once.
    pub join_grace_ticks: u64,
    /// A resolved alert that would fire again within this many ticks is
    /// reopened (a flap) rather than fired anew.
    pub flap_window: u64,
    /// A pool with fewer new connections per tick than this (averaged over
    /// 30 ticks) abstains: INSUFFICIENT_TRAFFIC.
    pub min_pool_rate: f64,
    /// Effective members / expected effective members below this is
    /// CONCENTRATION.
    pub concentration_ratio: f64,
    /// CPU share above this multiple of the traffic share is HOT...
    pub hot_ratio: f64,
    /// ...when the node's CPU utilisation is at least this.
    pub hot_min_utilization: f64,
    /// Upper bound on the learned dispersion.
    pub max_dispersion: f64,
    /// Per-pool false-alarm probability per tick for load pages (open
    /// connections and bytes), split over members, signals and sides:
    /// false load pages stay below `86,400 · load_alpha` per pool-day.
    pub load_alpha: f64,
    /// Consecutive ticks a load finding must hold at page level before it
    /// pages.
    pub load_sustain: u32,
    /// A member below its share pages only when it will not be back to
    /// half its share within this many ticks of going low, at the pool's
    /// connection turnover (a restarted or new member refilling warns).
    pub load_refill: u64,
    /// A pool holding at least this many open connections is judged on
    /// its load, however few new connections it opens.
    pub min_pool_active: f64,
    /// A member down (its agent lists no listener on its port, or its
    /// balancers cannot reach it while its agent is stale) pages once its
    /// ticks down, less its ticks up since it first went down, reach this;
    /// before that it warns.
    pub down_page_ticks: u64,
    /// A draining member still holding open connections this many ticks
    /// after it began draining warns (SKEW, open connections, pinned):
    /// long-lived connections that outlive a drain keep a backend busy
    /// that was meant to be emptied. 0 never warns.
    pub drain_deadline_ticks: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            zero_alpha: 2e-8,
            skew_alpha: 1e-9,
            page_low: 0.5,
            page_high: 2.0,
            warn_low: 0.7,
            warn_high: 1.4,
            clear_ticks: 5,
            settle_ticks: 2,
            join_grace_ticks: 30,
            flap_window: 300,
            min_pool_rate: 0.5,
            concentration_ratio: 0.75,
            hot_ratio: 1.5,
            hot_min_utilization: 0.5,
            max_dispersion: 50.0,
            load_alpha: 5e-9,
            load_sustain: 10,
            load_refill: 300,
            min_pool_active: 10.0,
            down_page_ticks: 60,
            drain_deadline_ticks: 300,
        }
    }
}

/// The detector for every pool.
#[derive(Default)]
pub struct Detector {
    pub settings: Settings,
    pools: HashMap<String, pool::PoolState>,
    alerts: alerts::Book,
}

impl Detector {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Judges one tick of one pool; returns the verdicts and the alert
    /// transitions this tick caused.
    pub fn evaluate(
        &mut self,
        input: &PoolInput<impl AsRef<MemberInput>>,
    ) -> (PoolVerdict, Vec<Transition>) {
        let state = self.pools.entry(input.name.clone()).or_default();
        let verdict = state.evaluate(&self.settings, input);
        let transitions = self.alerts.update(&self.settings, input.tick, &verdict);
        (verdict, transitions)
    }

    /// Judges one tick of every pool in `inputs`: the same verdicts and
    /// transitions as [`Detector::evaluate`] on each in turn. Pools share
    /// no state, so they are judged on `threads`; their alerts are then
    /// booked one pool at a time, in `inputs` order (the alert book is one
    /// for every pool).
    pub fn evaluate_all<M: AsRef<MemberInput> + Sync>(
        &mut self,
        inputs: &[&PoolInput<M>],
        threads: Threads,
    ) -> Vec<(PoolVerdict, Vec<Transition>)> {
        for input in inputs {
            if !self.pools.contains_key(&input.name) {
                self.pools
                    .insert(input.name.clone(), pool::PoolState::default());
            }
        }
        let mut states: HashMap<&str, &mut pool::PoolState> = self
            .pools
            .iter_mut()
            .map(|(name, state)| (name.as_str(), state))
            .collect();
        // A name given twice gets its state once, here; the second is
        // judged below, after the first, as one at a time would.
        let mut jobs: Vec<(&PoolInput<M>, Option<&mut pool::PoolState>)> = inputs
            .iter()
            .map(|input| (*input, states.remove(input.name.as_str())))
            .collect();
        let settings = &self.settings;
        let verdicts = threads.map(
            &mut jobs,
            |(input, _)| input.members.len(),
            |_, (input, state)| state.as_mut().map(|s| s.evaluate(settings, input)),
        );
        drop(jobs);
        inputs
            .iter()
            .zip(verdicts)
            .map(|(input, verdict)| {
                let verdict = verdict.unwrap_or_else(|| {
                    let state = self.pools.entry(input.name.clone()).or_default();
                    state.evaluate(&self.settings, input)
                });
                let transitions = self.alerts.update(&self.settings, input.tick, &verdict);
                (verdict, transitions)
            })
            .collect()
    }

    /// Forgets pools not in `names` (removed from the fleet), resolving
    /// their open alerts.
    pub fn retain_pools(
        &mut self,
        names: &std::collections::HashSet<String>,
        tick: u64,
    ) -> Vec<Transition> {
        self.pools.retain(|n, _| names.contains(n));
        self.alerts.resolve_pools_not_in(names, tick)
    }

    /// Every open alert.
    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.open()
    }

    /// Recently resolved alerts, newest first.
    pub fn resolved_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.resolved()
    }
}

/// The z-score bound for a one-sided test at `alpha / n` (Bonferroni),
/// from the normal tail approximation `sqrt(2 ln(n / alpha))` tightened by
/// its usual correction.
pub fn z_bound(alpha: f64, n: usize) -> f64 {
    let a = (alpha / n.max(1) as f64).clamp(1e-300, 0.5);
    let t = (-2.0 * a.ln()).sqrt();
    // Abramowitz-Stegun 26.2.23 inverse of the upper normal tail.
    let (c0, c1, c2, d1, d2, d3) = (2.515517, 0.802853, 0.010328, 1.432788, 0.189269, 0.001308);
    t - (c0 + c1 * t + c2 * t * t) / (1.0 + d1 * t + d2 * t * t + d3 * t * t * t)
}

/// The upper `alpha` quantile of χ² with `df` degrees of freedom
/// (Wilson-Hilferty).
pub fn chi2_bound(alpha: f64, df: usize) -> f64 {
    let k = df.max(1) as f64;
    let z = z_bound(alpha, 1);
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + z * a.sqrt()).powi(3)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_balancing;
#[cfg(test)]
mod tests_churn;
#[cfg(test)]
mod tests_down;
#[cfg(test)]
mod tests_joining;
#[cfg(test)]
mod tests_load;
#[cfg(test)]
mod tests_mismatch;
#[cfg(test)]
mod tests_refusing;
#[cfg(test)]
mod tests_reweight;
