//! Builds `agent-ebpf` for `bpfel-unknown-none` with the nightly toolchain
//! and bpf-linker (aya-build), so `cargo build -p evenflow-agent` produces an
//! agent with its eBPF object embedded. `cargo xtask setup` installs what this
//! needs; `AYA_BUILD_SKIP=1` skips it (the agent then embeds nothing and
//! refuses to start).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
