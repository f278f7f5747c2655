//! The gRPC port's resource limits: open streams per connection and per principal (and, for
//! the streams that need no token, health `Watch` and reflection, per connection and in all),
//! `Publish` rate per principal, requests in flight (load shedding) and the time a call may take
//! to start answering. How many connections there are is [`super::connections`]' business.
//!
//! Owns: the counting and the [`Shed`] tower layer. Does not own: which status a limit becomes
//! (that is [`super::error`]) or who the principal is (that is [`crate::auth`]).
//!
//! Every limit refuses at once with `RESOURCE_EXHAUSTED` naming the limit, instead of queueing:
//! a queue in front of a saturated server only turns overload into latency for everyone, and a
//! client told "no" can back off or go to another node.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body};

use super::connections::Connection;
use crate::telemetry::Metrics;

/// A limit that refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// The connection has `limit` streams open already.
    #[error(
        "this connection has {limit} streams open, the most allowed \
         (--max-streams-per-connection); close one or open another connection"
    )]
    StreamsPerConnection {
        /// `--max-streams-per-connection`.
        limit: usize,
    },
    /// The principal has `limit` streams open already, on any connections.
    #[error(
        "this token's subject has {limit} streams open, the most allowed \
         (--max-streams-per-principal)"
    )]
    StreamsPerPrincipal {
        /// `--max-streams-per-principal`.
        limit: usize,
    },
    /// The server has `limit` streams open that need no token (health `Watch`, reflection).
    #[error(
        "{limit} streams without a token (health watch, reflection) are open on this server, \
         the most allowed (--max-unauthenticated-streams); use health Check, or retry later"
    )]
    UnauthenticatedStreams {
        /// `--max-unauthenticated-streams`.
        limit: usize,
    },
    /// The principal publishes faster than allowed.
    #[error(
        "publish rate above {per_second} events/s for this token's subject \
         (--max-publish-rate); retry with backoff"
    )]
    PublishRate {
        /// `--max-publish-rate`.
        per_second: u32,
    },
    /// The principal marks or changes preferences faster than allowed.
    #[error(
        "inbox calls (marks, preferences) above {per_second}/s for this token's subject \
         (--max-inbox-rate); retry with backoff"
    )]
    InboxRate {
        /// `--max-inbox-rate`.
        per_second: u32,
    },
    /// The server has `limit` requests in flight already.
    #[error(
        "server overloaded: {limit} requests in flight (--max-concurrent-requests); retry with \
         backoff"
    )]
    Overloaded {
        /// `--max-concurrent-requests`.
        limit: usize,
    },
    /// A request message far above `--max-event-bytes`, refused before it was read.
    #[error("request message too large (--max-event-bytes)")]
    MessageTooLarge,
    /// The call did not start answering within `after`.
    #[error(
        "not answered within {after:?} (--request-timeout): the server is saturated or the \
         request arrived too slowly; retry with backoff"
    )]
    Timeout {
        /// `--request-timeout`.
        after: Duration,
    },
}

impl LimitError {
    /// A short code for the `notify_rejected_total{reason}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::StreamsPerConnection { .. } => "limit_streams_per_connection",
            Self::StreamsPerPrincipal { .. } => "limit_streams_per_principal",
            Self::UnauthenticatedStreams { .. } => "limit_unauthenticated_streams",
            Self::PublishRate { .. } => "limit_publish_rate",
            Self::InboxRate { .. } => "limit_inbox_rate",
            Self::Overloaded { .. } => "limit_concurrent_requests",
            Self::MessageTooLarge => "too_large",
            Self::Timeout { .. } => "limit_request_timeout",
        }
    }
}

/// Counts open streams by connection and by principal, and the streams that need no token.
#[derive(Debug)]
pub struct StreamCounter {
    per_connection: usize,
    per_principal: usize,
    unauthenticated: usize,
    counts: Mutex<Counts>,
}

/// Only keys with at least one open stream are present, so the maps are as large as the open
/// streams and no larger.
#[derive(Debug, Default)]
struct Counts {
    connections: HashMap<SocketAddr, usize>,
    principals: HashMap<Box<str>, usize>,
    unauthenticated: usize,
}

impl StreamCounter {
    /// A counter allowing `per_connection` open streams on a connection, `per_principal` for
    /// one principal, and `unauthenticated` streams without a token on the whole server.
    pub fn new(per_connection: usize, per_principal: usize, unauthenticated: usize) -> Arc<Self> {
        Arc::new(Self {
            per_connection,
            per_principal,
            unauthenticated,
            counts: Mutex::default(),
        })
    }

    /// Takes a place for one more stream that needs no token (health `Watch`, reflection) on
    /// `connection`: it counts against the connection's limit like any stream, and against the
    /// server-wide limit for such streams, since no principal bounds them.
    pub fn open_unauthenticated(
        self: &Arc<Self>,
        connection: Option<SocketAddr>,
    ) -> Result<StreamPermit, LimitError> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_connection(&counts, connection)?;
        if counts.unauthenticated >= self.unauthenticated {
            return Err(LimitError::UnauthenticatedStreams {
                limit: self.unauthenticated,
            });
        }
        if let Some(addr) = connection {
            *counts.connections.entry(addr).or_default() += 1;
        }
        counts.unauthenticated += 1;
        Ok(StreamPermit {
            counter: Arc::clone(self),
            connection,
            principal: None,
        })
    }

    fn check_connection(
        &self,
        counts: &Counts,
        connection: Option<SocketAddr>,
    ) -> Result<(), LimitError> {
        match connection {
            Some(addr)
                if counts.connections.get(&addr).copied().unwrap_or(0) >= self.per_connection =>
            {
                Err(LimitError::StreamsPerConnection {
                    limit: self.per_connection,
                })
            }
            _ => Ok(()),
        }
    }

    /// Takes a place for one more stream of `principal` on `connection` (unknown for
    /// transports that do not say), or says which limit is full. The place is given back when
    /// the permit is dropped, that is when the stream ends however it ends.
    pub fn open(
        self: &Arc<Self>,
        connection: Option<SocketAddr>,
        principal: &str,
    ) -> Result<StreamPermit, LimitError> {
        // A poisoned lock means a panic while counting, which cannot leave the maps
        // inconsistent (every update is a single insert or remove): go on.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_connection(&counts, connection)?;
        if counts.principals.get(principal).copied().unwrap_or(0) >= self.per_principal {
            return Err(LimitError::StreamsPerPrincipal {
                limit: self.per_principal,
            });
        }
        if let Some(addr) = connection {
            *counts.connections.entry(addr).or_default() += 1;
        }
        *counts.principals.entry(principal.into()).or_default() += 1;
        Ok(StreamPermit {
            counter: Arc::clone(self),
            connection,
            principal: Some(principal.into()),
        })
    }
}

/// One open stream's place in the [`StreamCounter`]; dropping it frees the place.
#[derive(Debug)]
pub struct StreamPermit {
    counter: Arc<StreamCounter>,
    connection: Option<SocketAddr>,
    /// `None` for a stream that needs no token.
    principal: Option<Box<str>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self
            .counter
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = self.connection {
            decrement(&mut counts.connections, &addr);
        }
        match &self.principal {
            Some(principal) => decrement(&mut counts.principals, &**principal),
            None => counts.unauthenticated -= 1,
        }
    }
}

fn decrement<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// A token bucket per principal: `rate` calls per second, bursts of up to `rate` calls.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    /// The error over the rate names this limit.
    exceeded: fn(u32) -> LimitError,
    buckets: Mutex<HashMap<Box<str>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Above this many buckets, full ones (principals idle for a second or more) are dropped: a
/// full bucket is what a new principal gets anyway, so forgetting it changes nothing. Only
/// principals allowed to publish get buckets, so the map stays small in practice.
const PRUNE_ABOVE: usize = 4096;

impl RateLimiter {
    /// `rate` calls per second per principal; 0 allows everything.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            exceeded: |per_second| LimitError::PublishRate { per_second },
            buckets: Mutex::default(),
        }
    }

    /// `rate` inbox calls (marks, preferences) per second per principal; 0 allows everything.
    pub fn for_inbox(rate: u32) -> Self {
        Self {
            exceeded: |per_second| LimitError::InboxRate { per_second },
            ..Self::new(rate)
        }
    }

    /// Takes one call from `principal`'s bucket, or says the rate is exceeded.
    pub fn check(&self, principal: &str) -> Result<(), LimitError> {
        self.check_at(principal, Instant::now())
    }

    fn check_at(&self, principal: &str, now: Instant) -> Result<(), LimitError> {
        if self.rate == 0 {
            return Ok(());
        }
        let rate = f64::from(self.rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| refilled(b, rate, now) < rate);
        }
        let bucket = buckets.entry(principal.into()).or_insert(Bucket {
            tokens: rate,
            updated: now,
        });
        bucket.tokens = refilled(bucket, rate, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((self.exceeded)(self.rate))
        }
    }
}

fn refilled(bucket: &Bucket, rate: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(rate)
}

/// Tower layer: at most `limit` requests being answered at once, each given `timeout` to start
/// its response; over either, `RESOURCE_EXHAUSTED` at once. Health checks pass untouched so
/// probes see the server's real state, not its load. The streams that need no token (health
/// `Watch`, reflection) take a place under the stream limits here, held until the stream ends.
#[derive(Clone)]
pub struct Shed {
    permits: Arc<Semaphore>,
    limit: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    streams: Arc<StreamCounter>,
}

impl Shed {
    /// The layer for `--max-concurrent-requests` and `--request-timeout`; `streams` counts the
    /// streams that need no token.
    pub fn new(
        limit: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
        streams: Arc<StreamCounter>,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            limit,
            timeout,
            metrics,
            streams,
        }
    }
}

impl<S> tower::Layer<S> for Shed {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            shed: self.clone(),
        }
    }
}

impl std::fmt::Debug for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shed")
            .field("limit", &self.limit)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The service of the [`Shed`] layer.
#[derive(Clone)]
pub struct ShedService<S> {
    inner: S,
    shed: Shed,
}

const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// The streaming methods that need no token: each open one holds a place under the stream
/// limits (30,000 health watches once took 200 MB, from one client).
const UNAUTHENTICATED_STREAMS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for ShedService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        // A stream that needs no token holds a place under the stream limits, kept by its
        // response body: freed when the stream ends or is dropped.
        let stream = if UNAUTHENTICATED_STREAMS.contains(&path) {
            let connection = Connection::of(request.extensions()).and_then(|c| c.remote);
            match self.shed.streams.open_unauthenticated(connection) {
                Ok(permit) => Some(permit),
                Err(error) => return Box::pin(std::future::ready(Ok(self.shed.refuse(error)))),
            }
        } else {
            None
        };
        let counted = |response: http::Response<Body>| match stream {
            Some(permit) => response.map(|body| Body::new(Counted { body, permit })),
            None => response,
        };
        if path.starts_with(HEALTH_PATH) {
            let answer = self.inner.call(request);
            return Box::pin(async move { answer.await.map(counted) });
        }
        let Ok(permit) = Arc::clone(&self.shed.permits).try_acquire_owned() else {
            let refused = self.shed.refuse(LimitError::Overloaded {
                limit: self.shed.limit,
            });
            return Box::pin(std::future::ready(Ok(refused)));
        };
        let answer = self.inner.call(request);
        let shed = self.shed.clone();
        Box::pin(async move {
            let _permit: OwnedSemaphorePermit = permit;
            match tokio::time::timeout(shed.timeout, answer).await {
                Ok(Ok(response)) if is_oversized_message(&response) => {
                    Ok(shed.refuse(LimitError::MessageTooLarge))
                }
                Ok(answered) => answered.map(counted),
                Err(_) => Ok(shed.refuse(LimitError::Timeout {
                    after: shed.timeout,
                })),
            }
        })
    }
}

/// tonic refuses a request message above its decoding limit (set a little above
/// `--max-event-bytes`) before reading it, but with OUT_OF_RANGE; every other limit answers
/// RESOURCE_EXHAUSTED, as gRPC's own implementations do for oversized messages. Recognised by
/// its code alone: no service on this port answers OUT_OF_RANGE itself (the one status map,
/// [`super::error`], never produces it, and a test there keeps it so), so a trailers-only
/// OUT_OF_RANGE can only be tonic's limit.
fn is_oversized_message<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .map(http::HeaderValue::as_bytes)
        == Some(b"11")
}

/// A response body that holds a [`StreamPermit`] until the body is done with.
struct Counted {
    body: Body,
    permit: StreamPermit,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl Shed {
    fn refuse<B: Default>(&self, error: LimitError) -> http::Response<B> {
        self.metrics.record_rejected(error.reason());
        // The status map's answer for a limit (`error` maps `LimitError` as every RPC does).
        Status::from(error).into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn streams_are_counted_per_connection_and_per_principal_and_freed_on_drop() {
        let counter = StreamCounter::new(2, 3, 10);
        let a1 = counter.open(addr(1), "alice").unwrap();
        let _a2 = counter.open(addr(1), "alice").unwrap();
        assert_eq!(
            counter.open(addr(1), "bob").unwrap_err(),
            LimitError::StreamsPerConnection { limit: 2 }
        );
        let _a3 = counter.open(addr(2), "alice").unwrap();
        assert_eq!(
            counter.open(addr(3), "alice").unwrap_err(),
            LimitError::StreamsPerPrincipal { limit: 3 }
        );
        // Unknown connections still count against the principal.
        assert!(counter.open(None, "alice").is_err());
        drop(a1);
        let _b = counter.open(addr(1), "bob").unwrap();
        let _a4 = counter.open(None, "alice").unwrap();
    }

    #[test]
    fn streams_without_a_token_count_per_connection_and_in_all() {
        let counter = StreamCounter::new(2, 5, 3);
        let w1 = counter.open_unauthenticated(addr(1)).unwrap();
        let _s1 = counter.open(addr(1), "alice").unwrap();
        // The connection's limit counts both kinds.
        assert_eq!(
            counter.open_unauthenticated(addr(1)).unwrap_err(),
            LimitError::StreamsPerConnection { limit: 2 }
        );
        let _w2 = counter.open_unauthenticated(addr(2)).unwrap();
        let _w3 = counter.open_unauthenticated(None).unwrap();
        // The server-wide limit, whatever the connection.
        assert_eq!(
            counter.open_unauthenticated(addr(3)).unwrap_err(),
            LimitError::UnauthenticatedStreams { limit: 3 }
        );
        drop(w1);
        let _w4 = counter.open_unauthenticated(addr(3)).unwrap();
        // No principal is charged for them: alice still has her 5 (one open already).
        let more: Vec<_> = (10..14)
            .map(|port| counter.open(addr(port), "alice").unwrap())
            .collect();
        assert_eq!(more.len(), 4);
    }

    #[test]
    fn counts_leave_no_entries_behind() {
        let counter = StreamCounter::new(10, 10, 10);
        let permits: Vec<_> = (0..5)
            .map(|i| counter.open(addr(i), &format!("user-{i}")).unwrap())
            .chain((0..3).map(|i| counter.open_unauthenticated(addr(i)).unwrap()))
            .collect();
        drop(permits);
        let counts = counter.counts.lock().unwrap();
        assert!(counts.connections.is_empty() && counts.principals.is_empty());
        assert_eq!(counts.unauthenticated, 0);
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills_per_principal() {
        let limiter = RateLimiter::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.check_at("svc", start).unwrap();
        }
        assert_eq!(
            limiter.check_at("svc", start).unwrap_err(),
            LimitError::PublishRate { per_second: 3 }
        );
        // Another principal has its own bucket.
        limiter.check_at("other", start).unwrap();
        // A third of a second later, one more call is allowed, not two.
        let later = start + Duration::from_millis(334);
        limiter.check_at("svc", later).unwrap();
        assert!(limiter.check_at("svc", later).is_err());
    }

    #[test]
    fn a_zero_rate_allows_everything() {
        let limiter = RateLimiter::new(0);
        for _ in 0..10_000 {
            limiter.check("svc").unwrap();
        }
    }

    #[test]
    fn idle_buckets_are_forgotten_when_there_are_many() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        for i in 0..=PRUNE_ABOVE {
            limiter.check_at(&format!("p{i}"), start).unwrap();
        }
        limiter
            .check_at("late", start + Duration::from_secs(1))
            .unwrap();
        assert!(limiter.buckets.lock().unwrap().len() <= 2);
    }
}
