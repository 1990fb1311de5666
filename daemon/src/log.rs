//! The daemons' own logs: `--log` (`EVENFLOW_LOG`), a tracing filter
//! checked at the flag, so a typo is refused at start instead of silently
//! logging at another level; written to stderr, in colour on a terminal.

use tracing_subscriber::EnvFilter;

/// `--log`'s value, if tracing reads it as a filter (`info`,
/// `warn,evenflow_collector=debug`, ...).
pub fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s).map_err(|e| {
        format!("`{s}` is not a log filter ({e}): write a level such as info or debug, or info,evenflow_collector=debug")
    })?;
    Ok(s.to_owned())
}

/// Logs to stderr at `filter` (one [`parse_filter`] accepted; anything
/// else logs at info).
pub fn init(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn a_log_filter_is_checked_at_the_flag() {
        for good in ["info", "debug", "warn,evenflow_collector=debug"] {
            assert_eq!(parse_filter(good).as_deref(), Ok(good));
        }
        let err = parse_filter("verbose=on=off").unwrap_err();
        assert!(err.contains("is not a log filter"), "{err}");
    }
}
