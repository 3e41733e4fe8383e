//! Generates the `stockd.v1` types and services with a vendored protoc
//! (nothing is downloaded at build time). Only the public API: the peer
//! protocol (`stockd/peer/v1`) is compiled by the server crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; tonic-prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Clients get their channels from the caller (stockd-client opens
        // them, with TLS): no `connect` helpers that need tonic's transport.
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("stockd_v1_descriptor.bin"))
        .compile_protos(&["stockd/v1/inventory.proto"], &["."])?;
    println!("cargo:rerun-if-changed=stockd/v1");
    Ok(())
}
