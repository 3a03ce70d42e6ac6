//! Builds the dasmesh.v1 protobufs with protoc (Debian's protobuf-compiler, installed by
//! scripts/setup.sh) into tonic clients and servers, plus a descriptor set for gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/dasmesh/v1/common.proto",
        "proto/dasmesh/v1/registry.proto",
        "proto/dasmesh/v1/pool.proto",
        "proto/dasmesh/v1/volumes.proto",
        "proto/dasmesh/v1/leases.proto",
        "proto/dasmesh/v1/usage.proto",
        "proto/dasmesh/v1/control.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("dasmesh_v1_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
