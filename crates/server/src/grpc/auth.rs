//! Bearer-token authentication and roles, as a tower layer in front of every service. Health checks
//! and reflection stay open (probes and tooling need them); every other method names the role it
//! needs. A missing or unknown token gets UNAUTHENTICATED, a token without the role
//! PERMISSION_DENIED, both before the request reaches a service, so nothing is written. The caller's
//! identity travels in the request's extensions; the Ledger records it as "recorded by".
//!
//! Every refusal an operator may want to act on (UNAUTHENTICATED, PERMISSION_DENIED,
//! RESOURCE_EXHAUSTED, whether from this layer or from a service) is logged at WARN with the peer's
//! address, the method, the identity when known, and the code; never with the token.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;

use crate::config::{Identity, Role, Tokens};

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Open,
    Role(Role),
}

/// The role each gRPC method needs.
pub fn need(path: &str) -> Need {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Need::Open,
        "claimsledger.v1.Ledger" => Need::Role(Role::Writer),
        "claimsledger.v1.Admin" => Need::Role(Role::Admin),
        "claimsledger.v1.Audit" if !matches!(method, "GetPublicKey" | "GetCheckpoint") => {
            Need::Role(Role::Auditor)
        }
        // Query, Events (a named subscription's owner or an admin may delete it: the service checks
        // which), Audit's key and checkpoints, and anything unknown (answered UNIMPLEMENTED, but only
        // to a caller who is at least a reader).
        _ => Need::Role(Role::Reader),
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Checks a request's `authorization` header against the tokens and the method's need.
pub fn authorize<'t>(
    tokens: &'t Tokens,
    path: &str,
    authorization: Option<&str>,
) -> Result<Option<&'t Identity>, Status> {
    let Need::Role(role) = need(path) else {
        return Ok(None);
    };
    let token = bearer(authorization).ok_or_else(|| {
        Status::unauthenticated("a bearer token is required (authorization: Bearer <token>)")
    })?;
    let identity = tokens
        .identify(token)
        .ok_or_else(|| Status::unauthenticated("unknown token"))?;
    if !identity.has(role) {
        return Err(Status::permission_denied(format!(
            "{} needs the {role:?} role; {:?} has {:?}",
            path, identity.name, identity.roles
        )));
    }
    Ok(Some(identity))
}

/// The layer: `None` tokens means authentication is off (open mode, loopback only).
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        AuthLayer { tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// Tonic's codec answers a request body that is not valid protobuf with INTERNAL, before any handler
/// runs. That is the client's error, not ours: say INVALID_ARGUMENT. (Trailers-only responses carry
/// the status in their headers, with the message percent-encoded.)
fn undecodable_is_invalid_argument<R>(resp: &mut http::Response<R>) {
    let internal = resp
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"13");
    let decode = resp.headers().get("grpc-message").is_some_and(|m| {
        let m = m.as_bytes();
        m.starts_with(b"failed%20to%20decode%20Protobuf")
            || m.starts_with(b"failed to decode Protobuf")
    });
    if internal && decode {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The address of the peer that sent `req`, when the transport recorded it.
fn peer<B>(req: &http::Request<B>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// Whether a refusal with `code` is worth an operator's attention: someone without a valid token,
/// beyond their rights, or against a limit.
fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::ResourceExhausted
    )
}

/// Logs a refused request. The reason is the status message, which never quotes a token.
fn log_refusal(
    peer: Option<std::net::SocketAddr>,
    method: &str,
    identity: Option<&str>,
    status: &Status,
) {
    tracing::warn!(
        peer = %peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        method,
        identity = identity.unwrap_or("-"),
        code = ?status.code(),
        reason = status.message(),
        "request refused"
    );
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // One span per request, with its method; the status is logged when the response starts
        // (tonic sends error statuses in the headers of a trailers-only response).
        let span = tracing::info_span!(
            "grpc",
            method = %req.uri().path(),
            status = tracing::field::Empty
        );
        let started = std::time::Instant::now();
        let _entered = span.enter();
        let peer = peer(&req);
        // Shares the request's bytes; read only if the call is refused.
        let uri = req.uri().clone();
        let mut identity_name = None;
        if let Some(tokens) = &self.tokens {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match authorize(tokens, req.uri().path(), header) {
                Ok(Some(identity)) => {
                    identity_name = Some(identity.name.clone());
                    req.extensions_mut().insert(identity.clone());
                }
                Ok(None) => {}
                Err(status) => {
                    span.record("status", format!("{:?}", status.code()).as_str());
                    // A token without the role still names who it is.
                    let known = bearer(header)
                        .and_then(|t| tokens.identify(t))
                        .map(|i| i.name.as_str());
                    log_refusal(peer, uri.path(), known, &status);
                    let resp = status.into_http::<R>();
                    return Box::pin(async move { Ok(resp) });
                }
            }
        }
        // The clone that was polled ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(req);
        drop(_entered);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let mut resp = call.await?;
                undecodable_is_invalid_argument(&mut resp);
                // A service's refusal is a trailers-only response: its status is in the headers.
                if let Some(status) = Status::from_header_map(resp.headers()) {
                    if is_refusal(status.code()) {
                        log_refusal(peer, uri.path(), identity_name.as_deref(), &status);
                    }
                }
                let status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK or in trailers".to_string(), |c| {
                        format!("{:?}", tonic::Code::from(c))
                    });
                tracing::Span::current().record("status", status.as_str());
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "response"
                );
                Ok(resp)
            },
            span.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{token_hash, TokenEntry};

    fn tokens() -> Tokens {
        let e = |name: &str, roles: Vec<Role>| TokenEntry {
            name: name.into(),
            sha256: token_hash(&format!("t-{name}")),
            roles,
        };
        Tokens::from_entries(&[e("r", vec![Role::Reader]), e("w", vec![Role::Writer])])
            .expect("valid tokens")
    }

    #[test]
    fn methods_need_the_documented_roles() {
        assert_eq!(need("/grpc.health.v1.Health/Check"), Need::Open);
        assert_eq!(
            need("/claimsledger.v1.Ledger/RegisterParty"),
            Need::Role(Role::Writer)
        );
        assert_eq!(
            need("/claimsledger.v1.Query/GetPositions"),
            Need::Role(Role::Reader)
        );
        assert_eq!(
            need("/claimsledger.v1.Audit/GetCheckpoint"),
            Need::Role(Role::Reader)
        );
        assert_eq!(
            need("/claimsledger.v1.Audit/GetInclusionProof"),
            Need::Role(Role::Auditor)
        );
        // Its owner may delete a subscription too; the service checks ownership.
        assert_eq!(
            need("/claimsledger.v1.Events/DeleteSubscription"),
            Need::Role(Role::Reader)
        );
        assert_eq!(
            need("/claimsledger.v1.Admin/RebuildProjections"),
            Need::Role(Role::Admin)
        );
    }

    #[test]
    fn tokens_and_roles_decide() {
        let t = tokens();
        let write = "/claimsledger.v1.Ledger/RegisterParty";
        let code = |h: Option<&str>| {
            authorize(&t, write, h)
                .map(|i| i.map(|i| i.name.clone()))
                .map_err(|s| s.code())
        };
        assert_eq!(code(None), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(Some("Bearer nope")), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(Some("Basic t-w")), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(Some("Bearer t-r")), Err(tonic::Code::PermissionDenied));
        assert_eq!(code(Some("Bearer t-w")), Ok(Some("w".to_string())));
        assert!(authorize(&t, "/grpc.health.v1.Health/Check", None).is_ok());
    }
}
