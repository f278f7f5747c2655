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
//!
//! The files: this one accepts ([`Incoming`]) and keeps the caps; [`activity`] is each
//! connection's identity and the calls in flight on it, counted by [`ActivityLayer`];
//! [`guarded`] is the accepted stream, with its handshake and idle deadlines; [`fd_limit`]
//! raises the open-file limit at start-up.

mod activity;
mod fd_limit;
mod guarded;

pub use activity::{ActivityLayer, Connection};
pub use fd_limit::raise_fd_limit;
pub use guarded::GuardedStream;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Sleep,
};
use tokio_stream::Stream;
use tracing::warn;

use crate::telemetry::{Metrics, WARNINGS};

/// How long accepting pauses after an error such as `EMFILE` (out of descriptors): the error
/// repeats at once while nothing closes, and retrying in a tight loop would burn a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long bytes read just before the idle deadline postpone the close (once): time for a
/// request in them to reach the services and count as in flight.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

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
        Some(GuardedStream::admitted(
            stream,
            remote,
            &self.limits,
            Arc::clone(&self.metrics),
            permit,
            peer,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
