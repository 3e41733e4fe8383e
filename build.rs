//! Generates the gRPC code for the public API and the peer protocol, with a
//! vendored protoc (nothing is downloaded at build time).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("stockd_descriptor.bin"))
        .compile_protos(&["proto/stockd/v1/inventory.proto", "proto/stockd/v1/peer.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
