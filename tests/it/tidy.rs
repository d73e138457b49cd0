//! Tidy checks of the architecture: the crate graph, read with `cargo tree`, keeps each layer's
//! invariant (ARCHITECTURE.md states them), and every source file opens with a `//!` paragraph.
//! A forbidden dependency added to any crate makes one of these fail, naming the crate and the
//! dependency.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Package names in `package`'s normal (non-dev, non-build) dependency graph; `depth` 1 gives its
/// direct dependencies only.
fn normal_deps(package: &str, depth: Option<u32>) -> BTreeSet<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args([
        "tree", "--locked", "-e", "normal", "-p", package, "--prefix", "none", "--format", "{p}",
    ]);
    if let Some(d) = depth {
        cmd.args(["--depth", &d.to_string()]);
    }
    let out = cmd.output().expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let deps: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != package)
        .map(str::to_string)
        .collect();
    assert!(!deps.is_empty(), "cargo tree -p {package} listed nothing");
    deps
}

/// Fails naming every dependency of `package` that matches a forbidden name or prefix.
fn assert_none_of(package: &str, depth: Option<u32>, forbidden: &[&str]) {
    let deps = normal_deps(package, depth);
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| {
            forbidden.iter().any(|f| match f.strip_suffix('*') {
                Some(prefix) => d.starts_with(prefix),
                None => d.as_str() == *f,
            })
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{package} must not depend on {bad:?} (see ARCHITECTURE.md)"
    );
}

const RUNTIME_AND_WIRE: &[&str] = &["tokio", "sled", "tonic*", "prost*", "hyper*", "http"];

#[test]
fn the_core_is_pure() {
    assert_none_of(
        "claims-ledger-core",
        None,
        &[RUNTIME_AND_WIRE, &["claims-ledger-*"]].concat(),
    );
}

#[test]
fn the_domain_is_pure_and_knows_only_the_core() {
    assert_none_of(
        "claims-ledger-domain",
        None,
        &[
            RUNTIME_AND_WIRE,
            &[
                "claims-ledger-log",
                "claims-ledger-proto",
                "claims-ledger-server",
                "claims-ledger-client",
            ],
        ]
        .concat(),
    );
}

#[test]
fn the_log_knows_no_wire_no_domain_and_no_metrics_library() {
    assert_none_of(
        "claims-ledger-log",
        None,
        &[
            "tonic*",
            "prost*",
            "hyper*",
            "claims-ledger-domain",
            "claims-ledger-proto",
            "claims-ledger-server",
            "claims-ledger-client",
            "metrics*",
            "prometheus*",
        ],
    );
}

#[test]
fn the_contract_knows_no_storage_and_no_layer_above_it() {
    assert_none_of(
        "claims-ledger-proto",
        None,
        &[
            "sled",
            "claims-ledger-domain",
            "claims-ledger-log",
            "claims-ledger-server",
        ],
    );
}

#[test]
fn the_client_library_needs_no_server_and_no_storage() {
    assert_none_of(
        "claims-ledger-client",
        None,
        &[
            "sled",
            "claims-ledger-log",
            "claims-ledger-server",
            "claims-ledger-domain",
            "claims-ledger",
        ],
    );
}

#[test]
fn the_product_binary_does_not_build_the_benchmarks() {
    assert_none_of("claims-ledger", None, &["claims-ledger-bench"]);
    assert_none_of("claims-ledger-server", None, &["claims-ledger-bench"]);
}

#[test]
fn the_product_binary_has_no_bench_subcommands() {
    let out = Command::new(crate::common::bin())
        .arg("--help")
        .output()
        .expect("run claims-ledger --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    assert!(help.contains("serve"), "the help lists subcommands: {help}");
    assert!(
        !help.to_lowercase().contains("bench"),
        "a bench subcommand is in the product binary: {help}"
    );
}

#[test]
fn the_command_line_names_no_tonic_or_prost_directly() {
    // The CLI reaches servers through the client library; only tests may use tonic themselves.
    assert_none_of(
        "claims-ledger",
        Some(1),
        &["tonic*", "prost*", "claims-ledger-proto"],
    );
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).expect("read");
        for word in ["tonic::", "prost::", "prost_types::"] {
            assert!(
                !text.contains(word),
                "{} names {word}; go through claims_ledger_client",
                file.display()
            );
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let mut dirs = vec![root().join("src")];
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        dirs.push(entry.expect("entry").path().join("src"));
    }
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in dirs.iter().flat_map(|d| rust_files(d)) {
        seen += 1;
        let text = std::fs::read_to_string(&file).expect("read");
        if !text.trim_start().starts_with("//!") {
            missing.push(file.strip_prefix(root()).unwrap_or(&file).to_path_buf());
        }
    }
    assert!(seen > 30, "only {seen} source files found");
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:?}"
    );
}
