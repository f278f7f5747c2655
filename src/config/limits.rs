//! The "Limits" flags: what one client, connection or principal may ask of the server.
//!
//! Owns: these flags, their derived defaults (the per-peer cap) and the limits made of them
//! ([`LimitsFlags::connection_limits`], [`LimitsFlags::filter_limits`]). Does not own:
//! enforcing them (`grpc`, `hub`, `schema`).

use std::time::Duration;

use clap::Args;

use super::parse::{at_least_one, event_bytes, positive_duration};
use crate::{grpc::connections::ConnectionSettings, hub::FilterSettings};

/// The least default of `--max-connections-per-peer`, however small `--max-connections` is:
/// room for a browser's handful of connections and a few more clients behind one NAT address.
pub const MIN_DEFAULT_CONNECTIONS_PER_PEER: usize = 16;

/// The "Limits" flags.
#[derive(Debug, Clone, Args)]
pub struct LimitsFlags {
    /// Largest event accepted, in bytes, on every ingest path (RabbitMQ and `Publish`): the
    /// producer's body (JSON, or the encoded typed event) and the event decoded from it. Over
    /// it: dead-lettered with reason `too_large`, or RESOURCE_EXHAUSTED for `Publish`. At most
    /// 4 MiB - 64 KiB, so every stored event fits a default gRPC client's 4 MiB receive limit.
    /// (`--max-publish-bytes` is the old name.)
    #[arg(long, alias = "max-publish-bytes", env = "NOTIFY_MAX_EVENT_BYTES", default_value_t = crate::schema::DEFAULT_MAX_EVENT_BYTES, value_parser = event_bytes, help_heading = "Limits")]
    pub max_event_bytes: usize,

    /// Most `event_types` patterns one subscription may carry. Every pattern is checked against
    /// every event routed to the stream, so this bounds the work a subscriber can cause.
    #[arg(long, env = "NOTIFY_MAX_EVENT_TYPES", default_value_t = crate::hub::MAX_TYPE_PATTERNS, value_parser = at_least_one, help_heading = "Limits")]
    pub max_event_types: usize,

    /// Longest `event_types` pattern, in bytes.
    #[arg(long, env = "NOTIFY_MAX_PATTERN_LEN", default_value_t = crate::hub::MAX_PATTERN_LEN, value_parser = at_least_one, help_heading = "Limits")]
    pub max_pattern_len: usize,

    /// Most `Subscribe` streams one connection may hold open. HTTP/2's own stream limit is set
    /// a little above, so a client over this gets RESOURCE_EXHAUSTED instead of waiting.
    #[arg(long, env = "NOTIFY_MAX_STREAMS_PER_CONNECTION", default_value_t = 128, value_parser = at_least_one, help_heading = "Limits")]
    pub max_streams_per_connection: usize,

    /// Most `Subscribe` streams one principal (token `sub`) may hold open, across connections
    /// and nodes' worth of browser tabs.
    #[arg(long, env = "NOTIFY_MAX_STREAMS_PER_PRINCIPAL", default_value_t = 64, value_parser = at_least_one, help_heading = "Limits")]
    pub max_streams_per_principal: usize,

    /// Connections the gRPC port holds open at once. One more is closed as soon as it is
    /// accepted (counted in `notify_connections_refused_total`).
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = at_least_one, help_heading = "Limits")]
    pub max_connections: usize,

    /// Connections one peer address (its IP, any port) may hold open on the gRPC port at once,
    /// so one client cannot take every place under --max-connections. One more is closed as
    /// soon as it is accepted (counted in `notify_connections_refused_per_peer_total`).
    /// Default: a tenth of --max-connections, at least 16 (1,000 with its default). Behind a
    /// proxy or load balancer every connection comes from the proxy's address: raise this
    /// there, or turn it off with 0, and cap connections per client at the proxy.
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS_PER_PEER", help_heading = "Limits")]
    pub max_connections_per_peer: Option<usize>,

    /// A connection with no call in flight for this long is closed (counted in
    /// `notify_connections_idle_timeouts_total`). A call is in flight until its response is
    /// done, so an open stream (`Subscribe`, health `Watch`) keeps its connection however long
    /// it lasts; HTTP/2 pings do not count. 0 turns it off.
    #[arg(long, env = "NOTIFY_CONNECTION_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration, help_heading = "Limits")]
    pub connection_idle_timeout: Duration,

    /// How long a new connection may take to send the headers of its first request (TLS and
    /// the HTTP/2 preface included). One that sends nothing, or half a preface or request line,
    /// is closed then.
    #[arg(long, env = "NOTIFY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration, help_heading = "Limits")]
    pub handshake_timeout: Duration,

    /// Streams that need no token (health `Watch`, reflection) open at once on the whole
    /// server; each also counts against `--max-streams-per-connection`. Health `Check` is
    /// unary and not limited.
    #[arg(long, env = "NOTIFY_MAX_UNAUTHENTICATED_STREAMS", default_value_t = 1024, value_parser = at_least_one, help_heading = "Limits")]
    pub max_unauthenticated_streams: usize,

    /// `Publish` calls per second allowed per principal (token bucket; bursts up to one
    /// second's worth). 0: unlimited.
    #[arg(
        long,
        env = "NOTIFY_MAX_PUBLISH_RATE",
        default_value_t = 20_000,
        help_heading = "Limits"
    )]
    pub max_publish_rate: u32,

    /// Inbox marks (`MarkInbox`) and preference changes (`SetPreferences`) per second allowed
    /// per principal (token bucket; bursts up to one second's worth). 0: unlimited. Each is a
    /// write through the journal's one writer, like an event.
    #[arg(
        long,
        env = "NOTIFY_MAX_INBOX_RATE",
        default_value_t = 50,
        help_heading = "Limits"
    )]
    pub max_inbox_rate: u32,

    /// Requests being answered at once, all methods (a stream counts until it has opened).
    /// Over it, calls are refused at once with RESOURCE_EXHAUSTED (load shedding) rather than
    /// queued. Health checks are exempt.
    #[arg(long, env = "NOTIFY_MAX_CONCURRENT_REQUESTS", default_value_t = 4096, value_parser = at_least_one, help_heading = "Limits")]
    pub max_concurrent_requests: usize,

    /// How long a call may take until its response starts: all of a `Publish`, the opening of
    /// a `Subscribe` (including a request that arrives too slowly). Over it: RESOURCE_EXHAUSTED.
    #[arg(long, env = "NOTIFY_REQUEST_TIMEOUT", default_value = "10s", value_parser = positive_duration, help_heading = "Limits")]
    pub request_timeout: Duration,
}

impl LimitsFlags {
    /// `--max-connections-per-peer`, or its default (a tenth of `--max-connections`, at least
    /// [`MIN_DEFAULT_CONNECTIONS_PER_PEER`]); `None` when 0 turned it off.
    pub fn max_connections_per_peer(&self) -> Option<usize> {
        match self.max_connections_per_peer {
            Some(0) => None,
            Some(limit) => Some(limit),
            None => Some((self.max_connections / 10).max(MIN_DEFAULT_CONNECTIONS_PER_PEER)),
        }
    }

    /// `--connection-idle-timeout`; `None` when 0 turned it off.
    pub fn connection_idle_timeout(&self) -> Option<Duration> {
        Some(self.connection_idle_timeout).filter(|timeout| !timeout.is_zero())
    }

    /// The gRPC port's connection limits.
    pub fn connection_limits(&self) -> ConnectionSettings {
        ConnectionSettings {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer(),
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.connection_idle_timeout(),
        }
    }

    /// How much one subscription's filter may hold.
    pub fn filter_limits(&self) -> FilterSettings {
        FilterSettings {
            max_patterns: self.max_event_types,
            max_pattern_len: self.max_pattern_len,
        }
    }
}
