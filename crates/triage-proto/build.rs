//! Generates the `triage.v1` messages and service stubs into `OUT_DIR`, plus the encoded file
//! descriptor set that server reflection serves. `protoc` comes from the `protoc-bin-vendored`
//! crate so a fresh machine needs no system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let router = proto_root.join("triage/v1/router.proto");
    println!("cargo:rerun-if-changed={}", router.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("triage_v1_descriptor.bin"))
        .compile_with_config(config, &[router], &[proto_root])?;
    Ok(())
}
