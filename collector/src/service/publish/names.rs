//! The label names live in `evenflow_proto::names`, shared with the CLI;
//! the alert kinds the detector raises spell themselves the same way
//! ([`crate::detect::AlertKind::as_str`], checked here).

pub use evenflow_proto::names::*;

#[cfg(test)]
mod tests {
    use evenflow_proto::{names::alert_kind_name, v1};

    use crate::detect::AlertKind;

    #[test]
    fn the_detector_spells_alert_kinds_as_the_api_does() {
        for kind in [
            AlertKind::Zero,
            AlertKind::Skew,
            AlertKind::Concentration,
            AlertKind::Stale,
            AlertKind::Hot,
            AlertKind::Mismatch,
            AlertKind::DrainingViolation,
            AlertKind::Down,
            AlertKind::Failing,
        ] {
            assert_eq!(
                alert_kind_name(v1::AlertKind::from(kind) as i32),
                kind.as_str()
            );
        }
        assert_eq!(
            alert_kind_name(v1::AlertKind::InsufficientTraffic as i32),
            "INSUFFICIENT_TRAFFIC"
        );
        assert_eq!(alert_kind_name(-1), "UNSPECIFIED");
    }
}
