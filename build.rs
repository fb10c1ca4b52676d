//! Compiles `proto/sagalog/v1/*.proto` with protox, a protobuf compiler written in Rust, so a
//! fresh machine builds without a `protoc` binary. Emits the Rust types and tonic stubs, and
//! the encoded file descriptor set the server's reflection service hands out.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["proto/sagalog/v1/sagalog.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("sagalog_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
