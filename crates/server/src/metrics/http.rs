//! The metrics endpoint: HTTP/1.1 over hyper on its own port. `GET /metrics` (and `HEAD`) answers
//! the registry in the Prometheus text format 0.0.4, or in OpenMetrics 1.0 when the scraper's
//! `Accept` asks for `application/openmetrics-text` (as Prometheus does); other methods on
//! `/metrics` get 405 with `Allow`, other paths 404. Parsing, malformed requests (400) and oversized
//! heads (431) are hyper's.
//!
//! One request per connection (no keep-alive: a scrape every few seconds gains nothing from it), at
//! most [`MAX_CONNECTIONS`] at once, each closed after [`CONNECTION_TIMEOUT`] whatever it is doing,
//! and a head must arrive within [`HEADER_READ_TIMEOUT`], so idle or slow clients cannot pile up.
//!
//! With a token configured ([`serve_with_token`]: its SHA-256, as for the gRPC tokens, so the
//! configuration never holds the token itself), every request must carry `Authorization: Bearer
//! <token>`, or gets 401 with `WWW-Authenticate: Bearer` and no figures. The endpoint is plain
//! HTTP, so the token crosses the network in clear: where the binary decides the address (`serve`),
//! it refuses a non-loopback one unless explicitly allowed.
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

use super::Metrics;

/// Most connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a connection may take from accept to close.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read (hyper's minimum); longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The content type of [`Metrics::render_openmetrics`]'s output.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `metrics` on `listener` until `shutdown` resolves; then stops accepting and lets the
/// scrapes under way finish (each is bounded by [`CONNECTION_TIMEOUT`]).
pub async fn serve<F>(listener: TcpListener, metrics: Metrics, shutdown: F)
where
    F: Future<Output = ()>,
{
    serve_with_token(listener, metrics, None, shutdown).await
}

/// As [`serve`]; with `token_sha256`, only requests bearing the token it hashes are answered.
pub async fn serve_with_token<F>(
    listener: TcpListener,
    metrics: Metrics,
    token_sha256: Option<[u8; 32]>,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections; closing");
            continue;
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let res = if authorized(token_sha256.as_ref(), &req) {
                answer(&metrics, &req)
            } else {
                tracing::warn!(%peer, "metrics: request without the metrics token refused");
                unauthorized()
            };
            std::future::ready(Ok::<_, Infallible>(res))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Whether `req` bears the token whose SHA-256 is `token_sha256` (always, when there is none).
fn authorized<B>(token_sha256: Option<&[u8; 32]>, req: &Request<B>) -> bool {
    let Some(want) = token_sha256 else {
        return true;
    };
    req.headers()
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        // Compared by hash, so the comparison's timing says nothing about the token.
        .any(|token| Sha256::digest(token.as_bytes()).as_slice() == want.as_slice())
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut res = plain(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    res.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// The response to one request.
fn answer<B>(metrics: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "");
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    let openmetrics = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (rendered, content_type) = if openmetrics {
        (metrics.render_openmetrics(), CONTENT_TYPE_OPENMETRICS)
    } else {
        (metrics.render(), CONTENT_TYPE_TEXT)
    };
    match rendered {
        Ok(body) => {
            let mut res = Response::new(Full::new(Bytes::from(body)));
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics: encoding failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, accept: Option<&'static str>) -> Request<()> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        req.body(()).expect("request")
    }

    #[test]
    fn routes_and_negotiates() {
        let m = Metrics::new();
        let res = answer(&m, &request(Method::GET, "/metrics", None));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[CONTENT_TYPE], CONTENT_TYPE_TEXT);
        let res = answer(
            &m,
            &request(
                Method::GET,
                "/metrics?x=1",
                Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            ),
        );
        assert_eq!(res.headers()[CONTENT_TYPE], CONTENT_TYPE_OPENMETRICS);
        let res = answer(&m, &request(Method::DELETE, "/metrics", None));
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[ALLOW], "GET, HEAD");
        let res = answer(&m, &request(Method::GET, "/", None));
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_configured_token_is_required() {
        let hash: [u8; 32] = Sha256::digest(b"scrape-secret").into();
        let with = |value: &'static str| {
            Request::builder()
                .uri("/metrics")
                .header(AUTHORIZATION, value)
                .body(())
                .expect("request")
        };
        assert!(authorized(None, &request(Method::GET, "/metrics", None)));
        assert!(!authorized(
            Some(&hash),
            &request(Method::GET, "/metrics", None)
        ));
        assert!(authorized(Some(&hash), &with("Bearer scrape-secret")));
        assert!(authorized(Some(&hash), &with("bearer scrape-secret")));
        assert!(!authorized(Some(&hash), &with("Bearer scrape-secreT")));
        assert!(!authorized(Some(&hash), &with("Basic scrape-secret")));
        assert_eq!(unauthorized().status(), StatusCode::UNAUTHORIZED);
    }
}
