//! How every client subcommand reaches a server: `http://` in plaintext, `https://` over TLS with the
//! CA certificate in `CLAIMS_LEDGER_CA_CERT` (a PEM file), and the bearer token in
//! `CLAIMS_LEDGER_TOKEN` sent on every call. Both come from the environment, not flags, so a token
//! never shows in a process list.
use anyhow::Context as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The token sent with every call, if any.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection every generated client can be built on.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Connects to `server` as the environment says.
pub async fn connect(server: &str) -> anyhow::Result<Conn> {
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .with_context(|| format!("bad server address {server:?}"))?;
    if server.starts_with("https://") {
        let ca_path = std::env::var_os("CLAIMS_LEDGER_CA_CERT").context(
            "an https:// server needs CLAIMS_LEDGER_CA_CERT: the PEM certificate of its CA",
        )?;
        let ca = std::fs::read(&ca_path)
            .with_context(|| format!("reading {}", std::path::Path::new(&ca_path).display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let token = match std::env::var("CLAIMS_LEDGER_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .context("CLAIMS_LEDGER_TOKEN is not a valid header value")?,
        ),
        _ => None,
    };
    Ok(InterceptedService::new(channel, Bearer(token)))
}
