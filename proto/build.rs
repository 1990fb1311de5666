//! Generates the tonic/prost code and a descriptor set for server reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/evenflow/v1/node.proto",
        "proto/evenflow/v1/collector.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // prost's codec with a bound checked before decoding (src/codec.rs).
        .codec_path("crate::codec::BoundedCodec")
        .file_descriptor_set_path(out.join("evenflow_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
