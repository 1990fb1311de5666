//! The pinned demo, end to end (`cargo xtask demo --scenario pinned`): the
//! real lab (HAProxy in TCP mode, three gRPC backends, 150 channels, an
//! agent per node, a collector), shortened, judged from the timeline it
//! writes.
//!
//! Needs root and the workspace's binaries, xtask's among them
//! (`$EVENFLOW_XTASK_BIN`, else the newest build; `cargo xtask test` builds
//! them first and points at them); fails loudly without them.

mod common;

use common::{leftovers, run_demo};

#[test]
fn the_pinned_story_pages_pinned_and_resolves_after_the_fix() {
    let demo = run_demo(
        "pinned",
        &[
            "--scenario",
            "pinned",
            "--warmup",
            "20s",
            "--recovery",
            "30s",
        ],
    );
    let t = &demo.timeline;
    let num = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {t}"));
    // No page while balanced; the pinned page within 60 s of the restart,
    // on the restarted member's open connections.
    assert!(t["page_before_restart"].is_null(), "{t}");
    assert!(num("page_at") - num("restart_at") <= 60.0, "{t}");
    let page = &t["page"];
    assert_eq!(page["member"], t["restarted"], "{t}");
    assert_eq!(page["signal"], "active_connections", "{t}");
    assert_eq!(page["cause"], "pinned", "{t}");
    assert_eq!(page["kind"], "ZERO", "{t}");
    assert!(
        t["other_pages"].as_array().is_some_and(Vec::is_empty),
        "{t}"
    );
    // Resolved after the fix.
    assert!(num("resolved_at") - num("fix_at") <= 30.0, "{t}");
    // The Markdown timeline names the backends and the steps.
    let text = std::fs::read_to_string(&demo.markdown).expect("timeline.md");
    let restarted = t["restarted"].as_str().expect("restarted");
    assert!(text.contains(restarted), "{text}");
    for h in t["holders"].as_array().into_iter().flatten() {
        let h = h.as_str().expect("holder");
        assert!(text.contains(h), "timeline lacks {h}:\n{text}");
    }
    for marker in [
        "RESTART",
        "ALERT FIRED page ZERO",
        "active_connections, pinned",
        "FIX applied",
        "RESOLVED",
        "| time (UTC) |",
    ] {
        assert!(text.contains(marker), "timeline lacks `{marker}`:\n{text}");
    }
    assert_eq!(leftovers("pdemo-"), Vec::<String>::new());
}
