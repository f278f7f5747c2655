//! The command line: every knob of `serve` as a flag with an environment variable and a
//! documented default, plus the client subcommands.
//!
//! Owns: names, defaults and parsing. Does not own: acting on them (`app` does).

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::client::{
    CompletionsArgs, DeadLettersArgs, HistoryArgs, PublishArgs, SubscribeArgs, TokenArgs,
};

/// The version and the commit it was built from, as `--version` and the start-up log show them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NOTIFY_GIT_COMMIT"),
    ")"
);

/// What `--help` says about logging, after the flags.
const LOGGING_HELP: &str = "Logging: to stderr. RUST_LOG sets the level and per-module filters \
(default: info,lapin=off,opentelemetry=warn: the AMQP client's own error lines repeat what the \
server logs once itself), e.g. RUST_LOG=debug or RUST_LOG=info,notify_backbone::ingest=debug. \
--log-format json writes one JSON object per line for log collectors. Colours only when stderr \
is a terminal, and never with NO_COLOR set.";

/// notify-backbone: typed platform events, streamed over gRPC and grpc-web.
#[derive(Debug, Parser)]
#[command(
    name = "notify-backbone",
    version = VERSION,
    args_conflicts_with_subcommands = true,
    after_help = LOGGING_HELP
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How log lines are written: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(
        long,
        global = true,
        env = "NOTIFY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Server settings when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, fields, and the message.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    #[command(after_help = LOGGING_HELP)]
    Serve(Box<ServeConfig>),
    /// Subscribe to a server and print each message as one JSON line.
    #[command(after_help = LOGGING_HELP)]
    Subscribe(SubscribeArgs),
    /// Publish one event (a producer's JSON body) and print its id and cursor.
    #[command(after_help = LOGGING_HELP)]
    Publish(PublishArgs),
    /// Print stored events (`ListEvents`, page by page) as JSON lines.
    #[command(after_help = LOGGING_HELP)]
    History(HistoryArgs),
    /// List or replay the dead-letter queue's poison messages (talks to RabbitMQ, not to a
    /// server).
    #[command(subcommand_required = true, after_help = LOGGING_HELP)]
    DeadLetters(DeadLettersArgs),
    /// Mint a platform-style HS256 token (for development and tests).
    Token(TokenArgs),
    /// Print a shell completion script, e.g. `notify-backbone completions bash >
    /// ~/.local/share/bash-completion/completions/notify-backbone`.
    Completions(CompletionsArgs),
}

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

    /// Group commit: when an event reaches an idle journal writer, it waits this long for more
    /// before committing, so one commit (and one fsync) serves several events even at low
    /// rates. Costs up to this much latency; saves most of the CPU a commit per event costs
    /// (BENCHMARKS.md §9). 0 commits each event at once. At most 100ms.
    #[arg(long, env = "NOTIFY_COMMIT_DELAY", default_value = "2ms", value_parser = commit_delay, help_heading = "Journal")]
    pub commit_delay: Duration,

    /// Published events waiting for the sequencer. When full, `Publish` calls wait
    /// (backpressure) rather than fail or drop.
    #[arg(long, env = "NOTIFY_PUBLISH_QUEUE_LEN", default_value_t = 8192)]
    pub publish_queue_len: usize,

    /// Where the journal keeps its file (`journal.redb`); created if missing. Every accepted
    /// event is stored here before it is acknowledged or delivered.
    #[arg(
        long,
        env = "NOTIFY_DATA_DIR",
        default_value = "data",
        help_heading = "Journal"
    )]
    pub data_dir: std::path::PathBuf,

    /// When journal commits reach the disk: `fsync` (every commit waits for it; an acknowledged
    /// event survives any crash) or an interval such as `100ms` (synced in the background; a
    /// crash can lose up to that much of the latest, acknowledged, events).
    #[arg(long, env = "NOTIFY_DURABILITY", default_value = "fsync", value_parser = durability, help_heading = "Journal")]
    pub durability: crate::store::Durability,

    /// Events older than this are removed from the journal (in the background); a resume from
    /// before them gets a `Gap`.
    #[arg(long, env = "NOTIFY_RETENTION_AGE", default_value = "7d", value_parser = positive_duration, help_heading = "Journal")]
    pub retention_age: Duration,

    /// The journal's oldest events are removed while its records take more than this
    /// (`512MiB`, `10GiB`, or bytes).
    #[arg(long, env = "NOTIFY_RETENTION_BYTES", default_value = "1GiB", value_parser = byte_size, help_heading = "Journal")]
    pub retention_bytes: u64,

    /// How often retention is applied. Between runs the journal may exceed its limits by what
    /// arrives in this time.
    #[arg(long, env = "NOTIFY_RETENTION_INTERVAL", default_value = "10s", value_parser = positive_duration, help_heading = "Journal")]
    pub retention_interval: Duration,

    /// Memory the journal may use for its own page cache (`64MiB`, or bytes). More speeds up
    /// replays of old events; the operating system's page cache helps either way.
    #[arg(long, env = "NOTIFY_JOURNAL_CACHE", default_value = "64MiB", value_parser = byte_size, help_heading = "Journal")]
    pub journal_cache: u64,

    /// Space kept free on the journal's disk (`64MiB`, or bytes; 0: none). While less is
    /// available, new events are refused before they reach the file (`Publish` answers
    /// UNAVAILABLE, the AMQP ingest leaves its messages in the queue), the node reports not ready,
    /// and reads and open streams go on; writes resume by themselves once there is room. It must
    /// hold one commit (a batch of events): a disk that still fills up mid-commit makes the
    /// journal reopen its file, and it recovers the same way.
    #[arg(long, env = "NOTIFY_JOURNAL_MIN_FREE", default_value = "64MiB", value_parser = byte_size_or_zero, help_heading = "Journal")]
    pub journal_min_free: u64,

    /// How long an event id is remembered to recognise re-sent events (the outbox's re-sends,
    /// AMQP redeliveries). A re-send older than this is stored again.
    #[arg(long, env = "NOTIFY_DEDUPE_WINDOW", default_value = "24h", value_parser = positive_duration, help_heading = "Journal")]
    pub dedupe_window: Duration,

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

    /// Requests being answered at once, all methods (a stream counts until it has opened).
    /// Over it, calls are refused at once with RESOURCE_EXHAUSTED (load shedding) rather than
    /// queued. Health checks are exempt.
    #[arg(long, env = "NOTIFY_MAX_CONCURRENT_REQUESTS", default_value_t = 4096, value_parser = at_least_one, help_heading = "Limits")]
    pub max_concurrent_requests: usize,

    /// How long a call may take until its response starts: all of a `Publish`, the opening of
    /// a `Subscribe` (including a request that arrives too slowly). Over it: RESOURCE_EXHAUSTED.
    #[arg(long, env = "NOTIFY_REQUEST_TIMEOUT", default_value = "10s", value_parser = positive_duration, help_heading = "Limits")]
    pub request_timeout: Duration,

    /// Refuse events of a known family whose routing key has no typed message, instead of
    /// delivering them with an untyped payload.
    #[arg(long, env = "NOTIFY_STRICT_SCHEMA")]
    pub strict_schema: bool,

    /// A stream that sent nothing for this long gets a Heartbeat message.
    #[arg(long, env = "NOTIFY_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = positive_duration)]
    pub heartbeat_interval: Duration,

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

    /// The platform's shared HS256 secret that signs its tokens. Give this, `--jwt-public-key`
    /// or `--jwt-jwks`; without any the server starts only with `--dev`.
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        help_heading = "Authentication"
    )]
    pub jwt_secret: Option<String>,

    /// A PEM public key (RSA for RS256, P-256 for ES256) that verifies the tokens.
    #[arg(long, env = "NOTIFY_JWT_PUBLIC_KEY", help_heading = "Authentication")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// A JWKS file (`{"keys": [...]}`, RSA or P-256 keys) that verifies the tokens, by `kid`.
    #[arg(long, env = "NOTIFY_JWT_JWKS", help_heading = "Authentication")]
    pub jwt_jwks: Option<std::path::PathBuf>,

    /// The issuer (`iss`) tokens must carry.
    #[arg(long, env = "NOTIFY_JWT_ISSUER", default_value = crate::auth::DEFAULT_ISSUER, help_heading = "Authentication")]
    pub jwt_issuer: String,

    /// The audience (`aud`) tokens must carry.
    #[arg(long, env = "NOTIFY_JWT_AUDIENCE", default_value = crate::auth::DEFAULT_AUDIENCE, help_heading = "Authentication")]
    pub jwt_audience: String,

    /// Clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, env = "NOTIFY_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Authentication")]
    pub jwt_leeway: Duration,

    /// Roles that see every user's events, the firehose and the admin feed (repeat, or
    /// comma-separated).
    #[arg(
        long = "admin-role",
        env = "NOTIFY_ADMIN_ROLES",
        value_delimiter = ',',
        default_value = "admin,super_admin",
        help_heading = "Authentication"
    )]
    pub admin_roles: Vec<String>,

    /// Roles that may call `Publish` (as may any token with the `notification.publish`
    /// permission).
    #[arg(
        long = "publish-role",
        env = "NOTIFY_PUBLISH_ROLES",
        value_delimiter = ',',
        default_value = "service,super_admin",
        help_heading = "Authentication"
    )]
    pub publish_roles: Vec<String>,

    /// Development mode: without a configured key, sign and verify tokens with the secret in
    /// `.notify-backbone/dev-jwt-secret` of the working directory (generated by the first
    /// `--dev` server there, reused by later ones), where `notify-backbone token` finds it.
    /// Never in production.
    #[arg(long, env = "NOTIFY_DEV", help_heading = "Authentication")]
    pub dev: bool,

    /// TLS for the gRPC and grpc-web port: the certificate chain, PEM. Needs `--tls-key`.
    /// Without it the port speaks plain text (fine on loopback or behind a TLS-terminating
    /// proxy).
    #[arg(
        long,
        env = "NOTIFY_TLS_CERT",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS: the private key of `--tls-cert`, PEM.
    #[arg(
        long,
        env = "NOTIFY_TLS_KEY",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Export OpenTelemetry traces over OTLP/gRPC to this collector, e.g.
    /// `http://otel-collector:4317`; off when unset (no cost then). Without the flag,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT. The other standard
    /// variables apply: OTEL_SERVICE_NAME (default notify-backbone), OTEL_RESOURCE_ATTRIBUTES,
    /// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default: follow the producer's sampling
    /// decision, sample events without one), OTEL_BSP_* (the export queue); OTEL_SDK_DISABLED=true
    /// or OTEL_TRACES_EXPORTER=none turn it off.
    #[arg(long, help_heading = "Tracing")]
    pub otlp_endpoint: Option<String>,

    /// AMQP ingest: the RabbitMQ broker to consume the platform's events from, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (the vhost is URL-encoded: `%2f` is `/`). Without
    /// it the server runs embedded, with `Publish` as its only ingest.
    #[arg(long, env = "AMQP_URL", help_heading = "AMQP ingest")]
    pub amqp_url: Option<String>,

    /// This node's id: its queue is `notify-backbone.<node-id>`, so each node receives every
    /// event. Must stay the same across restarts, or the old queue is orphaned (until
    /// `--queue-expires`). Default: the host name.
    #[arg(long, env = "NOTIFY_NODE_ID", value_parser = node_id, help_heading = "AMQP ingest")]
    pub node_id: Option<String>,

    /// The producers' topic exchange (declared durable if absent).
    #[arg(long, env = "NOTIFY_EXCHANGE", default_value = crate::ingest::topology::DEFAULT_EXCHANGE, help_heading = "AMQP ingest")]
    pub exchange: String,

    /// Routing keys bound from the exchange to this node's queue. Repeat the flag or separate
    /// with commas. Bindings are only ever added: remove an old one in RabbitMQ yourself.
    #[arg(
        long = "bind",
        env = "NOTIFY_BINDINGS",
        value_delimiter = ',',
        default_values_t = crate::ingest::topology::DEFAULT_BINDINGS.map(String::from),
        help_heading = "AMQP ingest"
    )]
    pub bindings: Vec<String>,

    /// The broker deletes this node's queue after it has been unused (no consumer) this long,
    /// so a retired node's queue does not fill up forever. A node down for longer loses what
    /// was queued for it. Changing it for an existing queue needs the queue deleted first
    /// (RabbitMQ refuses to redeclare with other arguments).
    #[arg(long, env = "NOTIFY_QUEUE_EXPIRES", default_value = "24h", value_parser = positive_duration, help_heading = "AMQP ingest")]
    pub queue_expires: Duration,

    /// The exchange poison messages are published to, with their reason in headers.
    #[arg(long, env = "NOTIFY_DEAD_LETTER_EXCHANGE", default_value = crate::ingest::topology::DEFAULT_DEAD_LETTER_EXCHANGE, help_heading = "AMQP ingest")]
    pub dead_letter_exchange: String,

    /// The durable queue that keeps poison messages for inspection and replay.
    #[arg(long, env = "NOTIFY_DEAD_LETTER_QUEUE", default_value = crate::ingest::topology::DEFAULT_DEAD_LETTER_QUEUE, help_heading = "AMQP ingest")]
    pub dead_letter_queue: String,

    /// Deliveries RabbitMQ may have outstanding to this node, unacknowledged. Higher keeps the
    /// pipe full and lets acks be batched (more throughput); each one holds its message body in
    /// this process until it is acked (memory: about prefetch × message size) and is redelivered
    /// after a crash.
    #[arg(long, env = "NOTIFY_PREFETCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..), help_heading = "AMQP ingest")]
    pub prefetch: u16,

    /// Where events are journaled: `redb` (one node; a file under --data-dir; no broker needed)
    /// or `rabbitmq-stream` (cluster mode: several nodes share one journal, a RabbitMQ stream;
    /// needs --amqp-url; each node keeps a replica of it under --data-dir).
    #[arg(long, value_enum, env = "NOTIFY_JOURNAL", default_value_t = JournalKind::Redb, help_heading = "Cluster")]
    pub journal: JournalKind,

    /// Cluster mode: the RabbitMQ stream that is the shared journal. Its retention is
    /// --retention-age and --retention-bytes (`x-max-age`, `x-max-length-bytes`), set when the
    /// stream is created; later changes need a RabbitMQ policy.
    #[arg(long, env = "NOTIFY_STREAM", default_value = crate::cluster::DEFAULT_STREAM, help_heading = "Cluster")]
    pub stream: String,

    /// Cluster mode: the quorum queue, shared by all nodes, that the producers' events (and
    /// `Publish` calls of every node) go through to the one node writing the stream; bound to
    /// --exchange with --bind. One node at a time consumes it (single active consumer).
    #[arg(long, env = "NOTIFY_INGEST_QUEUE", default_value = crate::cluster::DEFAULT_INGEST_QUEUE, help_heading = "Cluster")]
    pub ingest_queue: String,

    /// Cluster mode: the stream's segment size (`x-stream-max-segment-size-bytes`, RabbitMQ's
    /// default 500 MB when not given). Retention removes whole segments, so small segments make
    /// it act sooner.
    #[arg(long, env = "NOTIFY_STREAM_SEGMENT_BYTES", value_parser = byte_size, help_heading = "Cluster")]
    pub stream_segment_bytes: Option<u64>,

    /// Longest pause between attempts to reconnect to the broker (the pause doubles from
    /// 100 ms up to this, with jitter).
    #[arg(long, env = "NOTIFY_RECONNECT_MAX_BACKOFF", default_value = "30s", value_parser = positive_duration, help_heading = "AMQP ingest")]
    pub reconnect_max_backoff: Duration,
}

/// Where events are journaled (`--journal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JournalKind {
    /// One node: a redb file under `--data-dir`.
    Redb,
    /// Cluster mode: a RabbitMQ stream shared by every node.
    RabbitmqStream,
}

/// A node id: letters, digits, `.`, `_` and `-`, at most 200 of them (it goes into a queue name,
/// which RabbitMQ limits to 255 bytes).
fn node_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 200
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("use 1 to 200 letters, digits, '.', '_' or '-'".into())
    }
}

impl ServeConfig {
    /// `--replay-readers`, or half the CPUs (at least one).
    pub fn replay_readers(&self) -> usize {
        self.replay_readers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        })
    }

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

    /// Where traces are exported, if anywhere: `--otlp-endpoint`, else
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT (the specification's
    /// order, an explicit flag first); `None` when OTEL_SDK_DISABLED=true or
    /// OTEL_TRACES_EXPORTER=none.
    pub fn otlp_traces_endpoint(&self) -> Option<String> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        self.otlp_endpoint
            .clone()
            .filter(|endpoint| !endpoint.trim().is_empty())
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }

    /// The node id: `--node-id`, else the host name, else `local`.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        // A host name may hold characters a queue name should not; keep the safe ones.
        let id: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(200)
            .collect();
        if id.is_empty() { "local".into() } else { id }
    }
}

impl Default for ServeConfig {
    /// The documented defaults, ignoring `NOTIFY_*` environment variables, so tests and embedders
    /// get the same configuration on every machine.
    fn default() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["notify-backbone"])
            .expect("the built-in defaults parse");
        Cli::from_arg_matches(&matches)
            .expect("the built-in defaults parse")
            .serve
    }
}

/// The least default of `--max-connections-per-peer`, however small `--max-connections` is:
/// room for a browser's handful of connections and a few more clients behind one NAT address.
pub const MIN_DEFAULT_CONNECTIONS_PER_PEER: usize = 16;

/// A size: bytes, or a number with `KiB`, `MiB` or `GiB`.
fn byte_size(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    number
        .parse::<u64>()
        .map_err(|e| e.to_string())?
        .checked_mul(factor)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| "must be greater than zero and fit in 64 bits".into())
}

/// A size as [`byte_size`] reads it, where 0 is allowed (it turns the bound off).
fn byte_size_or_zero(text: &str) -> Result<u64, String> {
    if text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        == "0"
    {
        return Ok(0);
    }
    byte_size(text)
}

/// `fsync`, or an interval between syncs.
fn durability(text: &str) -> Result<crate::store::Durability, String> {
    if text == "fsync" {
        return Ok(crate::store::Durability::EveryCommit);
    }
    positive_duration(text)
        .map(crate::store::Durability::Interval)
        .map_err(|e| format!("expected `fsync` or an interval like `100ms`: {e}"))
}

/// `--max-event-bytes`: from 1 KiB (room for any real event) up to
/// [`crate::schema::MAX_EVENT_BYTES_CEILING`].
fn event_bytes(text: &str) -> Result<usize, String> {
    const FLOOR: u64 = 1024;
    let ceiling = crate::schema::MAX_EVENT_BYTES_CEILING;
    let bytes = byte_size(text)?;
    if bytes < FLOOR || bytes > ceiling as u64 {
        return Err(format!(
            "must be between {FLOOR} and {ceiling} bytes (4MiB - 64KiB): a default gRPC client \
             cannot receive a larger event"
        ));
    }
    usize::try_from(bytes).map_err(|e| e.to_string())
}

/// A count of at least one (a limit of zero would refuse everything).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// A duration greater than zero (`15s`, `500ms`).
/// The most `--commit-delay` may be: beyond it the delay is a stall, not a batching window.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);

fn commit_delay(text: &str) -> Result<Duration, String> {
    let delay = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if delay > MAX_COMMIT_DELAY {
        return Err(format!(
            "at most {}",
            humantime::format_duration(MAX_COMMIT_DELAY)
        ));
    }
    Ok(delay)
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than zero".into()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = ServeConfig::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.subscriber_queue_len, 1024);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(config.commit_delay, Duration::from_millis(2));
        assert!(!config.strict_schema);
        assert_eq!(config.amqp_url, None);
        assert_eq!(config.exchange, "cloudphone.events");
        assert_eq!(
            config.bindings,
            ["quota.#", "billing.#", "app.#", "device.#"]
        );
        assert_eq!(config.prefetch, 256);
        assert!(!config.node_id().is_empty());
        // Written comma-separated (as `--help` shows them and the README writes them), they are
        // the policy's defaults.
        assert_eq!(config.admin_roles, crate::auth::DEFAULT_ADMIN_ROLES);
        assert_eq!(config.publish_roles, crate::auth::DEFAULT_PUBLISH_ROLES);
    }

    #[test]
    fn help_shows_list_defaults_comma_separated() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("[default: admin,super_admin]"), "{help}");
        assert!(help.contains("[default: service,super_admin]"), "{help}");
    }

    #[test]
    fn node_ids_that_would_make_odd_queue_names_are_refused() {
        for bad in ["", "a b", "a/b", "ünï"] {
            let parsed = Cli::try_parse_from(["notify-backbone", "--node-id", bad]);
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
        let parsed = Cli::try_parse_from(["notify-backbone", "--node-id", "node-1.eu_west"]);
        assert_eq!(
            parsed.map(|cli| cli.serve.node_id()).ok().as_deref(),
            Some("node-1.eu_west")
        );
    }

    #[test]
    fn a_tls_certificate_needs_its_key_and_the_other_way_round() {
        assert!(Cli::try_parse_from(["notify-backbone", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["notify-backbone", "--tls-key", "k.pem"]).is_err());
        assert!(
            Cli::try_parse_from([
                "notify-backbone",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem"
            ])
            .is_ok()
        );
    }

    #[test]
    fn bindings_repeat_or_split_on_commas() {
        let parsed = Cli::try_parse_from([
            "notify-backbone",
            "--bind",
            "quota.#,app.#",
            "--bind",
            "device.error",
        ])
        .map(|cli| cli.serve.bindings);
        assert_eq!(
            parsed.ok(),
            Some(vec![
                "quota.#".into(),
                "app.#".into(),
                "device.error".into()
            ])
        );
    }

    #[test]
    fn the_event_size_limit_stays_within_what_clients_can_receive() {
        let parse = |value: &str| {
            Cli::try_parse_from(["notify-backbone", "--max-event-bytes", value])
                .map(|cli| cli.serve.max_event_bytes)
        };
        assert_eq!(parse("64KiB").ok(), Some(64 * 1024));
        assert_eq!(parse("4128768").ok(), Some(4 * 1024 * 1024 - 64 * 1024));
        assert!(
            parse("4MiB").is_err(),
            "above what a default client receives"
        );
        assert!(parse("16MiB").is_err());
        assert!(parse("0").is_err());
        // The old name still works.
        let old = Cli::try_parse_from(["notify-backbone", "--max-publish-bytes", "2048"]);
        assert_eq!(old.map(|cli| cli.serve.max_event_bytes).ok(), Some(2048));
        assert_eq!(
            ServeConfig::default().max_event_bytes,
            crate::schema::DEFAULT_MAX_EVENT_BYTES
        );
    }

    #[test]
    fn a_commit_delay_above_the_limit_is_refused() {
        let parse = |delay: &str| Cli::try_parse_from(["notify-backbone", "--commit-delay", delay]);
        assert_eq!(
            parse("0").map(|cli| cli.serve.commit_delay).ok(),
            Some(Duration::ZERO)
        );
        assert!(parse("100ms").is_ok());
        assert!(parse("101ms").is_err());
    }

    #[test]
    fn the_per_peer_cap_defaults_to_a_tenth_of_the_connections_and_0_turns_it_off() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["notify-backbone"], args].concat()).unwrap();
            cli.serve.max_connections_per_peer()
        };
        assert_eq!(
            ServeConfig::default().max_connections_per_peer(),
            Some(1000)
        );
        assert_eq!(parse(&["--max-connections", "200"]), Some(20));
        assert_eq!(parse(&["--max-connections", "50"]), Some(16));
        assert_eq!(parse(&["--max-connections-per-peer", "3"]), Some(3));
        assert_eq!(parse(&["--max-connections-per-peer", "0"]), None);
    }

    #[test]
    fn the_idle_timeout_defaults_to_five_minutes_and_0_turns_it_off() {
        assert_eq!(
            ServeConfig::default().connection_idle_timeout(),
            Some(Duration::from_secs(300))
        );
        let cli =
            Cli::try_parse_from(["notify-backbone", "--connection-idle-timeout", "0"]).unwrap();
        assert_eq!(cli.serve.connection_idle_timeout(), None);
    }

    #[test]
    fn a_zero_heartbeat_interval_is_refused() {
        let parsed = Cli::try_parse_from(["notify-backbone", "--heartbeat-interval", "0s"]);
        assert!(parsed.is_err());
        assert!(
            Cli::try_parse_from(["notify-backbone", "serve", "--heartbeat-interval", "250ms"])
                .is_ok()
        );
    }
}
