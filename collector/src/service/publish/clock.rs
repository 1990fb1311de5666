//! When recent ticks ran, for alert timestamps (the detector counts in
//! ticks, the API speaks wall-clock time).

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

/// Tick start times remembered for alert timestamps.
const TICK_TIMES: usize = 4096;

/// Remembers when recent ticks ran.
pub struct TickClock {
    times: VecDeque<(u64, SystemTime)>,
    interval: Duration,
}

impl TickClock {
    /// A clock for ticks `interval` apart.
    pub fn new(interval: Duration) -> Self {
        Self {
            times: VecDeque::new(),
            interval,
        }
    }

    /// When `tick` ran; counted back from the newest tick when it is older
    /// than the clock remembers.
    pub fn at(&self, tick: u64) -> SystemTime {
        if let Some(&(first, _)) = self.times.front()
            && tick >= first
            && let Some(&(remembered, at)) = self.times.get((tick - first) as usize)
            && remembered == tick
        {
            return at;
        }
        match self.times.back() {
            Some(&(last, at)) if tick <= last => at
                .checked_sub(self.interval.saturating_mul((last - tick) as u32))
                .unwrap_or(at),
            Some(&(_, at)) => at,
            None => SystemTime::now(),
        }
    }

    /// Records that `tick` ran at `at`.
    pub fn push(&mut self, tick: u64, at: SystemTime) {
        self.times.push_back((tick, at));
        while self.times.len() > TICK_TIMES {
            self.times.pop_front();
        }
    }
}
