//! A benchmark's baseline: a binary of another git revision, built once
//! and kept, so a bench compares the working tree's build with REV's in
//! the same run: `cargo xtask bench-scale --baseline REV` the collector,
//! `cargo xtask bench-datapath --baseline REV` the agent.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::shell;

/// Builds REV's binary `name` (release) and returns its path,
/// `target/baseline/COMMIT/NAME`.
///
/// REV's tree is unpacked (`git archive`, no worktree to clean up) next
/// to the binary and built into this workspace's target directory, so the
/// dependencies already built are reused and only evenflow's own crates
/// compile. The binary is copied out before the one under test is built
/// over it, and kept: the next run with the same commit builds nothing.
pub fn binary(rev: &str, name: &str) -> Result<PathBuf> {
    let root = shell::workspace_root();
    let commit = shell::output(
        Command::new("git")
            .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
            .current_dir(&root),
    )
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
    .with_context(|| {
        format!(
            "--baseline {rev} is not a commit of this repository: give a branch, tag or commit id"
        )
    })?;
    let short = &commit[..commit.len().min(12)];
    let dir = shell::target_dir().join("baseline").join(short);
    let bin = dir.join(name);
    if bin.is_file() {
        eprintln!("baseline {name} of {rev} ({commit}): {}", bin.display());
        return Ok(bin);
    }
    let src = dir.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    unpack(&root, &commit, &src)?;
    mark_version(&src.join("Cargo.toml"), short)?;
    let target = shell::target_dir();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    build
        .args(["build", "--release", "--bin", name])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target);
    shell::without_cargo_run_env(&mut build);
    shell::run(&mut build).with_context(|| format!("building {name} of {rev}"))?;
    let built = target.join("release").join(name);
    fs::copy(&built, &bin)
        .with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    eprintln!("baseline {name} of {rev} ({commit}): {}", bin.display());
    Ok(bin)
}

/// Gives REV's crates another version, naming `commit`. Cargo names a
/// workspace crate's artifacts by name, version and path *relative to its
/// workspace*, so REV's binary and this tree's (or another baseline's)
/// would otherwise be the same artifact in the shared target directory,
/// each build taking the other's for up to date: `git archive` dates the
/// files it unpacks at their commit, older than the other's artifacts.
fn mark_version(manifest: &std::path::Path, commit: &str) -> Result<()> {
    let text =
        fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let Some(at) = text.find("\nversion = \"") else {
        bail!(
            "{} states no workspace version: this revision is too old for --baseline",
            manifest.display()
        );
    };
    // "0.1.0" becomes "0.0.0-baseline-c1234abcd.0.1.0" (a valid version).
    let value = at + "\nversion = \"".len();
    let marked = format!(
        "{}0.0.0-baseline-c{commit}.{}",
        &text[..value],
        &text[value..]
    );
    fs::write(manifest, marked).with_context(|| format!("writing {}", manifest.display()))
}

/// `git archive COMMIT | tar -x -C DIR`.
fn unpack(root: &std::path::Path, commit: &str, dir: &std::path::Path) -> Result<()> {
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting git archive")?;
    let tar_in = archive.stdout.take().context("git archive's output")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(tar_in)
        .status()
        .context("starting tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    if !status.success() || !archived.success() {
        bail!("unpacking {commit} into {} failed", dir.display());
    }
    Ok(())
}
