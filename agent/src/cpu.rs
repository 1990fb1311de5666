//! Node CPU utilisation from `/proc/stat`.

use anyhow::{Context as _, Result, anyhow};

/// Busy and total jiffies summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    busy: u64,
    total: u64,
    cores: u32,
}

impl Sample {
    /// Reads `/proc/stat` now.
    pub fn read() -> Result<Self> {
        parse(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
    }

    /// Busy fraction of all cores between `earlier` and `self`, 0.0..=1.0.
    pub fn utilization_since(&self, earlier: &Sample) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        (self.busy.saturating_sub(earlier.busy) as f64 / total as f64).clamp(0.0, 1.0)
    }

    pub fn cores(&self) -> u32 {
        self.cores
    }
}

/// Parses the aggregate `cpu` line: user nice system idle iowait irq softirq
/// steal (guest time is already inside user). Idle and iowait are not busy.
pub fn parse(text: &str) -> Result<Sample> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no aggregate cpu line"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .context("/proc/stat cpu line is not numeric")?;
    if v.len() < 4 {
        return Err(anyhow!(
            "/proc/stat cpu line has {} fields, expected at least 4",
            v.len()
        ));
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let cores = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Ok(Sample {
        busy: total - idle,
        total,
        cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_busy_over_total() {
        let a = parse("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1\ncpu1 1\n").expect("parses");
        let b = parse("cpu  200 0 200 900 100 0 0 0 0 0\ncpu0 1\ncpu1 1\n").expect("parses");
        assert_eq!(a.cores(), 2);
        // 200 busy out of 400 jiffies.
        assert!((b.utilization_since(&a) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("intr 1 2 3").is_err());
        assert!(parse("cpu  a b c d").is_err());
    }

    #[test]
    fn reads_this_machine() {
        let s = Sample::read().expect("/proc/stat");
        assert!(s.cores() >= 1);
    }
}
