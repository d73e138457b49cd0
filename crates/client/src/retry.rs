//! When a call is tried again, and how long to wait first. A retry re-sends the very same request:
//! for a write that means the same idempotency key, so a write that was applied but whose answer was
//! lost comes back `deduplicated` instead of being written twice. Only statuses that say "not now"
//! are retried (see [`is_transient`]); a refusal on the merits (`INVALID_ARGUMENT`,
//! `FAILED_PRECONDITION`, `ALREADY_EXISTS`, `NOT_FOUND`, ...) would be refused again, so it is
//! returned at once.
use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

use crate::Error;

/// Bounded attempts with exponential backoff and jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Calls made at most, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// The wait before the first retry; each later one doubles it.
    pub initial_backoff: Duration,
    /// No wait is longer than this.
    pub max_backoff: Duration,
    /// Whether `RESOURCE_EXHAUSTED` from the server (overload, a quota) is retried. A message over
    /// a size limit is never retried, whatever this says: it would be too large again.
    pub retry_resource_exhausted: bool,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting about 0.1, 0.2, 0.4 and 0.8 s between them: enough to ride out a server
    /// restart or a dropped connection, short enough that a person at a terminal is not left waiting.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_resource_exhausted: true,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether this policy would retry a call that failed with `status`.
    pub fn should_retry(&self, status: &Status) -> bool {
        match classify(status) {
            Class::Transient => true,
            Class::Exhausted => self.retry_resource_exhausted,
            Class::Permanent => false,
        }
    }

    /// The wait before retry number `retry` (1 for the first): exponential, capped, and with
    /// "equal jitter" (a random point in the upper half) so that clients cut off together do not
    /// come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let full = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let half = full / 2;
        // Without randomness (it cannot fail on supported platforms) the wait is simply `full`.
        let r = getrandom::u64().unwrap_or(u64::MAX);
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let extra = if nanos == 0 { 0 } else { r % (nanos + 1) };
        half + Duration::from_nanos(extra)
    }

    /// Runs `call` until it succeeds, fails with a status this policy does not retry, or has been
    /// made `max_attempts` times. `call` must send the same request each time: that is what makes
    /// a retry safe.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 1u32;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(status) if attempt < self.max_attempts && self.should_retry(&status) => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(Error::rpc(status, attempt)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Transient,
    Exhausted,
    Permanent,
}

/// Whether `status` says "try again later" rather than "no": `UNAVAILABLE`, `DEADLINE_EXCEEDED`, a
/// request timeout of this client, and a call the transport broke off (the connection dropped, so
/// nobody knows whether the server acted on it). `RESOURCE_EXHAUSTED` is transient unless it is a
/// message over a size limit; [`RetryPolicy::retry_resource_exhausted`] decides whether it is
/// retried.
pub fn is_transient(status: &Status) -> bool {
    classify(status) != Class::Permanent
}

fn classify(status: &Status) -> Class {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Class::Transient,
        Code::ResourceExhausted if is_size_limit(status) || is_quota(status) => Class::Permanent,
        Code::ResourceExhausted => Class::Exhausted,
        // tonic reports its own request timeout as CANCELLED with a `TimeoutExpired` source.
        Code::Cancelled if has_source::<tonic::TimeoutExpired>(status) => Class::Transient,
        // A status decoded from the server's trailers has no source; one with a source was made
        // here from a transport failure (connection reset, stream broken off mid-call). That is an
        // outage, not an answer, whatever code the mapping picked.
        Code::Unknown | Code::Internal | Code::Cancelled
            if std::error::Error::source(status).is_some() =>
        {
            Class::Transient
        }
        _ => Class::Permanent,
    }
}

/// tonic's own refusals of a message over the encode or decode limit, and the server's "too large".
fn is_size_limit(status: &Status) -> bool {
    let m = status.message();
    m.contains("too large") || m.contains("size limit")
}

/// A quota refusal (a `QuotaFailure` detail, e.g. too many named subscriptions) lasts until the
/// caller frees something: retrying soon cannot help.
fn is_quota(status: &Status) -> bool {
    use tonic_types::StatusExt as _;
    status.get_details_quota_failure().is_some()
}

fn has_source<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            retry_resource_exhausted: true,
        }
    }

    #[test]
    fn transient_and_permanent_codes() {
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            assert!(is_transient(&Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::NotFound,
            Code::OutOfRange,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Unimplemented,
            Code::Aborted,
            // Sent by the server: an answer, not a broken transport.
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(!is_transient(&Status::new(code, "x")), "{code:?}");
        }
    }

    #[test]
    fn a_quota_refusal_is_not_retried() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let mut details = ErrorDetails::new();
        details.add_quota_failure_violation("subscriptions", "at most 1 per identity");
        let quota = Status::with_error_details(
            Code::ResourceExhausted,
            "too many named subscriptions",
            details,
        );
        assert!(!RetryPolicy::default().should_retry(&quota));
        assert!(!is_transient(&quota));
    }

    #[test]
    fn resource_exhausted_depends_on_why() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(&Status::resource_exhausted("too many requests")));
        assert!(!p.should_retry(&Status::resource_exhausted(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes"
        )));
        let strict = RetryPolicy {
            retry_resource_exhausted: false,
            ..p
        };
        assert!(!strict.should_retry(&Status::resource_exhausted("too many requests")));
    }

    #[test]
    fn a_local_timeout_and_a_broken_transport_are_transient() {
        let timeout = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timeout.code(), Code::Cancelled);
        assert!(is_transient(&timeout));
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_transient(&broken));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetryPolicy::default()
        };
        for (retry, full) in [(1, 100), (2, 200), (3, 350), (40, 350)] {
            let full = Duration::from_millis(full);
            for _ in 0..20 {
                let d = p.backoff(retry);
                assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
            }
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success_with_the_same_request() {
        let calls = AtomicU32::new(0);
        let got = quick(5)
            .run(|| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(Status::unavailable("restarting"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .expect("third attempt succeeds");
        assert_eq!(got, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn never_retries_a_refusal() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::AlreadyExists,
        ] {
            let calls = AtomicU32::new(0);
            let err = quick(5)
                .run(|| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { Err::<(), _>(Status::new(code, "no")) }
                })
                .await
                .expect_err("refused");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?}");
            assert_eq!(err.code(), Some(code));
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let err = quick(3)
            .run(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Status::unavailable("down")) }
            })
            .await
            .expect_err("gives up");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        match &err {
            Error::Rpc { attempts, .. } => assert_eq!(*attempts, 3),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("after 3 attempts"), "{err}");
    }
}
