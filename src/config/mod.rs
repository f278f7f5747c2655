//! The flags of `serve`: every knob as a flag with an environment variable and a documented
//! default, grouped as `--help` shows them, each group beside the settings it produces.
//!
//! Owns: names, defaults, parsing, and the translation of flags into the settings structs the
//! stages take ([`JournalFlags::settings`], [`ServeConfig::hub_settings`], ...). Does not own:
//! acting on them (`app` does: it reads key files, opens the journal, starts the stages), nor
//! the command line around `serve` (`cli`).
//!
//! The flags without a `--help` heading are [`ServeConfig`]'s own; each heading is a group of its
//! own, flattened into it in the order `--help` shows the headings ([`JournalFlags`] "Journal",
//! [`LimitsFlags`] "Limits", [`AuthFlags`] "Authentication", [`TlsFlags`] "TLS",
//! [`TracingFlags`] "Tracing", [`AmqpFlags`] "AMQP ingest", [`ClusterFlags`] "Cluster"). Clap
//! lists a heading's flags in the order they are declared and the headings in the order they
//! first appear, so moving a flag between groups, or reordering the groups, changes `--help`.

mod amqp;
mod auth;
mod cluster;
mod journal;
mod limits;
mod otlp;
mod parse;
mod tls;

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use parse::{at_least_one, positive_duration};

pub use amqp::AmqpFlags;
pub use auth::AuthFlags;
pub use cluster::{ClusterFlags, JournalKind};
pub use journal::{JournalFlags, MAX_CHECKPOINT_INTERVAL, MAX_COMMIT_DELAY};
pub use limits::LimitsFlags;
pub use otlp::TracingFlags;
pub use parse::ValueError;
pub use tls::TlsFlags;

use crate::{
    hub::HubSettings, ingest::IngestSettings, otel::Tracing, schema::DecodeSettings,
    sequencer::SequencerSettings,
};

/// The version and the commit it was built from, as `--version` and the start-up log show them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NOTIFY_GIT_COMMIT"),
    ")"
);

/// Everything `serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Validate the configuration (flags, key and TLS files, the broker URL's syntax, the
    /// journal directory) and exit: 0 and a one-line summary if `serve` would start with it, 1
    /// and the reason if not. Nothing is started, bound or created. In cluster mode it also
    /// asks the broker (at most 5 s) what `--stream` and `--ingest-queue` hold: whether they
    /// exist, their message and consumer counts, the stream's epoch and offsets, so names in use
    /// by another deployment show before a node joins them; a broker it cannot reach is
    /// reported, not a failure.
    #[arg(long)]
    pub check: bool,

    /// Address of the gRPC and grpc-web port.
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the HTTP port serving `/metrics`.
    #[arg(long, env = "NOTIFY_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// Origins allowed to call over grpc-web from a browser (CORS), e.g.
    /// `https://console.example.com`. Repeat the flag or separate with commas. `*` allows any
    /// origin. None: browsers on other origins are refused (same-origin and non-browser clients
    /// are unaffected), except that `--dev` then allows pages on localhost, 127.0.0.1 and
    /// [::1], any port.
    #[arg(
        long = "cors-origin",
        env = "NOTIFY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Serve the live notification page at `/` of this (the gRPC) port: it subscribes over
    /// grpc-web with a token pasted in or given as `?token=`. On by default with `--dev`,
    /// off otherwise; `--web=false` turns it off.
    #[arg(long, env = "NOTIFY_WEB", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub web: Option<bool>,

    /// Live frames one subscriber may have queued. A subscriber that falls this far behind
    /// continues from the journal at its own pace and rejoins the live feed when caught up; it
    /// never slows anyone else and loses nothing. Memory per subscriber is bounded by this many
    /// shared frames (each a reference to one encoded event) plus one replay batch.
    #[arg(long, env = "NOTIFY_SUBSCRIBER_QUEUE_LEN", default_value_t = 1024)]
    pub subscriber_queue_len: usize,

    /// Journal reads for replays (resumes, lagging subscribers) that run at once, each on a
    /// thread of its own and each bounded (4,096 stored events examined); more wait their turn.
    /// `ListEvents` pages have as many readers of their own. This caps what a storm of resumes
    /// can take from live delivery: it is slow for those who replay, not for the others.
    /// Default: half the CPUs, at least one.
    #[arg(long, env = "NOTIFY_REPLAY_READERS", value_parser = at_least_one)]
    pub replay_readers: Option<usize>,

    /// Published events waiting for the sequencer. When full, `Publish` calls wait
    /// (backpressure) rather than fail or drop.
    #[arg(long, env = "NOTIFY_PUBLISH_QUEUE_LEN", default_value_t = 8192)]
    pub publish_queue_len: usize,

    /// Refuse events of a known family whose routing key has no typed message, instead of
    /// delivering them with an untyped payload.
    #[arg(long, env = "NOTIFY_STRICT_SCHEMA")]
    pub strict_schema: bool,

    /// A stream that sent nothing for this long gets a Heartbeat message.
    #[arg(long, env = "NOTIFY_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = positive_duration)]
    pub heartbeat_interval: Duration,

    /// On an admin-feed stream that asked for `conflate`, admin notices of one source type and
    /// cause (e.g. `device.error` of one `errorType`) within this long of the first become one
    /// notice with a count and sample ids; such a stream holds what follows a burst's first
    /// notice until the window ends. `0s`: never coalesce.
    #[arg(long, env = "NOTIFY_NOTICE_COALESCE_WINDOW", default_value = "2s", value_parser = humantime::parse_duration)]
    pub notice_coalesce_window: Duration,

    /// HTTP/2 keepalive ping interval; a connection that does not answer within
    /// `--http2-keepalive-timeout` is closed.
    #[arg(long, env = "NOTIFY_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long an HTTP/2 keepalive ping may go unanswered.
    #[arg(long, env = "NOTIFY_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// On SIGINT/SIGTERM: how long open streams and calls get to finish before the server
    /// stops anyway. The AMQP ingest gets the first half to settle and ack its in-flight
    /// deliveries; what it cannot settle goes back to the queue unacknowledged.
    #[arg(long, env = "NOTIFY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// The journal: where, how durable, how long kept (`--help` heading "Journal").
    #[command(flatten)]
    pub journal: JournalFlags,

    /// What one client may ask of the server ("Limits").
    #[command(flatten)]
    pub limits: LimitsFlags,

    /// How tokens are checked and what they allow ("Authentication").
    #[command(flatten)]
    pub auth: AuthFlags,

    /// TLS on the gRPC port ("TLS").
    #[command(flatten)]
    pub tls: TlsFlags,

    /// OpenTelemetry tracing ("Tracing").
    #[command(flatten)]
    pub tracing: TracingFlags,

    /// The AMQP ingest: the broker, this node's queue, dead letters ("AMQP ingest").
    #[command(flatten)]
    pub amqp: AmqpFlags,

    /// Cluster mode: the journal on a RabbitMQ stream ("Cluster").
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

impl ServeConfig {
    /// `--replay-readers`, or half the CPUs (at least one).
    pub fn replay_readers(&self) -> usize {
        self.replay_readers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        })
    }

    /// The hub's settings: subscriber queues, journal readers, heartbeats.
    pub fn hub_settings(&self) -> HubSettings {
        HubSettings {
            queue_len: self.subscriber_queue_len,
            replay_readers: self.replay_readers(),
            heartbeat_interval: self.heartbeat_interval,
            notice_coalesce_window: self.notice_coalesce_window,
        }
    }

    /// The sequencer's settings: its queue, and the group commit's delay (a "Journal" flag).
    pub fn sequencer_settings(&self) -> SequencerSettings {
        SequencerSettings {
            queue_len: self.publish_queue_len,
            commit_delay: self.journal.commit_delay,
        }
    }

    /// The AMQP ingest's settings, consuming from `url` (`--amqp-url`, or in cluster mode the
    /// broker of the stream).
    pub fn ingest_settings(&self, url: &str, tracing: &Tracing) -> IngestSettings {
        // Half the grace: the streams still need the other half to flush what it acked.
        self.amqp
            .ingest_settings(url, self.decode_options(), self.shutdown_grace / 2, tracing)
    }

    /// What decoding accepts, the same on every ingest path.
    pub fn decode_options(&self) -> DecodeSettings {
        DecodeSettings {
            strict_schema: self.strict_schema,
            max_event_bytes: self.limits.max_event_bytes,
        }
    }
}

impl Default for ServeConfig {
    /// The documented defaults, ignoring `NOTIFY_*` environment variables, so tests and embedders
    /// get the same configuration on every machine.
    fn default() -> Self {
        use clap::FromArgMatches as _;
        let command =
            Self::augment_args(clap::Command::new("notify-backbone")).mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["notify-backbone"])
            .expect("the built-in defaults parse");
        Self::from_arg_matches(&matches).expect("the built-in defaults parse")
    }
}

#[cfg(test)]
mod tests;
