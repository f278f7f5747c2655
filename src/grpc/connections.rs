//! The gRPC port's connections: how many may be open at once, how long one may take to say what
//! it wants, and the file-descriptor limit that makes room for them.
//!
//! Owns: accepting ([`Incoming`], with `TCP_NODELAY`), the `--max-connections` cap, the
//! handshake deadline (`--handshake-timeout`), each connection's identity ([`Connection`], for
//! the per-connection limits), and raising `RLIMIT_NOFILE` at start-up ([`raise_fd_limit`]).
//! Does not own: what a request may do once it has arrived (`limits`, `auth`).
//!
//! Why each bound: a connection costs a file descriptor and some memory before it has said
//! anything, so a client that opens connections and sends nothing (or half an HTTP/2 preface,
//! or half an HTTP/1.1 request line) could otherwise hold them forever, until the process runs
//! out of descriptors and stops answering everyone. A connection must therefore complete its
//! handshake within the handshake timeout, and no more than `--max-connections` are open at
//! once: one over the cap is accepted and closed at once (a clear refusal, where leaving it in
//! the kernel's backlog would look like a hang). Established connections that go quiet are
//! HTTP/2 keepalive's business.
//!
//! What completes the handshake is read off the bytes as they arrive, so it never races the
//! deadline: in plain text, the HTTP/2 preface and the header of the first frame after it (a
//! client that connects ahead of its first call sends exactly that), or the request line and
//! headers of a first HTTP/1.1 request (grpc-web, the page). Under TLS the bytes are opaque here,
//! and the first request reaching the services ([`GreetLayer`]) completes it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_stream::Stream;
use tracing::{info, warn};

use crate::telemetry::Metrics;

/// How long accepting pauses after an error such as `EMFILE` (out of descriptors): the error
/// repeats at once while nothing closes, and retrying in a tight loop would burn a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits of the port.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// Time from accept to the headers of the first request (`--handshake-timeout`).
    pub handshake_timeout: Duration,
}

/// One accepted connection, as the requests on it see it (in their extensions).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Set once the first request's headers arrived.
    greeted: Arc<AtomicBool>,
}

impl Connection {
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
        if !self.greeted.load(Ordering::Relaxed) {
            self.greeted.store(true, Ordering::Relaxed);
        }
    }

    fn is_greeted(&self) -> bool {
        self.greeted.load(Ordering::Relaxed)
    }
}

/// The accepted connections of a listener, capped and guarded, for tonic's
/// `serve_with_incoming`.
pub struct Incoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    /// After an accept error, no accepting until this completes.
    pause: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Accepts on `listener` within `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            limits,
            metrics,
            pause: None,
        }
    }

    /// Wraps an accepted stream, or closes it if the port is full.
    fn admit(&self, stream: TcpStream, remote: SocketAddr) -> Option<GuardedStream> {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.metrics.connections.refused.inc();
            // Dropping the stream closes it: the client sees the connection reset at once.
            return None;
        };
        // Small gRPC frames must not wait for Nagle's algorithm to gather more.
        let _ = stream.set_nodelay(true);
        self.metrics.connections.open.inc();
        Some(GuardedStream {
            stream,
            connection: Connection {
                remote: Some(remote),
                greeted: Arc::default(),
            },
            deadline: Some(Box::pin(tokio::time::sleep(self.limits.handshake_timeout))),
            sniff: Sniff::Start {
                seen: [0; H2_GREETING_LEN],
                len: 0,
            },
            metrics: Arc::clone(&self.metrics),
            _permit: permit,
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
/// within the handshake timeout, and holds its place under `--max-connections` until dropped.
pub struct GuardedStream {
    stream: TcpStream,
    connection: Connection,
    /// Cleared once the handshake is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// What the bytes read so far say about the handshake.
    sniff: Sniff,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
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
    /// TLS: left to [`GreetLayer`].
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

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        if this.connection.is_greeted() {
            this.deadline = None;
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &read
            && this.sniff.feed(&buf.filled()[before..])
        {
            this.connection.greet();
            this.deadline = None;
            return read;
        }
        if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            this.deadline = None;
            this.metrics.connections.handshake_timeouts.inc();
            // The server's read fails, and it closes the connection.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake not completed within --handshake-timeout",
            )));
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
/// arrives on it (whatever answers the request: the page, grpc-web, gRPC).
#[derive(Debug, Clone, Copy, Default)]
pub struct GreetLayer;

impl<S> tower::Layer<S> for GreetLayer {
    type Service = Greet<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Greet { inner }
    }
}

/// The service of [`GreetLayer`].
#[derive(Debug, Clone)]
pub struct Greet<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Greet<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(connection) = Connection::of(request.extensions()) {
            connection.greet();
        }
        self.inner.call(request)
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
