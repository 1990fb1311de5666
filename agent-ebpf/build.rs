//! Rebuild the eBPF object when bpf-linker changes (as aya's template does),
//! and have bpf-linker leave LLVM's expansion of memset and memcpy alone.
//!
//! By default bpf-linker passes LLVM `--bpf-expand-memcpy-in-order`, which
//! sets the BPF backend's store budget for memory intrinsics to zero: every
//! memset (a struct built with `..Default::default()`, an array of zeroes)
//! becomes a call to the object's own `memset`, a loop a byte at a time —
//! forty iterations for the counters sock_ops adds at every close. Without
//! it LLVM writes them as a few stores, as it does for any other target.
//! (The flag keeps memcpy's loads and stores in order for JITs that match
//! the pattern; nothing here relies on that.)
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
