//! Builds `agent-ebpf` for `bpfel-unknown-none` with the nightly toolchain
//! and bpf-linker (aya-build), so `cargo build -p evenflow-agent` produces an
//! agent with its eBPF object embedded. `cargo xtask setup` installs what this
//! needs; `AYA_BUILD_SKIP=1` skips it (the agent then embeds nothing and
//! refuses to start).
//!
//! aya-build compiles in `OUT_DIR/aya-build`, and `OUT_DIR` differs between
//! `cargo check`, `cargo build`, clippy and each feature set of this crate:
//! each compiled the programs from scratch (40–50 s; three times in
//! `cargo xtask test`). That directory is made a link to one beside the
//! profile directories (`<target>/ebpf/aya-build`), where every build after
//! the first finds the programs up to date. The inner cargo's lock guards
//! it; aya-build still copies the object into this build's own `OUT_DIR`.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    share_build_dir(&out_dir)?;
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    );
    if skipped() {
        // Nothing built: an empty object, which the agent refuses at start
        // with the reason.
        let object = out_dir.join("agent-ebpf");
        std::fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
    }
    built
}

/// Links `OUT_DIR/aya-build` to `<target>/ebpf/aya-build`. `OUT_DIR` is
/// `<target>/<profile>/build/<crate>-<hash>/out` (`<target>/<triple>/…`
/// for a cross build); in another layout, or where the directory exists
/// already (a build before this one), aya-build's own place is kept.
fn share_build_dir(out_dir: &Path) -> anyhow::Result<()> {
    let in_build_dir = out_dir.file_name().is_some_and(|n| n == "out")
        && (out_dir.parent().and_then(Path::parent))
            .and_then(Path::file_name)
            .is_some_and(|n| n == "build");
    let (Some(target), true) = (out_dir.ancestors().nth(4), in_build_dir) else {
        return Ok(());
    };
    let link = out_dir.join("aya-build");
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    let shared = target.join("ebpf").join("aya-build");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}

/// Whether `AYA_BUILD_SKIP` asks aya-build to build nothing.
fn skipped() -> bool {
    std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
