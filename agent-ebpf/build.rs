//! Rebuild the eBPF object when bpf-linker changes (as aya's template does).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
