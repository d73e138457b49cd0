#!/usr/bin/env bash
# The test command: Rust unit and integration tests (real servers on ephemeral ports), then the
# independent Python grpcio client suite against the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin claims-ledger
cargo test --all-targets
CLAIMS_LEDGER_BIN="$PWD/target/debug/claims-ledger" tests/python/run.sh
