//! Compiles `proto/` in pure Rust (protox), so no system `protoc` is needed, and writes the descriptor
//! set to `OUT_DIR` for server reflection.
use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/claimsledger/v1/types.proto",
        "proto/claimsledger/v1/ledger.proto",
        "proto/claimsledger/v1/events.proto",
        "proto/claimsledger/v1/query.proto",
        "proto/claimsledger/v1/admin.proto",
        "proto/claimsledger/v1/audit.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("claimsledger_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
