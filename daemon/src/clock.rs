//! The wall-clock grid both daemons keep time on.
//!
//! Every agent takes its reports at whole multiples of its interval since
//! the Unix epoch, and the collector ticks a quarter of its interval after
//! whole multiples of its own. Agents started at different moments then
//! report the same stretch of time, and each tick takes the reports of
//! that stretch from all of them. Without the grid each agent kept the
//! phase of its start: a burst of connections (a fleet of clients
//! reconnecting at once) reached the tick before the boundary in one
//! agent's report and the tick after it in another's, so one backend
//! showed all of its share a tick early and none in the tick its peers
//! got theirs: a ZERO page, and a MISMATCH against its load balancer.
//! Nodes whose clocks agree (NTP) share the grid; one whose clock is off
//! keeps a phase of its own, as every agent did before.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long from `now` to the next point `offset` past a whole multiple
/// of `period` since the Unix epoch that is at least a quarter period
/// away: a timer that fires a hair before its point must not report (or
/// tick) twice. A zero `period` is taken as one nanosecond.
pub fn until_next(now: SystemTime, period: Duration, offset: Duration) -> Duration {
    let guard = period / 4;
    let nanos = period.as_nanos().max(1);
    let since = (now + guard)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let into = (since + nanos - offset.as_nanos() % nanos) % nanos;
    Duration::from_nanos(u64::try_from(nanos - into).unwrap_or(u64::MAX)) + guard
}

/// Where in its interval the collector ticks: reports taken on the
/// boundary have arrived, and the next ones (at the boundary after, or
/// half an interval on for agents reporting twice as often) are not due.
pub fn tick_offset(interval: Duration) -> Duration {
    interval / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    const HALF: Duration = Duration::from_millis(500);

    #[test]
    fn waits_for_the_next_point_of_the_grid() {
        assert_eq!(until_next(at(10_200), HALF, Duration::ZERO), ms(300));
        // On the grid, or a hair before it: the next point, not now.
        assert_eq!(until_next(at(10_500), HALF, Duration::ZERO), HALF);
        assert_eq!(until_next(at(10_499), HALF, Duration::ZERO), ms(501));
        let second = Duration::from_secs(1);
        assert_eq!(until_next(at(10_300), second, tick_offset(second)), ms(950));
        assert_eq!(
            until_next(at(10_100), second, tick_offset(second)),
            ms(1150)
        );
    }

    #[test]
    fn daemons_started_apart_keep_the_same_times() {
        // Two agents started 130 ms apart report at the same instants, and
        // the collector's tick sits between their reports.
        let times = |start: u64| {
            let mut now = at(start);
            (0..4)
                .map(|_| {
                    now += until_next(now, HALF, Duration::ZERO);
                    now
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(times(7_010), times(7_140));
        let second = Duration::from_secs(1);
        let tick = at(7_010) + until_next(at(7_010), second, tick_offset(second));
        assert_eq!(tick, at(8_250));
        assert!(times(7_010).iter().all(|t| *t != tick));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
