//! The detection benchmark, reduced (`--quick`, seeded): every scenario must
//! meet its expectation (page, warn, quiet, stale, abstain) with no false
//! page, and a balanced pool must stay quiet for two simulated days; the
//! long-lived rows must page `pinned` for load the new connections do not
//! show.

use std::process::Command;

#[test]
fn quick_detection_benchmark_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_evenflow-detect-bench"))
        .args(["--quick", "--seed", "7"])
        .output()
        .expect("bench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ALL PASS"), "{text}");
    assert!(
        text.contains("ZERO within 3 ticks at 100 conn/s, 10 members") && text.contains("MET"),
        "{text}"
    );
    let pinned = text
        .lines()
        .find(|l| l.starts_with("10x200: one member holds 3x its share"))
        .unwrap_or_else(|| panic!("no long-lived row: {text}"));
    assert!(
        pinned.contains("pinned") && pinned.ends_with("PASS"),
        "{pinned}"
    );
}
