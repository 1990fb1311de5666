//! Generates the lab's gRPC backend (proto/lab.proto).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    println!("cargo:rerun-if-changed=proto/lab.proto");
    tonic_prost_build::configure().compile_protos(&["proto/lab.proto"], &["proto"])?;
    Ok(())
}
