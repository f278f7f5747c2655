//! The gRPC port's connections: how many may be open at once, in all and per peer, how long
//! one may take to say what it wants, how long one may stay open doing nothing, and the
//! file-descriptor limit that makes room for them.
//!
//! Owns: accepting ([`Incoming`], with `TCP_NODELAY`), the `--max-connections` and
//! `--max-connections-per-peer` caps, the handshake deadline (`--handshake-timeout`), the idle
//! timeout (`--connection-idle-timeout`) and the count of calls in flight it rests on
//! ([`ActivityLayer`]), each connection's identity ([`Connection`], for the per-connection
//! limits), and raising `RLIMIT_NOFILE` at start-up ([`raise_fd_limit`]).
//! Does not own: what a request may do once it has arrived (`limits`, `auth`).
//!
//! Why each bound: a connection costs a file descriptor and some memory before it has said
//! anything, so a client that opens connections and sends nothing (or half an HTTP/2 preface,
//! or half an HTTP/1.1 request line) could otherwise hold them forever, until the process runs
//! out of descriptors and stops answering everyone. A connection must therefore complete its
//! handshake within the handshake timeout, and no more than `--max-connections` are open at
//! once. No more than `--max-connections-per-peer` of them may come from one peer address (its
//! IP, whatever the port), so that one client cannot take every place and lock the others out.
//! A connection over either cap is accepted and closed at once (a clear refusal, where leaving
//! it in the kernel's backlog would look like a hang), counted, and logged through
//! [`crate::telemetry::WARNINGS`]: the client decides how many refusals there are, so only a
//! few lines a kind are written per interval, and then their count. Behind a proxy or load
//! balancer every connection comes from the proxy's address: raise the per-peer cap or turn it
//! off there (0), and cap clients at the proxy. (An IPv6 peer is its full address: a client
//! with a network of its own has many, and only `--max-connections` bounds it.)
//!
//! A connection with no call in flight for `--connection-idle-timeout` is closed: a client that
//! made one call and then sits on its connection would otherwise hold its place under the caps
//! for as long as it likes. A call is in flight from the moment it reaches the services until
//! its response body is done with, so an open stream (a live `Subscribe`, a health `Watch`)
//! keeps its connection however long it lasts. HTTP/2 keepalive is a different matter: it
//! finds peers that have gone away, not live ones that do nothing.
//!
//! How an idle connection is closed: its read ends (end of stream), as for the handshake
//! deadline, and the server closes the transport. An HTTP/2 GOAWAY would be kinder (it tells
//! the client which requests were not served, so it can retry them safely), but tonic's server
//! keeps each connection's hyper handle to itself (it offers a graceful close only for the
//! whole server, or after a fixed connection age), and this module sits below HTTP/2, and below
//! TLS, where no frame can be added. A client sees its connection close, as after a network
//! failure, and connects again for its next call. Bytes read just before the deadline may be a
//! request on its way to the services, not yet in flight: they postpone the close, once, by
//! [`IDLE_GRACE`], so the request can count. (A PING does the same, once: idleness is about
//! calls, so keepalive traffic does not keep a connection open.)
//!
//! What completes the handshake is read off the bytes as they arrive, so it never races the
//! deadline: in plain text, the HTTP/2 preface and the header of the first frame after it (a
//! client that connects ahead of its first call sends exactly that), or the request line and
//! headers of a first HTTP/1.1 request (grpc-web, the page). Under TLS the bytes are opaque here,
//! and the first request reaching the services ([`ActivityLayer`]) completes it.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tracing::{info, warn};

use crate::telemetry::{Metrics, WARNINGS};

/// How long accepting pauses after an error such as `EMFILE` (out of descriptors): the error
/// repeats at once while nothing closes, and retrying in a tight loop would burn a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits of the port.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// Connections open at once from one peer IP (`--max-connections-per-peer`); `None`: no
    /// cap of its own.
    pub max_connections_per_peer: Option<usize>,
    /// Time from accept to the headers of the first request (`--handshake-timeout`).
    pub handshake_timeout: Duration,
    /// How long a connection may have no call in flight (`--connection-idle-timeout`);
    /// `None`: for ever.
    pub idle_timeout: Option<Duration>,
}

/// How long bytes read just before the idle deadline postpone the close (once): time for a
/// request in them to reach the services and count as in flight.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// One accepted connection, as the requests on it see it (in their extensions).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    activity: Arc<Activity>,
}

/// What a connection's requests tell its reading side.
#[derive(Debug)]
struct Activity {
    /// Set once the first request's headers arrived.
    greeted: AtomicBool,
    calls: Mutex<Calls>,
}

/// The calls in flight on a connection; one lock, so the count and the time it last fell to
/// zero are always read together.
#[derive(Debug)]
struct Calls {
    in_flight: usize,
    /// When the last call in flight ended (at first: when the connection was accepted).
    idle_since: Instant,
    /// The connection's reading side, woken when its last call ends: its idle clock starts.
    reader: Option<Waker>,
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
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Connection {
    fn accepted(remote: SocketAddr) -> Self {
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
    fn greet(&self) {
        if !self.activity.greeted.load(Ordering::Relaxed) {
            self.activity.greeted.store(true, Ordering::Relaxed);
        }
    }

    fn is_greeted(&self) -> bool {
        self.activity.greeted.load(Ordering::Relaxed)
    }

    /// Counts one call in flight until the returned guard is dropped.
    fn begin_call(&self) -> InFlight {
        self.activity.calls().in_flight += 1;
        InFlight {
            activity: Arc::clone(&self.activity),
        }
    }
}

/// One call in flight on a connection; dropping it ends the call.
#[derive(Debug)]
struct InFlight {
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

/// Open connections per peer IP, for `--max-connections-per-peer`. Only peers with a connection
/// open are present, so the map is as large as the open connections and no larger.
#[derive(Debug, Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    /// Takes a place for one more connection of `ip`, unless it has `limit` open already.
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PeerPermit> {
        // A poisoned lock means a panic while counting, which cannot leave the map
        // inconsistent (every update is a single insert, change or remove): go on.
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let open = counts.entry(ip).or_default();
        if *open >= limit {
            if *open == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *open += 1;
        Some(PeerPermit {
            counts: Arc::clone(self),
            ip,
        })
    }
}

/// One connection's place under `--max-connections-per-peer`; freed when dropped.
#[derive(Debug)]
struct PeerPermit {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = counts.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The accepted connections of a listener, capped and guarded, for tonic's
/// `serve_with_incoming`.
pub struct Incoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    peers: Arc<PeerCounts>,
    limits: ConnectionSettings,
    metrics: Arc<Metrics>,
    /// After an accept error, no accepting until this completes.
    pause: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Accepts on `listener` within `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            peers: Arc::default(),
            limits,
            metrics,
            pause: None,
        }
    }

    /// Wraps an accepted stream, or closes it if the port, or its peer's share, is full.
    /// Dropping the stream closes it: the client sees the connection reset at once.
    fn admit(&self, stream: TcpStream, remote: SocketAddr) -> Option<GuardedStream> {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d; it is one peer
        // whichever way it is written.
        let ip = remote.ip().to_canonical();
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.metrics.connections.refused.inc();
            if WARNINGS.admit("connections.refused") {
                warn!(
                    peer = %ip,
                    limit = self.limits.max_connections,
                    "connection refused: the port has --max-connections open"
                );
            }
            return None;
        };
        let peer = match self.limits.max_connections_per_peer {
            None => None,
            Some(limit) => {
                let Some(peer) = self.peers.take(ip, limit) else {
                    self.metrics.connections.refused_per_peer.inc();
                    if WARNINGS.admit("connections.refused_per_peer") {
                        warn!(
                            peer = %ip,
                            limit,
                            "connection refused: this peer has --max-connections-per-peer open \
                             (behind a proxy every peer is the proxy: raise the cap, or 0 for \
                             none)"
                        );
                    }
                    return None;
                };
                Some(peer)
            }
        };
        // Small gRPC frames must not wait for Nagle's algorithm to gather more.
        let _ = stream.set_nodelay(true);
        self.metrics.connections.open.inc();
        Some(GuardedStream {
            stream,
            connection: Connection::accepted(remote),
            deadline: Some(Box::pin(tokio::time::sleep(self.limits.handshake_timeout))),
            sniff: Sniff::Start {
                seen: [0; H2_GREETING_LEN],
                len: 0,
            },
            idle: self.limits.idle_timeout.map(IdleClock::new),
            metrics: Arc::clone(&self.metrics),
            _permit: permit,
            _peer: peer,
        })
    }
}

impl Stream for Incoming {
    type Item = io::Result<GuardedStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                std::task::ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match std::task::ready!(this.listener.poll_accept(cx)) {
                Ok((stream, remote)) => {
                    if let Some(guarded) = this.admit(stream, remote) {
                        return Poll::Ready(Some(Ok(guarded)));
                    }
                }
                // The peer gave up before we accepted: nothing to do.
                Err(error) if is_peer_error(&error) => {}
                Err(error) => {
                    warn!(%error, "cannot accept connections; pausing briefly");
                    this.metrics.connections.accept_errors.inc();
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
            }
        }
    }
}

fn is_peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// An accepted TCP stream that gives up reading (so the server closes it) if no request arrived
/// within the handshake timeout, or no call was in flight for the idle timeout, and holds its
/// places under `--max-connections` and `--max-connections-per-peer` until dropped.
pub struct GuardedStream {
    stream: TcpStream,
    connection: Connection,
    /// Cleared once the handshake is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// What the bytes read so far say about the handshake.
    sniff: Sniff,
    /// With `--connection-idle-timeout`.
    idle: Option<IdleClock>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerPermit>,
}

/// A connection's idle deadline, as its reading side keeps it.
struct IdleClock {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// When bytes last arrived.
    last_read: Option<Instant>,
    /// Set once the deadline has closed the connection: every later read ends too.
    expired: bool,
}

impl IdleClock {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            last_read: None,
            expired: false,
        }
    }

    /// Whether `connection` has now been idle too long, for a reader about to wait for bytes
    /// (which is woken when the connection's last call ends, or its deadline passes).
    fn is_expired(&mut self, connection: &Connection, cx: &mut Context<'_>) -> bool {
        let idle_deadline = {
            let mut calls = connection.activity.calls();
            if !calls
                .reader
                .as_ref()
                .is_some_and(|reader| reader.will_wake(cx.waker()))
            {
                calls.reader = Some(cx.waker().clone());
            }
            if calls.in_flight > 0 {
                return false;
            }
            calls.idle_since + self.timeout
        };
        // Bytes read just before the deadline may hold a request not yet in flight.
        let close_at = match self.last_read {
            Some(read) if read + IDLE_GRACE > idle_deadline => {
                (read + IDLE_GRACE).min(idle_deadline + IDLE_GRACE)
            }
            _ => idle_deadline,
        };
        if self.sleep.deadline() != close_at {
            self.sleep.as_mut().reset(close_at);
        }
        self.expired = self.sleep.as_mut().poll(cx).is_ready();
        self.expired
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and the 9-byte header of the frame after it (the client's SETTINGS).
const H2_GREETING_LEN: usize = H2_PREFACE.len() + 9;
/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// The handshake as read off the first bytes of a connection.
#[derive(Debug)]
enum Sniff {
    /// Not enough bytes yet to tell.
    Start {
        seen: [u8; H2_GREETING_LEN],
        len: usize,
    },
    /// HTTP/1.x: complete at the blank line that ends the first request's headers; `tail` is
    /// the last three bytes seen.
    Http1 { tail: [u8; 3] },
    /// TLS: left to [`ActivityLayer`].
    Opaque,
    /// Complete.
    Done,
}

impl Sniff {
    /// Feeds the next bytes read; whether the handshake is now complete.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        loop {
            if bytes.is_empty() {
                return matches!(self, Sniff::Done);
            }
            match self {
                Sniff::Done => return true,
                Sniff::Opaque => return false,
                Sniff::Start { seen, len } => {
                    let take = bytes.len().min(H2_GREETING_LEN - *len);
                    seen[*len..*len + take].copy_from_slice(&bytes[..take]);
                    *len += take;
                    bytes = &bytes[take..];
                    let got = &seen[..*len];
                    if got[0] == TLS_HANDSHAKE {
                        *self = Sniff::Opaque;
                    } else if H2_PREFACE.starts_with(&got[..got.len().min(H2_PREFACE.len())]) {
                        // HTTP/2 so far: complete with the preface and the next frame's header.
                        if *len == H2_GREETING_LEN {
                            *self = Sniff::Done;
                        }
                    } else {
                        // HTTP/1.x: the bytes seen so far are the start of its request.
                        let got = got.to_vec();
                        *self = Sniff::Http1 { tail: [0; 3] };
                        if self.feed(&got) {
                            return true;
                        }
                    }
                }
                Sniff::Http1 { tail } => {
                    for &byte in bytes {
                        let ends = *tail == *b"\r\n\r" && byte == b'\n';
                        *tail = [tail[1], tail[2], byte];
                        if ends {
                            *self = Sniff::Done;
                            return true;
                        }
                    }
                    return false;
                }
            }
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.metrics.connections.open.dec();
    }
}

impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        self.connection.clone()
    }
}

impl GuardedStream {
    /// Reads, within the handshake deadline until the handshake is complete.
    fn poll_read_greeted(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(deadline) = self.deadline.as_mut() else {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        };
        if self.connection.is_greeted() {
            self.deadline = None;
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &read
            && self.sniff.feed(&buf.filled()[before..])
        {
            self.connection.greet();
            self.deadline = None;
            return read;
        }
        if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            self.deadline = None;
            self.metrics.connections.handshake_timeouts.inc();
            // The server's read fails, and it closes the connection.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake not completed within --handshake-timeout",
            )));
        }
        read
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.idle.as_ref().is_some_and(|idle| idle.expired) {
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = this.poll_read_greeted(cx, buf);
        let Some(idle) = this.idle.as_mut() else {
            return read;
        };
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                idle.last_read = Some(Instant::now());
            }
            // Before the handshake is complete, its own deadline applies.
            Poll::Pending
                if this.connection.is_greeted() && idle.is_expired(&this.connection, cx) =>
            {
                this.metrics.connections.idle_timeouts.inc();
                return Poll::Ready(Ok(()));
            }
            _ => {}
        }
        read
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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

/// Raises the soft limit on open files to the hard limit, so `--max-connections` is not cut
/// short by a low default (often 1,024), and logs the result. Returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        info!("open files: no limit");
        return None;
    };
    let target = hard.unwrap_or(u64::MAX);
    if soft >= target {
        info!(
            limit = soft,
            "open files: soft limit already at the hard limit"
        );
        return Some(soft);
    }
    let raised = rustix::process::Rlimit {
        current: hard,
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            info!(
                from = soft,
                to = target,
                "open files: raised the soft limit to the hard limit"
            );
            Some(target)
        }
        Err(error) => {
            warn!(%error, limit = soft, "open files: cannot raise the soft limit");
            Some(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Sniff {
        Sniff::Start {
            seen: [0; H2_GREETING_LEN],
            len: 0,
        }
    }

    /// Feeds `chunks` one at a time; whether the handshake completed at the last one (and not
    /// before).
    fn completes(chunks: &[&[u8]]) -> bool {
        let mut sniff = start();
        let (last, before) = chunks.split_last().expect("chunks");
        for chunk in before {
            assert!(!sniff.feed(chunk), "complete too early at {chunk:?}");
        }
        sniff.feed(last)
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_call_is_in_flight() {
        let connection = Connection::accepted(SocketAddr::from(([127, 0, 0, 1], 1)));
        let minute = Duration::from_secs(60);
        let mut clock = IdleClock::new(minute);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut expired = |clock: &mut IdleClock| clock.is_expired(&connection, &mut cx);

        assert!(!expired(&mut clock));
        // A call in flight (an open stream) keeps it, however long.
        let call = connection.begin_call();
        let second_call = connection.begin_call();
        tokio::time::advance(minute * 10).await;
        assert!(!expired(&mut clock));
        let woken = || wakes.0.load(Ordering::Relaxed);
        let before = woken();
        drop(call);
        assert_eq!(woken(), before);
        assert!(!expired(&mut clock));
        // The last call's end wakes the reader: the idle clock starts then.
        drop(second_call);
        assert_eq!(woken(), before + 1);
        tokio::time::advance(minute - Duration::from_millis(1)).await;
        assert!(!expired(&mut clock));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(expired(&mut clock));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_read_just_before_the_deadline_postpone_it_once() {
        let connection = Connection::accepted(SocketAddr::from(([127, 0, 0, 1], 1)));
        let minute = Duration::from_secs(60);
        let mut clock = IdleClock::new(minute);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let half_grace = IDLE_GRACE / 2;
        tokio::time::advance(minute - half_grace).await;
        // A request may be on its way: it gets its grace.
        clock.last_read = Some(Instant::now());
        tokio::time::advance(half_grace).await;
        assert!(!clock.is_expired(&connection, &mut cx));
        // Bytes that keep coming (pings) do not postpone it again.
        tokio::time::advance(half_grace).await;
        clock.last_read = Some(Instant::now());
        assert!(!clock.is_expired(&connection, &mut cx));
        tokio::time::advance(half_grace).await;
        assert!(clock.is_expired(&connection, &mut cx));
    }

    #[test]
    fn a_peer_s_places_are_counted_by_address_and_given_back() {
        let peers = Arc::new(PeerCounts::default());
        let one: IpAddr = [10, 0, 0, 1].into();
        let two: IpAddr = [10, 0, 0, 2].into();
        let first = peers.take(one, 2).unwrap();
        let _second = peers.take(one, 2).unwrap();
        assert!(peers.take(one, 2).is_none());
        let _other = peers.take(two, 2).unwrap();
        drop(first);
        let _again = peers.take(one, 2).unwrap();
        drop((_second, _other, _again));
        assert!(peers.0.lock().unwrap().is_empty());
    }

    #[test]
    fn an_http2_preface_and_a_frame_header_complete_the_handshake_in_any_pieces() {
        let settings_header = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let greeting = [H2_PREFACE, &settings_header[..]].concat();
        assert!(completes(&[&greeting]));
        for cut in 1..greeting.len() {
            assert!(
                completes(&[&greeting[..cut], &greeting[cut..]]),
                "cut at {cut}"
            );
        }
        // More bytes in the same read (the SETTINGS payload, a request) change nothing.
        assert!(completes(&[&[greeting.as_slice(), b"more"].concat()]));
        // Half a preface, or the preface alone, is not enough.
        let mut half = start();
        assert!(!half.feed(b"PRI * HTTP/2.0\r\n"));
        let mut preface_only = start();
        assert!(!preface_only.feed(H2_PREFACE));
    }

    #[test]
    fn an_http1_request_completes_at_the_end_of_its_headers() {
        let request =
            b"POST /cloudphone.notify.v1.NotificationService/Subscribe HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(completes(&[request]));
        for cut in 1..request.len() {
            assert!(
                completes(&[&request[..cut], &request[cut..]]),
                "cut at {cut}"
            );
        }
        let mut half = start();
        assert!(!half.feed(b"POST /cloudphone.no"));
        assert!(!half.feed(b"tify HTTP/1.1\r\nhost: x\r\n"));
        // `PR` could begin an HTTP/2 preface; `PRX` cannot, and is scanned as HTTP/1.x.
        assert!(completes(&[b"PR", b"X / HTTP/1.1\r\n\r\n"]));
    }

    #[test]
    fn tls_is_left_to_the_first_request_and_nothing_is_not_a_handshake() {
        let mut tls = start();
        assert!(!tls.feed(&[TLS_HANDSHAKE, 3, 1, 0, 0x20]));
        assert!(!tls.feed(b"\r\n\r\n"));
        assert!(matches!(tls, Sniff::Opaque));
        let mut nothing = start();
        assert!(!nothing.feed(b""));
    }
}
