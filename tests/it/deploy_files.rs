//! The deployment files are checked as far as this machine can: the example configuration parses
//! with the server's own parser (tokens included), every path the Dockerfile copies exists, and the
//! systemd unit runs the real binary's `serve`. (YAML is parsed in `tests/python/test_deploy.py`.)
use std::path::Path;

use claims_ledger_server::config::{token_hash, FileConfig, Role};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_example_config_and_tokens_parse_with_the_servers_parser() {
    // Laid out as docker-compose.yml mounts them: the tokens file beside the config as tokens.toml.
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("config.example.toml", "config.toml"),
        ("tokens.example.toml", "tokens.toml"),
    ] {
        std::fs::copy(repo().join("deploy").join(from), dir.path().join(to)).expect("copy");
    }
    let c = FileConfig::load(&dir.path().join("config.toml")).expect("example config");
    assert_eq!(c.listen.map(|a| a.port()), Some(50051));
    assert_eq!(c.durability.as_deref(), Some("fsync"));
    let roles: Vec<Role> = c.tokens.iter().flat_map(|t| t.roles.clone()).collect();
    for r in [Role::Reader, Role::Writer, Role::Auditor, Role::Admin] {
        assert!(roles.contains(&r), "the example covers {r:?}");
    }
    let writer = c
        .tokens
        .iter()
        .find(|t| t.roles == vec![Role::Writer])
        .expect("a writer");
    assert_eq!(
        writer.sha256,
        token_hash("example-writer-token"),
        "the documented placeholder"
    );
}

/// The example configuration passes the server's own exposure checks without any override: tokens
/// beyond loopback come with TLS, metrics stay on loopback; and compose publishes metrics on the
/// host's loopback only.
#[test]
fn the_example_config_is_safe_as_shipped() {
    use claims_ledger_cli::serve::{check_metrics_exposure, check_plaintext};
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("config.example.toml", "config.toml"),
        ("tokens.example.toml", "tokens.toml"),
    ] {
        std::fs::copy(repo().join("deploy").join(from), dir.path().join(to)).expect("copy");
    }
    let c = FileConfig::load(&dir.path().join("config.toml")).expect("example config");
    assert_eq!(
        c.allow_plaintext, None,
        "no plaintext override in the example"
    );
    assert_eq!(
        c.metrics_allow_remote, None,
        "no metrics override in the example"
    );
    let listen = c.listen.expect("listen");
    check_plaintext(listen, !c.tokens.is_empty(), c.tls.is_some(), false)
        .expect("tokens beyond loopback come with TLS");
    check_metrics_exposure(c.metrics_listen.expect("metrics_listen"), false)
        .expect("metrics on loopback");
    let compose =
        std::fs::read_to_string(repo().join("deploy/docker-compose.yml")).expect("compose");
    assert!(
        compose.contains("\"127.0.0.1:9090:9090\""),
        "compose publishes metrics on loopback only"
    );
}

#[test]
fn the_dockerfile_copies_only_what_exists_and_runs_the_binary() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("Dockerfile");
    let mut copies = 0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY source {src} exists");
            copies += 1;
        }
    }
    assert!(copies >= 5, "{copies} COPY sources");
    assert!(text.contains("--bin claims-ledger"));
    assert!(text.contains("USER ledger"), "runs as non-root");
    let unit = std::fs::read_to_string(repo().join("deploy/claims-ledger.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/claims-ledger serve"));
}
