//! The storage ceiling of `bench`: the baseline's raw writes served behind gRPC. A bare tonic server
//! answers `Ledger/RecordStatement` by handing the baseline's record bytes to one group-commit thread
//! (drain what is queued, write them into the zero-filled file, `fdatasync`, answer), with no
//! validation, no hash chain, no projections and no server layers. Ours does all of that on the same path, so with
//! one event per request ours cannot beat this rate on this machine; it bounds what any change to
//! the ledger itself can win.
use std::convert::Infallible;
use std::path::Path;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::raw::RawSegment;
use claims_ledger_proto as pb;

/// Longest a group waits to fill up, so the last requests of a run are not held.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// How often a filling group looks for more requests.
const POLL: Duration = Duration::from_micros(20);

type Reply = oneshot::Sender<Result<(), String>>;

/// `claimsledger.v1.Ledger` with only `RecordStatement`, which stores the fixed record.
#[derive(Clone)]
struct RawLedger {
    queue: mpsc::Sender<Reply>,
}

impl tonic::server::NamedService for RawLedger {
    const NAME: &'static str = "claimsledger.v1.Ledger";
}

impl tonic::server::UnaryService<pb::RecordStatementRequest> for RawLedger {
    type Response = pb::RecordStatementResponse;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<tonic::Response<pb::RecordStatementResponse>, tonic::Status>,
                > + Send,
        >,
    >;

    fn call(&mut self, _: tonic::Request<pb::RecordStatementRequest>) -> Self::Future {
        let queue = self.queue.clone();
        Box::pin(async move {
            let (reply, done) = oneshot::channel();
            queue
                .send(reply)
                .await
                .map_err(|_| tonic::Status::unavailable("the committer stopped"))?;
            match done.await {
                Ok(Ok(())) => Ok(tonic::Response::new(pb::RecordStatementResponse::default())),
                Ok(Err(e)) => Err(tonic::Status::internal(e)),
                Err(_) => Err(tonic::Status::unavailable("the committer stopped")),
            }
        })
    }
}

impl<B> tower::Service<http::Request<B>> for RawLedger
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            if req.uri().path() != "/claimsledger.v1.Ledger/RecordStatement" {
                return Ok(tonic::Status::unimplemented("only RecordStatement").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(svc, req).await)
        })
    }
}

/// The group-commit loop: the baseline's writes, one `flush` + `fdatasync` per group. With every
/// writer waiting on the group in flight, the best group is all of them, as in the baseline, so it
/// waits (a bounded time) until `group` requests are queued. Returns the events stored and the
/// syncs made.
fn commit(
    dir: &Path,
    record: Vec<u8>,
    group: usize,
    mut queue: mpsc::Receiver<Reply>,
) -> anyhow::Result<(u64, u64)> {
    let mut segment = RawSegment::create(dir)?;
    let (mut pos, mut syncs) = (0u64, 0u64);
    while let Some(first) = queue.blocking_recv() {
        let mut replies = vec![first];
        let deadline = Instant::now() + MAX_WAIT;
        while replies.len() < group {
            match queue.try_recv() {
                Ok(r) => replies.push(r),
                Err(_) if Instant::now() < deadline => std::thread::sleep(POLL),
                Err(_) => break,
            }
        }
        let outcome = segment
            .write_group(replies.len(), &record)
            .map_err(|e| e.to_string());
        pos += replies.len() as u64;
        syncs += 1;
        for r in replies {
            let _ = r.send(outcome.clone());
        }
    }
    Ok((pos, syncs))
}

/// Events per second that `writers` tasks storing `record` one event per `RecordStatement` call
/// reach through the raw-write server, over the given connection count; and events per sync.
pub(crate) async fn measure_raw_rpcs(
    dir: &Path,
    writers: usize,
    connections: usize,
    record: &[u8],
    request: pb::RecordStatementRequest,
    seconds: f64,
) -> anyhow::Result<(f64, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    let (queue, rx) = mpsc::channel(writers.max(1));
    let (dir_owned, record) = (dir.to_path_buf(), record.to_vec());
    let committer = std::thread::Builder::new()
        .name("ceiling-commit".into())
        .spawn(move || commit(&dir_owned, record, writers, rx))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RawLedger { queue })
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(addr.clone())?
                .connect()
                .await?,
        );
    }
    let (calls, rate) = crate::append::closed_loop(
        &channels,
        writers,
        seconds,
        pb::ledger_client::LedgerClient::new,
        move |mut c| {
            let request = request.clone();
            async move { c.record_statement(request).await.map(drop) }
        },
    )
    .await?;
    drop(channels);
    let _ = stop.send(());
    server.await??;
    let (stored, syncs) = tokio::task::spawn_blocking(move || committer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the ceiling's committer panicked"))??;
    anyhow::ensure!(
        stored == calls,
        "the ceiling stored {stored} events for {calls} answered calls"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok((rate, stored as f64 / syncs.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answered call is stored (the function refuses to report a rate otherwise), and no group
    /// holds more requests than there are writers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ceiling_stores_one_record_per_answered_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = pb::RecordStatementRequest::default();
        let (rate, per_sync) =
            measure_raw_rpcs(&dir.path().join("c"), 4, 2, b"record", request, 0.3)
                .await
                .expect("measure");
        assert!(rate > 0.0, "{rate}");
        assert!((1.0..=4.0).contains(&per_sync), "{per_sync}");
    }

    /// Methods other than `RecordStatement` are refused, not silently answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_methods_are_unimplemented() {
        let (queue, _rx) = mpsc::channel(1);
        let mut svc = RawLedger { queue };
        let req = http::Request::builder()
            .uri("/claimsledger.v1.Ledger/SubmitBatch")
            .body(tonic::body::Body::empty())
            .expect("request");
        let resp = tower::Service::call(&mut svc, req)
            .await
            .expect("infallible");
        let status = tonic::Status::from_header_map(resp.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
}
