//! Generates the gRPC code for `proto/outage_relay/v1/*.proto` and a file descriptor set for
//! server reflection. `protoc` comes from `protoc-bin-vendored` unless `PROTOC` is set, so a
//! fresh machine needs nothing but the Rust toolchain.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/outage_relay/v1/events.proto",
        "proto/outage_relay/v1/summaries.proto",
        "proto/outage_relay/v1/alerts.proto",
        "proto/outage_relay/v1/admin.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("outage_relay_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    println!("cargo:rerun-if-env-changed=PROTOC");
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
