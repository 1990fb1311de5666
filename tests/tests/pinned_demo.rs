//! The pinned demo, end to end (`cargo xtask demo --scenario pinned`): the
//! real lab (HAProxy in TCP mode, three gRPC backends, 150 channels, an
//! agent per node, a collector), shortened, judged from the timeline it
//! writes.
//!
//! Needs root and the workspace's binaries, xtask's among them
//! (`$EVENFLOW_XTASK_BIN`, else the newest build; `cargo xtask test` builds
//! them first and points at them); fails loudly without them.

mod common;

use std::{path::PathBuf, process::Command};

use common::leftovers;
use serde_json::Value;

#[test]
fn the_pinned_story_pages_pinned_and_resolves_after_the_fix() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the pinned demo builds namespaces and loads eBPF: run it as root (cargo xtask test)"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pinned");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (md, json) = (dir.join("timeline.md"), dir.join("timeline.json"));
    let xtask = evenflow_tests::agent::binary("xtask", "EVENFLOW_XTASK_BIN")
        .expect("the xtask binary (cargo xtask test points at itself)");
    let out = Command::new(xtask)
        .args([
            "demo",
            "--scenario",
            "pinned",
            "--no-build",
            "--warmup",
            "20s",
            "--recovery",
            "30s",
        ])
        .arg("--timeline")
        .arg(&md)
        .arg("--timeline-json")
        .arg(&json)
        .output()
        .expect("xtask demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no timeline JSON ({e}); demo stderr:\n{}\nstdout:\n{}",
                tail(&String::from_utf8_lossy(&out.stderr)),
                tail(&stdout)
            )
        });
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        t["problems"],
        tail(&stdout)
    );
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
    let text = std::fs::read_to_string(&md).expect("timeline.md");
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
