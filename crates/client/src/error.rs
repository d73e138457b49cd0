//! The one error type of the calls that talk to a server: a connection that could not be set up,
//! or a call the server (or the network between) answered with a gRPC status. The auditor's
//! verdicts are separate ([`crate::audit::Failed`]): a log that does not verify is not an outage.
use std::path::PathBuf;

use tonic::{Code, Status};

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address is not a URI tonic accepts.
    #[error("bad server address {address:?}")]
    InvalidAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// An `https://` address without a CA certificate to check the server with. The client
    /// trusts no system roots: a ledger is pinned to the CA its operator names.
    #[error("an https:// server needs a CA certificate (ConnectOptions::ca_certificate_pem or ca_certificate_file)")]
    MissingCaCertificate,
    /// The CA certificate file could not be read.
    #[error("reading {}", path.display())]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings were refused (e.g. TLS for an `http://` address).
    #[error("TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    /// The bearer token cannot be sent as an HTTP header value.
    #[error("the bearer token is not a valid header value")]
    InvalidToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
    /// A bearer token would travel in plaintext (`http://`) to a host that is not loopback.
    /// Use `https://`, or [`ConnectOptions::allow_plaintext_token`] where the network is trusted.
    ///
    /// [`ConnectOptions::allow_plaintext_token`]: crate::ConnectOptions::allow_plaintext_token
    #[error("refusing to send a token in plaintext to {address}: use https://, or allow it explicitly where the network is trusted")]
    PlaintextToken { address: String },
    /// The `x-recorded-by` name cannot be sent as an HTTP header value.
    #[error("the recorded-by name {0:?} is not a valid header value")]
    InvalidRecordedBy(String),
    /// The first connection failed (or did not finish within the connect timeout).
    #[error("connecting to {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The call ended with this status: a permanent one at once, a transient one once the retry
    /// policy gave up. The display is the status's `code: message`, and says how many attempts
    /// were made when there was more than one.
    #[error("{}: {}{}", status.code(), status.message(), attempts_note(*attempts))]
    Rpc {
        /// Boxed: a status is large, and most results are not errors.
        status: Box<Status>,
        /// Calls made, retries included.
        attempts: u32,
    },
    /// Only a subscription with a name has a cursor on the server to acknowledge.
    #[error("only a named subscription can acknowledge")]
    NotNamed,
    /// The server answered, but not as the contract says (e.g. a required field missing).
    #[error("the server's answer breaks the contract: {0}")]
    Protocol(String),
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl Error {
    /// The gRPC status, when the server (or the transport) answered a call with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The status code, when there is a status.
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    pub(crate) fn rpc(status: Status, attempts: u32) -> Self {
        Error::Rpc {
            status: Box::new(status),
            attempts,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::rpc(status, 1)
    }
}
