#!/usr/bin/env bash
# The test command: every crate's unit, integration and doc tests (real servers on ephemeral ports),
# then the independent Python grpcio client suite against the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin claims-ledger
cargo test --workspace
CLAIMS_LEDGER_BIN="$PWD/target/debug/claims-ledger" tests/python/run.sh
