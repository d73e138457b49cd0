//! Compiles the repository's `proto/` in pure Rust (protox), so no system `protoc` is needed, and
//! writes the descriptor set to `OUT_DIR` for server reflection.
use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = [
        "claimsledger/v1/types.proto",
        "claimsledger/v1/ledger.proto",
        "claimsledger/v1/events.proto",
        "claimsledger/v1/query.proto",
        "claimsledger/v1/admin.proto",
        "claimsledger/v1/audit.proto",
    ]
    .map(|f| root.join(f));
    let fds = protox::compile(files, [&root])?;
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
