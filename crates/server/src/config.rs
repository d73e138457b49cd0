//! Server configuration from a TOML file, and the bearer tokens with their roles. Precedence is
//! flags, then environment variables, then this file, then built-in defaults; the CLI does the
//! merging, this module only reads and checks the file. Tokens are stored as SHA-256 hashes only, so
//! the file (or Kubernetes Secret) never holds a usable credential.
//!
//! ```toml
//! data_dir = "/var/lib/claims-ledger"
//! listen = "0.0.0.0:50051"
//! metrics_listen = "127.0.0.1:9090"
//! durability = "fsync"
//! signing_key = "/etc/claims-ledger/signing.key"
//! log_format = "json"
//! tokens_file = "/etc/claims-ledger/tokens.toml"   # or [[tokens]] entries here
//! allow_plaintext = false          # tokens over plaintext off loopback (behind a TLS proxy only)
//! metrics_allow_remote = false     # metrics on a non-loopback address
//! metrics_token_sha256 = "<hex SHA-256 of the metrics scraper's token>"
//!
//! [connections]
//! max = 1024
//! handshake_timeout_secs = 10
//! idle_timeout_secs = 300
//! max_streams = 256
//! max_streams_per_peer = 2048
//!
//! [tls]
//! cert = "/etc/claims-ledger/tls/tls.crt"
//! key = "/etc/claims-ledger/tls/tls.key"
//!
//! [[tokens]]
//! name = "desk-editor"          # the identity recorded as "recorded by"
//! sha256 = "<hex SHA-256 of the token>"
//! roles = ["writer"]
//!
//! [subscriptions]               # bounds on named subscriptions (these are the defaults)
//! max_per_identity = 100        # without tokens, the one anonymous caller's
//! max_total = 10000
//! ```
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use claims_ledger_log::CursorLimits;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A role a token grants. Every role includes `reader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Query, Events (reading and following the log), Audit's key and checkpoints.
    Reader,
    /// Reader, plus every Ledger write.
    Writer,
    /// Reader, plus Merkle proofs.
    Auditor,
    /// Reader, plus projection rebuilds, and acting on anyone's named subscriptions.
    Admin,
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One token as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The identity: recorded as "recorded by" in every event this token writes.
    pub name: String,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    pub roles: Vec<Role>,
}

/// The file as written; every field optional so that flags and environment can fill the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub durability: Option<String>,
    pub signing_key: Option<PathBuf>,
    pub log_format: Option<String>,
    /// Listen beyond loopback without tokens (for a network that authenticates by other means).
    pub allow_unauthenticated: Option<bool>,
    pub tls: Option<TlsFiles>,
    pub tokens_file: Option<PathBuf>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    pub subscriptions: Option<SubscriptionLimits>,
    // Exposure and connection limits (README, "Security").
    /// Serve tokens over plaintext on a non-loopback address (for a network that is trusted, such as
    /// behind a TLS-terminating proxy). Refused otherwise.
    pub allow_plaintext: Option<bool>,
    /// Serve metrics on a non-loopback address. Refused otherwise.
    pub metrics_allow_remote: Option<bool>,
    /// Lowercase hex SHA-256 of the bearer token `GET /metrics` requires; none: no token.
    pub metrics_token_sha256: Option<String>,
    /// Connection cap, timeouts and concurrent calls; every key optional.
    pub connections: Option<ConnectionsConfig>,
}

/// `[subscriptions]`: how many named subscriptions may exist, so that no caller can fill the disk
/// (and the metrics) with cursors. A first acknowledgement past either is RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionLimits {
    /// Named subscriptions one identity may own (without tokens, the one anonymous caller).
    pub max_per_identity: Option<usize>,
    /// Named subscriptions in all.
    pub max_total: Option<usize>,
}

impl FileConfig {
    /// The limits on subscriber cursors the log enforces: the file's, else the defaults.
    pub fn cursor_limits(&self) -> CursorLimits {
        let default = CursorLimits::default();
        let file = self.subscriptions.unwrap_or_default();
        CursorLimits {
            per_owner: file.max_per_identity.unwrap_or(default.per_owner),
            total: file.max_total.unwrap_or(default.total),
        }
    }
}

/// `[connections]`: limits on what a client may hold open (defaults in
/// `grpc::server::ConnectionLimits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Open connections at most.
    pub max: Option<usize>,
    /// Seconds for a new connection's first bytes and TLS handshake.
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a connection may stay open with no call in progress.
    pub idle_timeout_secs: Option<u64>,
    /// Concurrent calls per connection (further ones wait for a free stream).
    pub max_streams: Option<u32>,
    /// Concurrent calls per peer IP address (further ones get RESOURCE_EXHAUSTED); 0: no limit.
    pub max_streams_per_peer: Option<usize>,
}

/// Parses a lowercase or uppercase hex SHA-256 (64 digits).
pub fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

impl FileConfig {
    /// Reads a config file and the tokens file it names.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let mut c: FileConfig = parse(path, &read(path)?)?;
        if let Some(tf) = c.tokens_file.clone() {
            // Relative to the config file, as a mounted Secret usually sits beside it.
            let tf = path.parent().map_or(tf.clone(), |d| d.join(&tf));
            let extra: TokensFile = parse(&tf, &read(&tf)?)?;
            c.tokens.extend(extra.tokens);
        }
        Tokens::from_entries(&c.tokens).map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        let limits = c.cursor_limits();
        if limits.per_owner == 0 || limits.total == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "subscriptions: max_per_identity and max_total must be at least 1".into(),
            });
        }
        if let Some(h) = &c.metrics_token_sha256 {
            if parse_sha256(h).is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    reason: "metrics_token_sha256 must be 64 hex digits".into(),
                });
            }
        }
        Ok(c)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<Role>,
}

impl Identity {
    /// Whether this identity may act as `role` (every role includes reader).
    pub fn has(&self, role: Role) -> bool {
        role == Role::Reader && !self.roles.is_empty() || self.roles.contains(&role)
    }
}

/// Token hashes → identities.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Identity>,
}

/// The SHA-256 of a token, as configured (lowercase hex).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// Checks and indexes entries: hashes must be 64 hex digits and unique, names non-empty, roles
    /// non-empty.
    pub fn from_entries(entries: &[TokenEntry]) -> Result<Tokens, String> {
        let mut by_hash = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let bytes = hex::decode(e.sha256.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| format!("tokens[{i}] ({}): sha256 must be 64 hex digits", e.name))?;
            if e.name.trim().is_empty() || e.name.len() > 128 {
                return Err(format!("tokens[{i}]: name must be 1..128 characters"));
            }
            if e.roles.is_empty() {
                return Err(format!("tokens[{i}] ({}): at least one role", e.name));
            }
            let id = Identity {
                name: e.name.clone(),
                roles: e.roles.clone(),
            };
            if by_hash.insert(bytes, id).is_some() {
                return Err(format!("tokens[{i}] ({}): the same token twice", e.name));
            }
        }
        Ok(Tokens { by_hash })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The identity of a presented token, compared by hash.
    pub fn identify(&self, token: &str) -> Option<&Identity> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_reader_and_nothing_else() {
        let w = Identity {
            name: "w".into(),
            roles: vec![Role::Writer],
        };
        assert!(w.has(Role::Reader) && w.has(Role::Writer));
        assert!(!w.has(Role::Admin) && !w.has(Role::Auditor));
    }

    #[test]
    fn tokens_are_found_by_hash_and_bad_entries_refused() {
        let entry = |name: &str, token: &str| TokenEntry {
            name: name.into(),
            sha256: token_hash(token),
            roles: vec![Role::Reader],
        };
        let t = Tokens::from_entries(&[entry("a", "secret-a")]).expect("valid");
        assert_eq!(t.identify("secret-a").map(|i| i.name.as_str()), Some("a"));
        assert!(t.identify("secret-b").is_none());
        assert!(Tokens::from_entries(&[entry("a", "x"), entry("b", "x")]).is_err());
        let mut bad = entry("a", "x");
        bad.sha256 = "abc".into();
        assert!(Tokens::from_entries(&[bad]).is_err());
    }

    #[test]
    fn subscription_limits_come_from_the_file_or_the_defaults() {
        let c: FileConfig =
            toml::from_str("[subscriptions]\nmax_per_identity = 3\n").expect("parse");
        assert_eq!(
            c.cursor_limits(),
            CursorLimits {
                per_owner: 3,
                total: CursorLimits::default().total
            }
        );
        assert_eq!(
            FileConfig::default().cursor_limits(),
            CursorLimits::default()
        );
        let r: Result<FileConfig, _> = toml::from_str("[subscriptions]\nmax_per_owner = 3\n");
        assert!(r.is_err(), "unknown keys are refused here too");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[subscriptions]\nmax_total = 0\n").expect("write");
        assert!(matches!(
            FileConfig::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<FileConfig, _> =
            toml::from_str("listen = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(r.is_err());
    }
}
