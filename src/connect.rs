//! How every client subcommand reaches a server: `http://` in plaintext, `https://` over TLS with the
//! CA certificate in `CLAIMS_LEDGER_CA_CERT` (a PEM file), and the bearer token in
//! `CLAIMS_LEDGER_TOKEN` sent on every call. Both come from the environment, not flags, so a token
//! never shows in a process list. A token is never sent over `http://` to a host other than
//! loopback unless `CLAIMS_LEDGER_ALLOW_PLAINTEXT=1` says the network is trusted. The connection itself, the token, timeouts and retries are the
//! client library's (`claims_ledger_client`); this module only reads the environment and words the
//! errors as the command line always has.
use anyhow::Context as _;
use claims_ledger_client::{Connection, Error};

/// A connection every generated client can be built on.
pub type Conn = claims_ledger_client::Transport;

/// The library's connection to `server`, configured from the environment.
pub async fn connection(server: &str) -> anyhow::Result<Connection> {
    let mut options = Connection::builder(server)
        // A command runs as long as its job takes (`tail` follows forever, `export` pages through
        // the whole log): no per-call deadline, as before the library existed.
        .request_timeout(None);
    if server.starts_with("https://") {
        let ca_path = std::env::var_os("CLAIMS_LEDGER_CA_CERT").context(
            "an https:// server needs CLAIMS_LEDGER_CA_CERT: the PEM certificate of its CA",
        )?;
        options = options.ca_certificate_file(ca_path);
    }
    // An unset or non-UTF-8 variable means no token, as does a blank one (the library skips it).
    if let Ok(token) = std::env::var("CLAIMS_LEDGER_TOKEN") {
        options = options.bearer_token(token);
    }
    // The same switch as `serve --allow-plaintext`: the network itself is trusted.
    // Read as clap reads `serve`'s flag from the environment: anything but a false-like value is on.
    let allow = std::env::var("CLAIMS_LEDGER_ALLOW_PLAINTEXT").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off" | "n" | "f"
        )
    });
    if allow {
        options = options.allow_plaintext_token(true);
    }
    options.connect().await.map_err(|e| match e {
        Error::InvalidToken(source) => {
            anyhow::Error::new(source).context("CLAIMS_LEDGER_TOKEN is not a valid header value")
        }
        other => anyhow::Error::new(other),
    })
}

/// Connects to `server` as the environment says.
pub async fn connect(server: &str) -> anyhow::Result<Conn> {
    Ok(connection(server).await?.transport())
}

/// A failed call as every client command prints it: the status's `code: message`.
pub fn call_error(e: Error) -> anyhow::Error {
    match e.status() {
        Some(s) => anyhow::anyhow!("{}: {}", s.code(), s.message()),
        None => anyhow::Error::new(e),
    }
}
