//! Compiles weft's own protos with protox (pure Rust): the default build needs no system
//! `protoc`. The Envoy types come pre-generated from `envoy-types`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["weft/ca/v1/ca.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
