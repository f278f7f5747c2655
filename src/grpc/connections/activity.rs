//! Each connection's identity and the calls in flight on it: [`Connection`] (in every request's
//! extensions, for the per-connection limits), the count it keeps with the time it last fell to
//! zero, and [`ActivityLayer`], the tower layer that marks the handshake done when a request
//! arrives and counts the request in flight until its response body is done with.
//!
//! Does not own: what the count is for. The reading side (`guarded`) turns it into the idle
//! deadline and closes the connection; this file only counts, and wakes that reader when the
//! last call ends, so the idle clock starts then and not at its next poll.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use tokio::time::Instant;

/// One accepted connection, as the requests on it see it (in their extensions).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    pub(super) activity: Arc<Activity>,
}

/// What a connection's requests tell its reading side.
#[derive(Debug)]
pub(super) struct Activity {
    /// Set once the first request's headers arrived.
    greeted: AtomicBool,
    calls: Mutex<Calls>,
}

/// The calls in flight on a connection; one lock, so the count and the time it last fell to
/// zero are always read together.
#[derive(Debug)]
pub(super) struct Calls {
    pub(super) in_flight: usize,
    /// When the last call in flight ended (at first: when the connection was accepted).
    pub(super) idle_since: Instant,
    /// The connection's reading side, woken when its last call ends: its idle clock starts.
    pub(super) reader: Option<Waker>,
}

impl Activity {
    fn new() -> Self {
        Self {
            greeted: AtomicBool::new(false),
            calls: Mutex::new(Calls {
                in_flight: 0,
                idle_since: Instant::now(),
                reader: None,
            }),
        }
    }

    /// The calls, whatever a panic elsewhere left behind (every update is complete under the
    /// lock, so a poisoned one holds consistent numbers).
    pub(super) fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Connection {
    pub(super) fn accepted(remote: SocketAddr) -> Self {
        Self {
            remote: Some(remote),
            activity: Arc::new(Activity::new()),
        }
    }

    /// The connection a request arrived on, if it came through [`Incoming`] (with or without
    /// TLS).
    pub fn of(extensions: &http::Extensions) -> Option<&Connection> {
        extensions.get::<Connection>().or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<Connection>>()
                .map(tonic::transport::server::TlsConnectInfo::get_ref)
        })
    }

    /// Marks the handshake done: a request arrived.
    pub(super) fn greet(&self) {
        if !self.activity.greeted.load(Ordering::Relaxed) {
            self.activity.greeted.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn is_greeted(&self) -> bool {
        self.activity.greeted.load(Ordering::Relaxed)
    }

    /// Counts one call in flight until the returned guard is dropped.
    pub(super) fn begin_call(&self) -> InFlight {
        self.activity.calls().in_flight += 1;
        InFlight {
            activity: Arc::clone(&self.activity),
        }
    }
}

/// One call in flight on a connection; dropping it ends the call.
#[derive(Debug)]
pub(super) struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut calls = self.activity.calls();
        calls.in_flight -= 1;
        if calls.in_flight == 0 {
            calls.idle_since = Instant::now();
            if let Some(reader) = calls.reader.take() {
                reader.wake();
            }
        }
    }
}

/// Tower layer, outermost on the port: marks a connection's handshake done when a request
/// arrives on it (whatever answers the request: the page, grpc-web, gRPC), and counts the
/// request as a call in flight on its connection until its response body is done with (for a
/// stream: until it ends), for `--connection-idle-timeout`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Activated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Activated { inner }
    }
}

/// The service of [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activated<S> {
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Activated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ActiveBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = Connection::of(request.extensions()).map(|connection| {
            connection.greet();
            connection.begin_call()
        });
        let answer = self.inner.call(request);
        // Dropped with the future if the call ends before it is answered (a reset stream).
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| ActiveBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its call in flight until it is done with.
#[derive(Debug)]
pub struct ActiveBody<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body + Unpin> http_body::Body for ActiveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

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
