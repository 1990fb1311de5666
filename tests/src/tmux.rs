//! What a terminal program shows: run it in a detached tmux session of a
//! given size, capture the screen after a while, then quit it (`q`) and
//! close the session. `cargo xtask setup` installs tmux.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

/// The screen of `cmd` (a shell command line) `after` it starts, on a
/// 180×30 terminal.
pub fn screen(cmd: &str, after: Duration) -> Result<String> {
    static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let session = format!("evenflow{}-{n}", std::process::id());
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "180",
            "-y",
            "30",
            cmd,
        ])
        .status()
        .context("running tmux (cargo xtask setup installs it)")?;
    ensure!(ok.success(), "tmux new-session failed for `{cmd}`");
    std::thread::sleep(after);
    let screen = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", &session])
        .output()
        .context("tmux capture-pane")?;
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .stderr(Stdio::null())
        .status();
    Ok(String::from_utf8_lossy(&screen.stdout).into_owned())
}
