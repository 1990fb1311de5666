//! The detection benchmark, reduced (`--quick`, seeded): every scenario must
//! meet its expectation (page, warn, quiet, stale, abstain) with no false
//! page, and a balanced pool must stay quiet for two simulated days.

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
}
