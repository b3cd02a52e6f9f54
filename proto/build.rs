//! Generates the tonic/prost code with the protoc binary vendored by
//! `protoc-bin-vendored`, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "plexus/v1/common.proto",
        "plexus/v1/query.proto",
        "plexus/v1/stats.proto",
        "plexus/v1/node_link.proto",
        "plexus/v1/research.proto",
        "plexus/v1/admin.proto",
        "plexus/v1/audit.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("plexus_descriptor.bin"))
        .compile_protos(&files, &["."])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The subset of ONNX's own schema that model export writes.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&["onnx/onnx.proto"], &["onnx"])?;
    println!("cargo:rerun-if-changed=onnx/onnx.proto");
    Ok(())
}
