//! What the demos' tests share.

use std::process::Command;

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
