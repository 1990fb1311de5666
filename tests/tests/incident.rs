//! The incident, end to end (issue: the incident in one command): the demo's
//! real lab (HAProxy, six nginx backends, an agent per node, a collector),
//! shortened, judged from the timeline it writes.
//!
//! Needs root and the workspace's binaries, xtask's among them
//! (`$EVENFLOW_XTASK_BIN`, else the newest build; `cargo xtask test` builds
//! them first and points at them); fails loudly without them.

mod common;

use common::{leftovers, run_demo};

#[test]
fn the_incident_is_detected_and_resolves() {
    let demo = run_demo(
        "incident",
        &["--warmup", "20s", "--incident", "12s", "--recovery", "20s"],
    );
    let t = &demo.timeline;
    let set = |k: &str| -> Vec<String> {
        t[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let num = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {t}"));
    // No page while balanced.
    assert!(t["page_before_update"].is_null(), "{t}");
    // ZERO for exactly the four starved backends, within 10 s.
    assert_eq!(set("starved").len(), 4);
    assert_eq!(set("zero_members"), set("starved"));
    assert!(num("all_zero_at") - num("update_at") <= 10.0, "{t}");
    assert!(num("first_alert_at") - num("update_at") <= 10.0, "{t}");
    // The two that took the load: SKEW.
    assert_eq!(set("skew_members"), set("kept"));
    // Resolved within 10 s of the rollback.
    assert!(num("resolved_at") - num("rollback_at") <= 10.0, "{t}");
    // The Markdown timeline names the right backends and the times.
    let text = std::fs::read_to_string(&demo.markdown).expect("timeline.md");
    for b in set("starved").iter().chain(set("kept").iter()) {
        assert!(text.contains(b.as_str()), "timeline lacks {b}:\n{text}");
    }
    for marker in [
        "LB UPDATE applied",
        "ALERT FIRED",
        "ROLLBACK applied",
        "RESOLVED",
        "| time (UTC) |",
    ] {
        assert!(text.contains(marker), "timeline lacks `{marker}`:\n{text}");
    }
    // Nothing left behind.
    assert_eq!(leftovers("demo-"), Vec::<String>::new());
}
