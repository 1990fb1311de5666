//! Bad flag values get a clear error naming the fix. The agent checks its
//! flags before it touches the host, so these run without root.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evenflow-agent"))
        .args(args)
        .env_remove("EVENFLOW_COLLECTOR")
        .output()
        .expect("evenflow-agent runs")
}

#[test]
fn bad_flag_values_are_explained() {
    let o = agent(&["--service", "web"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NAME=PORT"));
    let o = agent(&["--interval", "1ms"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("between 100ms and 1h"));
    let o = agent(&["--collector", "collector:50052"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("http://"));
    let o = agent(&["--max-endpoints", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("from 16 to"));
    let o = agent(&["--retire-idle-after", "10ms"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 1s"));
    // Checked before anything is loaded: no root needed to be refused.
    let o = agent(&["--service", "web=8080,api=8080", "--node-name", "flags"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("two names") && err.contains("NAME=ADDR:PORT"),
        "{err}"
    );
}
