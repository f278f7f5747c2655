//! The accepted stream ([`GuardedStream`]): the places it holds under the caps until dropped,
//! the handshake deadline (read off the first bytes by [`Sniff`]), and the idle deadline
//! ([`IdleClock`], postponed once by [`IDLE_GRACE`]). Both deadlines end the stream's reads, and
//! the server closes it.
//!
//! Does not own: whether a connection is admitted (the caps, in `mod.rs`, which also holds the
//! bounds' values), or the count of calls in flight the idle deadline rests on (`activity`,
//! which wakes the reader here when the last call ends). Why a deadline ends a read rather than
//! sending a GOAWAY: see the module header.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};

use super::{ConnectionSettings, IDLE_GRACE, PeerPermit, activity::Connection};
use crate::telemetry::Metrics;

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
    /// The write waiting for the tasks queued before it.
    writes: WritePacing,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerPermit>,
}

impl GuardedStream {
    /// An admitted stream, holding its places: its handshake deadline starts now.
    pub(super) fn admitted(
        stream: TcpStream,
        remote: SocketAddr,
        limits: &ConnectionSettings,
        metrics: Arc<Metrics>,
        permit: OwnedSemaphorePermit,
        peer: Option<PeerPermit>,
    ) -> Self {
        Self {
            stream,
            connection: Connection::accepted(remote),
            deadline: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
            sniff: Sniff::Start {
                seen: [0; H2_GREETING_LEN],
                len: 0,
            },
            idle: limits.idle_timeout.map(IdleClock::new),
            writes: WritePacing::default(),
            metrics,
            _permit: permit,
            _peer: peer,
        }
    }
}

/// A burst of writes after a quiet spell waits, write by write, for the tasks already woken on
/// the connection's worker thread. One event fans out to many streams at once: each stream's
/// task queues its frame and wakes the connection's task, which tokio runs right after the
/// waking task (its LIFO slot), so without this the connection would write each stream's frame
/// on its own, one system call per delivery. Deferred, it runs after the others (tokio's
/// `yield_now` puts it behind the tasks already queued, until the worker next looks at its I/O
/// driver) and writes what all of them queued meanwhile in one go. The wait ends only when
/// that deferred wake comes: the streams' frames wake the connection's task meanwhile too, and
/// writing then would send a frame or two at a time again.
///
/// Only a burst waits, the [`BURST`] after a [`QUIET_SPELL`]: under a steady load the frames
/// batch by themselves, and there a deferral would only hold writes back (and, since h2 reads
/// only once its writes went out, the peer's flow-control updates too): measured with every
/// write deferred, the firehose at 1,000,000 deliveries/s fell behind by seconds. And only a
/// connection with calls in flight waits: deferring the handshake's first write (the server's
/// SETTINGS, before the connection had ever waited for a read) left a connection that had sent
/// only its preface never reading again, in `tests/limits.rs`' stalled-call test. Why was not
/// found; a connection with calls in flight has read and waited for more before.
#[derive(Debug, Default)]
struct WritePacing {
    /// When the last write went out.
    last_write: Option<Instant>,
    /// Writes before this instant are deferred (a burst after a quiet spell).
    burst_until: Option<Instant>,
    /// The deferral under way, if any.
    waiting: Option<Arc<Deferral>>,
}

/// No write for this long, and the next write starts a burst. Longer than the writer's pause
/// between commits (`--commit-delay`, 2 ms), which makes even a steady load arrive in bursts:
/// with 1 ms, the firehose at 1,000,000 deliveries/s deferred its writes and its p99 rose from
/// about 28 to 42 ms.
const QUIET_SPELL: Duration = Duration::from_millis(3);
/// How long a burst's writes are deferred: about what the workers take to run 1,000 streams'
/// tasks for one event.
const BURST: Duration = Duration::from_millis(4);

/// One deferred write: released by tokio's deferred wake, which then wakes the task.
#[derive(Debug)]
struct Deferral {
    released: AtomicBool,
    task: Waker,
}

impl Wake for Deferral {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.released.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl WritePacing {
    /// `Pending` until this write, if it is part of a burst, has waited once for the tasks
    /// queued before it. Only a connection with calls in flight has bursts: the handshake's
    /// and an idle connection's writes go out at once.
    /// `calls_in_flight` is asked only for a write about to be deferred (it takes a lock).
    fn defer(&mut self, cx: &mut Context<'_>, calls_in_flight: impl FnOnce() -> bool) -> Poll<()> {
        let now = Instant::now();
        if let Some(deferral) = &self.waiting {
            if !deferral.released.load(Ordering::Acquire) {
                // Woken by something else (a stream's frame, a read): keep waiting.
                return Poll::Pending;
            }
            self.waiting = None;
            self.last_write = Some(now);
            return Poll::Ready(());
        }
        if self
            .last_write
            .is_none_or(|last| now.duration_since(last) >= QUIET_SPELL)
        {
            self.burst_until = Some(now + BURST);
        }
        if self.burst_until.is_none_or(|until| now >= until) || !calls_in_flight() {
            self.last_write = Some(now);
            return Poll::Ready(());
        }
        let deferral = Arc::new(Deferral {
            released: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(Arc::clone(&deferral));
        let yielded = std::pin::pin!(tokio::task::yield_now());
        if yielded.poll(&mut Context::from_waker(&waker)).is_pending() {
            self.waiting = Some(deferral);
            return Poll::Pending;
        }
        self.last_write = Some(now);
        Poll::Ready(())
    }
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
        let this = &mut *self;
        let connection = &this.connection;
        std::task::ready!(
            this.writes
                .defer(cx, || connection.activity.calls().in_flight > 0)
        );
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let connection = &this.connection;
        std::task::ready!(
            this.writes
                .defer(cx, || connection.activity.calls().in_flight > 0)
        );
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::poll_fn;

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

    /// One poll of the pacing's `defer`, as the connection's task would make it.
    async fn defer_once(pacing: &mut WritePacing) -> Poll<()> {
        poll_fn(|cx| Poll::Ready(pacing.defer(cx, || true))).await
    }

    /// A burst's writes each wait for tokio's deferred wake, not for any wake; once the burst is
    /// over, writes that follow each other closely go out at once.
    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_for_the_deferred_wake_and_a_steady_load_does_not_wait() {
        let mut pacing = WritePacing::default();
        assert!(
            defer_once(&mut pacing).await.is_pending(),
            "after a quiet spell"
        );
        // Polled again before the deferred wake (a stream's frame woke the task): still waits.
        assert!(defer_once(&mut pacing).await.is_pending());
        // The runtime runs its deferred wakes when this task yields.
        tokio::task::yield_now().await;
        assert!(defer_once(&mut pacing).await.is_ready());
        // The next write of the burst waits once too.
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(defer_once(&mut pacing).await.is_pending());
        tokio::task::yield_now().await;
        assert!(defer_once(&mut pacing).await.is_ready());
        // Past the burst, 2.5 ms after the last write (no quiet spell): at once, and again.
        tokio::time::advance(Duration::from_micros(2500)).await;
        assert!(defer_once(&mut pacing).await.is_ready());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(defer_once(&mut pacing).await.is_ready());
        // A quiet spell starts a burst again, but only with calls in flight.
        tokio::time::advance(QUIET_SPELL).await;
        assert!(
            poll_fn(|cx| Poll::Ready(pacing.defer(cx, || false)))
                .await
                .is_ready()
        );
        tokio::time::advance(QUIET_SPELL).await;
        assert!(defer_once(&mut pacing).await.is_pending());
    }
}
