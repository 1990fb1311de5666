//! evenflow's lab: real network namespaces joined by veths, one per node,
//! with real servers (nginx), real load balancers (HAProxy, nftables DNAT)
//! and one real `evenflow-agent` per node. The end-to-end tests in `tests/`
//! and `cargo xtask demo` build on it.
//!
//! Everything a lab creates is removed when it is dropped: processes,
//! namespaces, cgroups, temporary directories and pinned maps.

pub mod agent;
pub mod client;
pub mod haproxy;
pub mod lab;
pub mod netns;
pub mod nft;
pub mod nginx;

/// Fails with a clear message unless the process can do what labs need:
/// root (namespaces, cgroups, BPF). Tests call it first so they fail, never
/// skip, where they cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "evenflow's end-to-end tests need root (network namespaces, cgroups, BPF): \
         run them as root, as `cargo xtask test` in CI does"
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "this kernel has no BTF (/sys/kernel/btf/vmlinux); the agent needs it"
    );
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
