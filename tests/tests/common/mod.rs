//! What the demos' tests share.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

/// A finished demo: its timeline (JSON) and where its Markdown is.
pub struct Demo {
    pub timeline: Value,
    pub markdown: PathBuf,
}

/// Runs `cargo xtask demo` (as root, from the built xtask) with `args`,
/// writing its timelines under the test's temporary directory `name`;
/// fails with the tail of its output when it wrote no timeline or failed.
pub fn run_demo(name: &str, args: &[&str]) -> Demo {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the {name} demo builds namespaces and loads eBPF: run it as root (cargo xtask test)"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (md, json) = (dir.join("timeline.md"), dir.join("timeline.json"));
    let xtask = evenflow_tests::agent::binary("xtask", "EVENFLOW_XTASK_BIN")
        .expect("the xtask binary (cargo xtask test points at itself)");
    let out = Command::new(xtask)
        .arg("demo")
        .args(args)
        .arg("--no-build")
        .arg("--timeline")
        .arg(&md)
        .arg("--timeline-json")
        .arg(&json)
        .output()
        .expect("xtask demo runs");
    let tail = |s: &[u8]| {
        let s = String::from_utf8_lossy(s);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let timeline: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no timeline JSON ({e}); demo stderr:\n{}\nstdout:\n{}",
                tail(&out.stderr),
                tail(&out.stdout)
            )
        });
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        timeline["problems"],
        tail(&out.stdout)
    );
    Demo {
        timeline,
        markdown: md,
    }
}

/// What a lab named `prefix` ("demo-") left behind: namespaces, pinned
/// maps, agent processes.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
        found.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| format!("netns {l}")),
        );
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf/evenflow") {
        found.extend(
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .map(|n| format!("pinned maps {n}")),
        );
    }
    // Agents by their node names; servers, load balancers and clients by
    // the lab directory their configurations and counters live in.
    let lab_dir = format!("evenflow-lab-{}/", prefix.trim_end_matches('-'));
    for pattern in [format!("node-name {prefix}"), lab_dir] {
        if let Ok(o) = Command::new("pgrep").args(["-af", &pattern]).output() {
            found.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.contains("pgrep"))
                    .map(|l| format!("process {l}")),
            );
        }
    }
    found
}
