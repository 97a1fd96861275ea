//! Compiles the .proto files with a protoc shipped inside a crate, so no one installs
//! protoc by hand.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/control.proto");
    println!("cargo:rerun-if-changed=proto/mesh.proto");
    tonic_prost_build::configure()
        .bytes(".relaymesh.mesh.v1")
        .compile_protos(&["proto/control.proto", "proto/mesh.proto"], &["proto"])?;
    Ok(())
}
