//! The load generator (`notify-bench`), whose figures go into `BENCHMARKS.md`.
//!
//! Owns: the benchmark scenarios (`per-user`, `firehose`, `idle`, …), their timeline (open the
//! streams → warm up → measure → drain → report) and what counts as a valid figure. It talks to
//! a running server over loopback like any other client — publishing with the `Publish` RPC, or
//! (`--via amqp`) through a RabbitMQ on this machine the way the platform's producers do — and
//! reads the server's memory and CPU time from `/proc` when given its PID; it never reaches into
//! the server.
//!
//! Latency needs no clock agreement: publishers and subscribers live in this one process, so
//! every published `eventId` carries its send instant as nanoseconds since this process's
//! [`RunClock`] started, and a subscriber computes the latency from the received `Event.id`
//! alone — no map from ids to send times, nothing shared on the hot path.
//!
//! | submodule      | owns                                                                 |
//! |----------------|----------------------------------------------------------------------|
//! | [`subscriber`] | opening streams with bounded concurrency, reading them, counting     |
//! | [`latency`]    | sharded HDR histograms, fed in batches instead of a lock per event   |
//! | [`publisher`]  | the open-loop timetable, the producer JSON body, the `Publish` calls |
//! | [`amqp`]       | `--via amqp`: the exchange, confirm-mode channels, producer messages |
//! | [`replay`]     | `--scenario replay`: one stream catching up on the whole journal     |
//! | [`storm`]      | `--scenario resume-storm`: many resumes over a full journal, looping |
//! | [`inbox`]      | `--scenario inbox`: a filled journal's inbox calls, and their cost   |
//! | [`conflation`] | `--scenario conflation`: a console's catch-up after a quota storm    |
//! | [`rss`]        | the server's resident memory (`VmRSS`), once and every second        |
//! | [`cpu`]        | the server's CPU time over the measurement window, per event         |
//! | [`report`]     | the table, the JSON object, the progress line, the verdict           |

mod amqp;
mod conflation;
mod cpu;
mod handoffs;
mod inbox;
mod latency;
mod publisher;
mod replay;
mod report;
mod rss;
mod storm;
mod subscriber;

use std::{
    net::IpAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, ValueEnum};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::{Channel, Endpoint, Uri},
};

use notify_backbone::pb::notification_service_client::NotificationServiceClient;

use self::{
    latency::Recorder,
    publisher::{PublishPlan, PublisherStats, TargetUsers, Transport},
    report::Report,
    subscriber::{StreamOutcome, SubscribePlan},
};

/// How long one TCP connect plus HTTP/2 handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopped subscriber tasks get to hand in their counts before they are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the wait for first messages looks at the counters.
const READY_POLL: Duration = Duration::from_millis(50);
/// HTTP/2 flow-control credit per subscriber stream and per subscriber connection. Credit is not
/// memory: h2 only buffers what arrived and was not read yet. Large windows keep the loadgen's
/// flow control from ever being what slows a firehose down.
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// `--publish-window` with `--via grpc`: a `Publish` answers only after the journal's commit
/// (an fsync, a few milliseconds), so a publisher needs many calls in flight to keep its
/// timetable: with 16 each, 4 publishers could not send more than ~15,000/s, whatever the server.
const GRPC_PUBLISH_WINDOW: usize = 128;
/// `--publish-window` with `--via amqp`: messages awaiting their confirm. A confirm for a
/// persistent message comes only once the broker has handed it to its queues (and a durable
/// queue to its disk or its consumer), so a publisher that is to keep its timetable needs rate ×
/// confirm time in flight. Measured on the 2-core machine (4 publishers, per-user): confirm p99
/// 5 ms at 2,000 events/s, 13–29 ms at 4,000/s, ~100 ms at 5,000/s near the broker's ceiling —
/// about 125 in flight per publisher at the p99. 1024 leaves room for the broker's stalls and
/// still bounds what a broker that stops confirming can pile up here: each slot is a small task
/// and a confirm promise (the body is on the socket already), well under 1 MiB per publisher.
const AMQP_PUBLISH_WINDOW: usize = 1024;

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Subscriber i subscribes as user `lg-user-{i}`; each event goes to one random user.
    PerUser,
    /// Every subscriber subscribes to `*`; every event reaches all of them.
    Firehose,
    /// Open the streams, publish nothing, report the server's memory per idle stream.
    Idle,
    /// One stream replays the journal's whole backlog; reports events per second.
    Replay,
    /// `per-user`, while `--resumes` streams replay a journal of `--journal-events` they own
    /// nothing of, over and over: what a resume storm costs the live streams.
    ResumeStorm,
    /// Fill the journal with `--journal-events` events of `--users` users through
    /// `PublishStream`, then time `GetInboxCounts`, `ListInbox` and `MarkInbox` of random users
    /// at the `--inbox-*-rate`s (with `--inbox-publish`, while publishers publish).
    Inbox,
    /// Publish `--journal-events` `quota.updated` for `--quotas` quotas of one user (a storm),
    /// then time that user's catch-up to `CaughtUp` without and with `conflate`, `--runs` times.
    Conflation,
}

impl Scenario {
    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            Scenario::PerUser => "per-user",
            Scenario::Firehose => "firehose",
            Scenario::Idle => "idle",
            Scenario::Replay => "replay",
            Scenario::ResumeStorm => "resume-storm",
            Scenario::Inbox => "inbox",
            Scenario::Conflation => "conflation",
        }
    }
}

/// How the publishers hand events to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The `Publish` RPC: one unary call per event.
    Grpc,
    /// RabbitMQ: persistent messages to the producers' exchange, with publisher confirms; the
    /// server's AMQP ingest consumes them.
    Amqp,
}

impl Via {
    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            Via::Grpc => "grpc",
            Via::Amqp => "amqp",
        }
    }
}

/// How `--via grpc` publishers call the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishMode {
    /// One `Publish` call per event.
    Unary,
    /// One `PublishStream` per publisher, one request per event.
    Stream,
}

/// Arguments of `loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// The server's gRPC URL. Loopback only: the figures are about a server on this machine.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// More servers (the other nodes of a cluster): the subscriber connections are spread over
    /// --server and these, round-robin, so each node serves its share of the streams. Repeat the
    /// flag or separate with commas. Loopback only, like --server.
    #[arg(
        long = "also-server",
        value_delimiter = ',',
        env = "NOTIFY_LOADGEN_ALSO_SERVERS"
    )]
    pub also_servers: Vec<String>,

    /// PIDs of the --also-server nodes (or of any other process on this machine): the CPU time
    /// of each over the measurement window is reported beside --server-pid's.
    #[arg(
        long = "also-server-pid",
        value_delimiter = ',',
        env = "NOTIFY_LOADGEN_ALSO_SERVER_PIDS"
    )]
    pub also_server_pids: Vec<u32>,

    /// What to measure: one of the scenarios listed below (`idle` needs --server-pid).
    #[arg(long, value_enum, default_value_t = Scenario::PerUser, env = "NOTIFY_LOADGEN_SCENARIO")]
    pub scenario: Scenario,

    /// `resume-storm`: streams that resume from the journal's first position at once (each as
    /// a user owning none of its events), and start over whenever they are caught up.
    #[arg(long, default_value_t = 60, env = "NOTIFY_LOADGEN_RESUMES")]
    pub resumes: usize,

    /// `resume-storm` and `inbox`: the journal is filled up to this many events before the run
    /// (`resume-storm`: events of users nobody in the run subscribes as; `inbox`: events of
    /// --users, published through `PublishStream` as fast as the server takes them).
    #[arg(long, default_value_t = 300_000, env = "NOTIFY_LOADGEN_JOURNAL_EVENTS")]
    pub journal_events: u64,

    /// `inbox`: the users the fill gives its events to, in turn (`lg-user-0`, `lg-user-1`, …;
    /// `--journal-events` / `--users` events each), and whose inboxes the calls are about, a
    /// random one per call.
    #[arg(long, default_value_t = 100_000, env = "NOTIFY_LOADGEN_USERS")]
    pub users: u64,

    /// `conflation`: the quotas the storm updates in turn.
    #[arg(long, default_value_t = 1000, env = "NOTIFY_LOADGEN_QUOTAS")]
    pub quotas: u64,

    /// `conflation`: how many times each catch-up is timed (the median is reported).
    #[arg(long, default_value_t = 3, env = "NOTIFY_LOADGEN_RUNS")]
    pub runs: usize,

    /// `inbox`: stop after the fill, e.g. to restart the server with other flags (a fill with
    /// `--durability 100ms`, the measurement with `fsync`) before measuring on the same journal.
    #[arg(long, env = "NOTIFY_LOADGEN_FILL_ONLY")]
    pub fill_only: bool,

    /// `inbox`: `GetInboxCounts` calls per second (each of a random user, with that user's
    /// token), spread over --inbox-clients clients; 0: none.
    #[arg(long, default_value_t = 200, env = "NOTIFY_LOADGEN_INBOX_COUNTS_RATE")]
    pub inbox_counts_rate: u64,

    /// `inbox`: `ListInbox` calls per second, each the newest page (--inbox-page items) of a
    /// random user's inbox; 0: none.
    #[arg(long, default_value_t = 200, env = "NOTIFY_LOADGEN_INBOX_LIST_RATE")]
    pub inbox_list_rate: u64,

    /// `inbox`: `MarkInbox` calls per second, each marking all of a random user's inbox read
    /// (`READ`, `all`); 0: none. Each is a write through the journal's one writer. The server
    /// allows --max-inbox-rate marks per second per user: with many users that is never hit.
    #[arg(long, default_value_t = 50, env = "NOTIFY_LOADGEN_INBOX_MARK_RATE")]
    pub inbox_mark_rate: u64,

    /// `inbox`: clients per kind of call, each on its own HTTP/2 connection with one call in
    /// flight; a kind's rate is spread over its clients.
    #[arg(long, default_value_t = 2, env = "NOTIFY_LOADGEN_INBOX_CLIENTS")]
    pub inbox_clients: usize,

    /// `inbox`: the page size of the `ListInbox` calls.
    #[arg(long, default_value_t = 20, env = "NOTIFY_LOADGEN_INBOX_PAGE")]
    pub inbox_page: u32,

    /// `inbox`: the publishers also publish during the warmup and the window, through
    /// `PublishStream`, at --rate (0: as fast as the server takes them), to random users of
    /// --users: what the writer sustains with the calls' marks mixed in.
    #[arg(long, env = "NOTIFY_LOADGEN_INBOX_PUBLISH")]
    pub inbox_publish: bool,

    /// Subscriber streams to open.
    #[arg(long, default_value_t = 1000, env = "NOTIFY_LOADGEN_SUBSCRIBERS")]
    pub subscribers: usize,

    /// HTTP/2 connections the subscriber streams share, round-robin. A server may cap the
    /// streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); if streams fail to
    /// open, use more connections.
    #[arg(long, default_value_t = 10, env = "NOTIFY_LOADGEN_CONNECTIONS")]
    pub connections: usize,

    /// How publishers hand events to the server: `grpc` (the `Publish` RPC) or `amqp` (through
    /// RabbitMQ at --amqp-url, as the platform's producers do; the server must consume from it).
    #[arg(long, value_enum, default_value_t = Via::Grpc, env = "NOTIFY_LOADGEN_VIA")]
    pub via: Via,

    /// `--via grpc`: `unary` (a `Publish` call per event) or `stream` (each publisher sends its
    /// events on one `PublishStream`, the token checked once). `inbox` always streams.
    #[arg(long, value_enum, default_value_t = PublishMode::Unary, env = "NOTIFY_LOADGEN_PUBLISH_MODE")]
    pub publish_mode: PublishMode,

    /// `--via amqp`: the RabbitMQ to publish to. Loopback only, like --server.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// The HS256 secret the server checks tokens with: the loadgen mints a token per subscriber
    /// (an admin's for the firehose) and a service token for its publishers. Default: the
    /// secret of a server started with `--dev` in this directory.
    #[arg(long = "jwt-secret", env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// `--via amqp`: the exchange to publish to (declared as a durable topic exchange if absent).
    #[arg(long, env = "NOTIFY_EXCHANGE", default_value = "cloudphone.events")]
    pub exchange: String,

    /// Concurrent publish tasks, each on its own HTTP/2 connection (`--via grpc`) or its own
    /// AMQP channel (`--via amqp`).
    #[arg(long, default_value_t = 4, env = "NOTIFY_LOADGEN_PUBLISHERS")]
    pub publishers: usize,

    /// Publishes one publisher may have in flight: `Publish` calls, or AMQP messages awaiting
    /// their publisher confirm. With --rate, sends stay on their timetable as long as a slot is
    /// free (open loop); when all are busy the publisher falls behind and the lag shows in the
    /// latency, as it should. [default: 128 with --via grpc, 1024 with --via amqp]
    #[arg(long, env = "NOTIFY_LOADGEN_PUBLISH_WINDOW")]
    pub publish_window: Option<usize>,

    /// Events per second in total, over all publishers. 0 publishes as fast as the server
    /// accepts (closed loop: latency is then measured from the actual send).
    #[arg(long, default_value_t = 0, env = "NOTIFY_LOADGEN_RATE")]
    pub rate: u64,

    /// How long to measure, after the warmup.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_DURATION")]
    pub duration: Duration,

    /// Publishing before the measurement starts; events sent in it are not counted.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_WARMUP")]
    pub warmup: Duration,

    /// After the last publish: how long in-flight events get to arrive before the subscribers
    /// stop. What has not arrived by then counts as lost.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_DRAIN")]
    pub drain: Duration,

    /// `idle`: how long to wait after every stream got its first message before reading the
    /// server's memory.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_SETTLE")]
    pub settle: Duration,

    /// Time for opening all streams and receiving their first message. Streams not open by then
    /// count as failed; the run goes on with the others (and is not a valid figure).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_OPEN_TIMEOUT")]
    pub open_timeout: Duration,

    /// Streams being opened at the same time, so thousands open quickly without a thundering
    /// herd of handshakes.
    #[arg(long, default_value_t = 200, env = "NOTIFY_LOADGEN_OPEN_CONCURRENCY")]
    pub open_concurrency: usize,

    /// `firehose` only: the first N streams read slowly (one event per `--slow-read-delay`).
    /// They stay out of the latency and delivery figures (they cannot keep up by design); the
    /// run shows what they cost the server (`--server-pid` memory) and the fast streams.
    #[arg(long, default_value_t = 0, env = "NOTIFY_LOADGEN_SLOW_SUBSCRIBERS")]
    pub slow_subscribers: usize,

    /// How long a slow stream pauses after each event.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_SLOW_READ_DELAY")]
    pub slow_read_delay: Duration,

    /// A `Publish` call that takes longer than this counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "NOTIFY_LOADGEN_REQUEST_TIMEOUT")]
    pub request_timeout: Duration,

    /// PID of the server, when it runs on this machine: its VmRSS is read before the streams
    /// open, every second during the run (peak) and at the end.
    #[arg(long, env = "NOTIFY_LOADGEN_SERVER_PID")]
    pub server_pid: Option<u32>,

    /// With --rate: p99 latency the run must meet, in milliseconds; a miss is reported and ends
    /// the process with exit code 1.
    #[arg(long, env = "NOTIFY_LOADGEN_P99_TARGET_MS")]
    pub p99_target_ms: Option<f64>,

    /// The event type to publish (the routing key and `eventType`) and to subscribe to.
    #[arg(
        long,
        default_value = "device.error",
        env = "NOTIFY_LOADGEN_EVENT_TYPE"
    )]
    pub event_type: String,

    /// Print one JSON object instead of the table.
    #[arg(long, env = "NOTIFY_LOADGEN_JSON")]
    pub json: bool,
}

impl LoadgenArgs {
    /// `--publish-window`, or the default of the transport.
    fn publish_window(&self) -> usize {
        self.publish_window.unwrap_or(match self.via {
            Via::Grpc => GRPC_PUBLISH_WINDOW,
            Via::Amqp => AMQP_PUBLISH_WINDOW,
        })
    }
}

/// The time base of a run. Send stamps are nanoseconds since `start`; subscribers in this process
/// read the same monotonic clock, so `now_ns() - stamp` is the latency.
#[derive(Debug, Clone, Copy)]
struct RunClock {
    start: Instant,
    /// The wall-clock time at `start`, for the ISO timestamps in the bodies.
    wall_start: SystemTime,
}

impl RunClock {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            wall_start: SystemTime::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        nanos(self.start.elapsed())
    }

    fn instant_at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    /// The wall-clock time of stamp `ns` in milliseconds since the epoch, like `Date.now()`.
    fn wall_ms(&self, ns: u64) -> u64 {
        let wall = self.wall_start + Duration::from_nanos(ns);
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Whole nanoseconds of `duration`, saturating (a run does not last 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// When publishing happens, in [`RunClock`] nanoseconds. Set once, when publishing starts.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Publishing (the warmup) starts.
    publish_from_ns: u64,
    /// The measurement starts: events stamped before this are warmup.
    measure_from_ns: u64,
    /// Publishing and the measurement end.
    until_ns: u64,
}

impl Window {
    /// The window of a run whose publishing starts at `start_ns`: --warmup, then --duration.
    fn of_run(start_ns: u64, args: &LoadgenArgs) -> Self {
        let measure_from_ns = start_ns.saturating_add(nanos(args.warmup));
        Self {
            publish_from_ns: start_ns,
            measure_from_ns,
            until_ns: measure_from_ns.saturating_add(nanos(args.duration)),
        }
    }

    /// A window without an end, all of it measured from `start_ns`: a fill's, whose plan ends
    /// it by its number of events.
    fn unbounded(start_ns: u64) -> Self {
        Self {
            publish_from_ns: start_ns,
            measure_from_ns: start_ns,
            until_ns: u64::MAX,
        }
    }

    /// Whether the window ends (one made by [`Window::unbounded`] does not).
    fn ends(&self) -> bool {
        self.until_ns != u64::MAX
    }

    /// Whether an event stamped `stamp_ns` belongs to the measurement.
    fn measures(&self, stamp_ns: u64) -> bool {
        (self.measure_from_ns..self.until_ns).contains(&stamp_ns)
    }
}

/// How long after the window closes a rated sender (a publisher, an inbox client) may still send
/// what was due inside it. The timer wakes up to ~1 ms late, so the window's last sends routinely
/// go out just after it closed; a sender later than this is behind for real.
const LATE_SEND_GRACE_NS: u64 = 100_000_000;

/// An open-loop timetable: `rate` sends a second in all, dealt in turn to `senders` senders
/// (sender `seq % senders` makes send `seq`).
#[derive(Debug, Clone, Copy)]
struct Timetable {
    rate: u64,
    senders: u64,
}

impl Timetable {
    /// When send `seq` is due, in nanoseconds after the window's start. Computed from `seq`
    /// rather than by adding intervals, so rounding never drifts the timetable.
    fn due_offset_ns(&self, seq: u64) -> u64 {
        let ns = u128::from(seq) * 1_000_000_000 / u128::from(self.rate.max(1));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Send `round` of sender `index`.
    fn seq(&self, index: u64, round: u64) -> u64 {
        index + round * self.senders
    }

    /// How many sends of sender `index`, from `round` on, were due inside the measurement
    /// window. Pure arithmetic over at most `rate × duration / senders` rounds.
    fn unsent_in_window(&self, index: u64, from_round: u64, window: &Window) -> u64 {
        let mut unsent = 0;
        for round in from_round.. {
            let due_ns = window.publish_from_ns + self.due_offset_ns(self.seq(index, round));
            if due_ns >= window.until_ns {
                break;
            }
            unsent += u64::from(window.measures(due_ns));
        }
        unsent
    }
}

/// Counters the tasks update and the progress line reads. None is on a subscriber's per-event
/// path (streams count once when they open, fail or drop; received events are counted per
/// flushed batch in [`Recorder`]), and the publish counters have only `--publishers` writers, so
/// plain relaxed atomics do.
struct Live {
    window: OnceLock<Window>,
    opened: AtomicU64,
    open_failed: AtomicU64,
    first_messages: AtomicU64,
    /// Streams that are done starting: got a first message, failed to open, or ended first.
    settled: AtomicU64,
    dropped: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    latency: Recorder,
}

impl Live {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            window: OnceLock::new(),
            opened: AtomicU64::new(0),
            open_failed: AtomicU64::new(0),
            first_messages: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            latency: Recorder::new()?,
        })
    }

    fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the subscriber side reports after the streams were stopped.
struct SubscriberTotals {
    outcomes: Vec<StreamOutcome>,
    /// Tasks that did not hand in their counts (panicked or did not stop in time).
    lost_tasks: u64,
}

/// Runs the load generator and prints its report.
pub async fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    if args.scenario == Scenario::Replay {
        let channel = connect_all(&args.server, 1, false)
            .await?
            .pop()
            .context("a connection")?;
        return replay::run(&args, channel).await;
    }
    if args.scenario == Scenario::Inbox {
        return inbox::run(&args).await;
    }
    if args.scenario == Scenario::Conflation {
        let channel = connect_all(&args.server, 1, false)
            .await?
            .pop()
            .context("a connection")?;
        return conflation::run(&args, channel).await;
    }
    let command = command_line();
    let clock = RunClock::start();
    let live = Arc::new(Live::new()?);
    let run_prefix = format!("lg-{:08x}-", rand::random::<u32>());

    let (interrupt, interrupt_watch) = watch_interrupt();

    // Connected before the streams open, so an unreachable broker or a clash over the exchange
    // ends the run at once rather than after thousands of streams were opened for nothing.
    let amqp = match (args.via, args.scenario) {
        (Via::Amqp, Scenario::PerUser | Scenario::Firehose) => {
            let target = amqp::Target {
                url: args.amqp_url.clone(),
                exchange: args.exchange.clone(),
                routing_key: args.event_type.clone(),
            };
            Some(amqp::open(&target, args.publishers).await?)
        }
        _ => None,
    };
    let (amqp_session, amqp_publishers) = amqp.unzip();

    let secret = notify_backbone::client::secret_or_dev(args.jwt_secret.as_deref())?;
    let storm_epoch = if args.scenario == Scenario::ResumeStorm {
        let channel = connect_all(&args.server, 1, true)
            .await?
            .pop()
            .context("a connection")?;
        Some(
            storm::fill(channel, &secret, &run_prefix, args.journal_events)
                .await?
                .epoch,
        )
    } else {
        None
    };

    let rss_before = args.server_pid.map(rss::read_bytes).transpose()?;
    let rss_sampler = args.server_pid.map(rss::PeakSampler::start);
    let progress = tokio::spawn(report::progress(clock, live.clone(), args.subscribers));

    let connections = args.connections.min(args.subscribers);
    let channels = connect_spread(&args, connections)
        .await
        .context("opening the subscriber connections")?;
    let open_started = clock.now_ns();
    // One deadline for opening every stream and receiving its first message.
    let open_deadline = Instant::now() + args.open_timeout;
    let plan = Arc::new(SubscribePlan {
        secret: secret.clone(),
        scenario: args.scenario,
        event_type: args.event_type.clone(),
        run_prefix: run_prefix.clone(),
        open_concurrency: args.open_concurrency,
        deadline: open_deadline,
        slow: args.slow_subscribers,
        slow_read_delay: args.slow_read_delay,
    });
    let subscribers = subscriber::spawn_all(args.subscribers, &channels, plan, clock, live.clone());
    wait_until_settled(&live, args.subscribers as u64, open_deadline, &interrupt).await;
    let open_ns = clock.now_ns().saturating_sub(open_started);

    let mut publisher_stats = Vec::new();
    let mut abandoned_publishers = 0;
    let mut publishing_ended_ns = None;
    let mut server_cpu = None;
    let mut also_server_cpu = Vec::new();
    let mut storm_stats = None;
    let window = if args.scenario == Scenario::Idle {
        tokio::select! {
            () = tokio::time::sleep(args.settle) => {}
            () = interrupt.cancelled() => {}
        }
        None
    } else if interrupt.is_cancelled() {
        None
    } else if Live::count(&live.first_messages) == 0 {
        eprintln!("notify-bench: no stream is open; not publishing");
        None
    } else {
        let storm = match storm_epoch {
            Some(epoch) => {
                Some(storm::Storm::start(&args, &secret, epoch, interrupt.child_token()).await?)
            }
            None => None,
        };
        let published = publish(
            &args,
            amqp_publishers,
            &run_prefix,
            clock,
            live.clone(),
            &interrupt,
        )
        .await?;
        if let Some(storm) = storm {
            storm_stats = Some(storm.stop().await);
        }
        publisher_stats = published.stats;
        abandoned_publishers = published.abandoned;
        server_cpu = published.server_cpu;
        also_server_cpu = published.also_server_cpu;
        publishing_ended_ns = Some(clock.now_ns());
        let window = published.window;
        tokio::select! {
            () = tokio::time::sleep(args.drain) => {}
            () = interrupt.cancelled() => {}
        }
        Some(window)
    };
    // Read while the streams are still open: this is what they cost. A server that died is a
    // finding for the report, not a reason to lose it.
    let rss_after = args.server_pid.and_then(|pid| match rss::read_bytes(pid) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            eprintln!("notify-bench: cannot read the server's RSS at the end: {error:#}");
            None
        }
    });
    let rss_peak = rss_sampler.and_then(rss::PeakSampler::stop);

    let totals = subscriber::stop_all(subscribers, STOP_GRACE).await;
    progress.abort();
    interrupt_watch.abort();
    if let Some(session) = amqp_session {
        session.close().await;
    }

    let report = Report::build(report::Inputs {
        args: &args,
        command,
        window,
        publishing_ended_ns,
        interrupted: interrupt.is_cancelled(),
        open_ns,
        live: &live,
        totals,
        publishers: publisher_stats,
        abandoned_publishers,
        rss_before,
        rss_after,
        rss_peak,
        server_cpu,
        also_server_cpu,
        storm: storm_stats,
    })?;
    report.print(args.json)?;
    report.verdict()
}

/// Ctrl-C ends the current phase early; the report is still printed (marked interrupted). The
/// token is cancelled on Ctrl-C; abort the task when the run is over.
fn watch_interrupt() -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let interrupt = CancellationToken::new();
    let watch = tokio::spawn({
        let interrupt = interrupt.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("notify-bench: interrupted; finishing up (report follows)");
                interrupt.cancel();
            }
        }
    });
    (interrupt, watch)
}

/// The command line as typed, with any password in a URL left out.
fn command_line() -> String {
    std::env::args()
        .map(|arg| amqp::redact(&arg))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `RESOURCE_EXHAUSTED` rather than tonic's `ResourceExhausted`: the names the gRPC docs use.
fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Refuses arguments that cannot make a meaningful run.
fn check_args(args: &LoadgenArgs) -> anyhow::Result<()> {
    check_loopback("--server", &args.server)?;
    for server in &args.also_servers {
        check_loopback("--also-server", server)?;
    }
    if args.via == Via::Amqp {
        // A load test publishing into someone else's `cloudphone.events` would hand thousands
        // of fake device errors to every real consumer of that exchange.
        check_loopback("--amqp-url", &args.amqp_url)?;
        amqp::check_names(&args.exchange, &args.event_type)?;
    }
    ensure!(
        args.via == Via::Grpc || args.publish_mode == PublishMode::Unary,
        "--publish-mode stream needs --via grpc (it is how publishers call the server)"
    );
    ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(
        args.slow_subscribers == 0
            || (args.scenario == Scenario::Firehose && args.slow_subscribers < args.subscribers),
        "--slow-subscribers needs --scenario firehose and fewer than --subscribers"
    );
    ensure!(
        args.scenario != Scenario::ResumeStorm || args.resumes > 0,
        "--resumes must be at least 1"
    );
    if args.scenario == Scenario::Inbox {
        inbox::check_args(args)?;
    }
    ensure!(
        args.open_concurrency > 0,
        "--open-concurrency must be at least 1"
    );
    if args.scenario != Scenario::Idle {
        ensure!(args.publishers > 0, "--publishers must be at least 1");
        ensure!(
            args.publish_window() > 0,
            "--publish-window must be at least 1"
        );
        ensure!(
            !args.duration.is_zero(),
            "--duration must be longer than 0s"
        );
    }
    if args.p99_target_ms.is_some() && args.rate == 0 {
        bail!(
            "--p99-target-ms needs --rate: without a timetable latency is closed-loop and not comparable"
        );
    }
    ensure!(
        !args.event_type.is_empty(),
        "--event-type must not be empty"
    );
    Ok(())
}

/// The loadgen only drives a server (and a broker) on this machine: its figures (and
/// `--server-pid`) are about a local server, and it must never be pointed at someone else's.
fn check_loopback(flag: &str, url: &str) -> anyhow::Result<()> {
    let shown = amqp::redact(url);
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{flag}: bad URL {shown:?}"))?;
    let host = uri
        .host()
        .with_context(|| format!("{flag}: URL {shown:?} has no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(
        loopback,
        "{flag} {shown}: notify-bench only targets loopback addresses (127.0.0.0/8, ::1, localhost)"
    );
    Ok(())
}

/// Opens `count` subscriber connections spread round-robin over --server and --also-server.
async fn connect_spread(args: &LoadgenArgs, count: usize) -> anyhow::Result<Vec<Channel>> {
    let servers: Vec<&String> = std::iter::once(&args.server)
        .chain(&args.also_servers)
        .collect();
    let mut per_server = vec![Vec::new(); servers.len()];
    for (i, server) in servers.iter().enumerate() {
        let share = count / servers.len() + usize::from(i < count % servers.len());
        if share > 0 {
            per_server[i] = connect_all(server, share, false).await?;
        }
    }
    // Interleaved, so that consecutive subscribers land on different nodes.
    let mut channels = Vec::with_capacity(count);
    let mut iters: Vec<_> = per_server.into_iter().map(Vec::into_iter).collect();
    while channels.len() < count {
        for channel in iters.iter_mut().filter_map(Iterator::next) {
            channels.push(channel);
        }
    }
    Ok(channels)
}

/// Opens `count` separate HTTP/2 connections (a `Channel` is one connection).
async fn connect_all(server: &str, count: usize, publishing: bool) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("bad server URL {server:?}"))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT);
    let endpoint = if publishing {
        endpoint
    } else {
        endpoint
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
    };
    let mut connecting = JoinSet::new();
    for index in 0..count {
        let endpoint = endpoint.clone();
        connecting.spawn(async move {
            let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await;
            (index, channel)
        });
    }
    let mut channels = vec![None; count];
    while let Some(joined) = connecting.join_next().await {
        let (index, channel) = joined.context("connect task failed")?;
        let channel = channel
            .map_err(|_| {
                anyhow::anyhow!("connecting to {server} took longer than {CONNECT_TIMEOUT:?}")
            })?
            .with_context(|| format!("cannot connect to {server}"))?;
        channels[index] = Some(channel);
    }
    channels
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("a connect task did not report")
}

/// Waits until every stream either got its first message or failed, at most until `deadline`.
async fn wait_until_settled(
    live: &Live,
    streams: u64,
    deadline: Instant,
    interrupt: &CancellationToken,
) {
    while Live::count(&live.settled) < streams && Instant::now() < deadline {
        tokio::select! {
            () = tokio::time::sleep(READY_POLL) => {}
            () = interrupt.cancelled() => return,
        }
    }
}

/// What the publishing phase came to.
struct Published {
    /// When publishing happened.
    window: Window,
    /// What each publisher that finished did.
    stats: Vec<PublisherStats>,
    /// Publishers that did not finish in time and whose counts are missing.
    abandoned: usize,
    /// The server's CPU time in the measurement window (with --server-pid).
    server_cpu: Option<cpu::CpuTime>,
    /// The same for each `--also-server-pid`.
    also_server_cpu: Vec<Option<cpu::CpuTime>>,
}

/// The publishing phase: warmup then measurement, on a fresh set of HTTP/2 connections or on the
/// AMQP channels opened at the start. Returns when every publisher has finished (each publish in
/// flight is bounded by `--request-timeout`), with the number of publishers that had to be
/// abandoned.
async fn publish(
    args: &LoadgenArgs,
    amqp_publishers: Option<Vec<amqp::Publisher>>,
    run_prefix: &str,
    clock: RunClock,
    live: Arc<Live>,
    interrupt: &CancellationToken,
) -> anyhow::Result<Published> {
    let transports: Vec<Transport> = match amqp_publishers {
        Some(publishers) => publishers
            .into_iter()
            .map(|publisher| Transport::Amqp(Box::new(publisher)))
            .collect(),
        None => grpc_transports(args, args.publish_mode).await?,
    };
    let users = match args.scenario {
        Scenario::PerUser | Scenario::ResumeStorm => TargetUsers::Random(args.subscribers as u64),
        Scenario::Inbox => TargetUsers::Random(args.users),
        Scenario::Firehose | Scenario::Idle | Scenario::Replay | Scenario::Conflation => {
            TargetUsers::One(0)
        }
    };
    let plan = Arc::new(PublishPlan::new(args, run_prefix, users)?);
    // Subscribers classify events by this window; it is set before the first event exists.
    let window = *live
        .window
        .get_or_init(|| Window::of_run(clock.now_ns(), args));

    let stop = interrupt.child_token();
    let cpu = args
        .server_pid
        .map(|pid| cpu::measure(pid, clock, window, stop.clone()));
    let also_cpu: Vec<_> = args
        .also_server_pids
        .iter()
        .map(|&pid| cpu::measure(pid, clock, window, stop.clone()))
        .collect();
    let (stats, abandoned) = run_publishers(transports, plan, clock, window, live, stop).await?;
    // Rated publishers finish a hair before the window closes; the CPU reading waits for it.
    let server_cpu = match cpu {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    let mut also_server_cpu = Vec::with_capacity(also_cpu.len());
    for task in also_cpu {
        also_server_cpu.push(task.await.ok().flatten());
    }
    Ok(Published {
        window,
        stats,
        abandoned,
        server_cpu,
        also_server_cpu,
    })
}

/// `--via grpc` publishers: each on a fresh HTTP/2 connection of its own, calling in `mode`.
async fn grpc_transports(args: &LoadgenArgs, mode: PublishMode) -> anyhow::Result<Vec<Transport>> {
    Ok(connect_all(&args.server, args.publishers, true)
        .await
        .context("opening the publisher connections")?
        .into_iter()
        .map(|channel| {
            let client = NotificationServiceClient::new(channel);
            match mode {
                PublishMode::Unary => Transport::Grpc(client),
                PublishMode::Stream => Transport::GrpcStream(client),
            }
        })
        .collect())
}

/// Runs one publisher per transport over `window` (or, for a plan with a limit, until the
/// limit), and returns what each that finished did and how many had to be abandoned: every call
/// ends by its own timeout, and a deadline past the window's end is the backstop if something
/// else hangs. `stop` ends them early, and is cancelled when they are abandoned.
async fn run_publishers(
    transports: Vec<Transport>,
    plan: Arc<PublishPlan>,
    clock: RunClock,
    window: Window,
    live: Arc<Live>,
    stop: CancellationToken,
) -> anyhow::Result<(Vec<PublisherStats>, usize)> {
    let publishers = transports.len();
    let request_timeout = plan.request_timeout();
    let mut tasks = JoinSet::new();
    for (index, transport) in transports.into_iter().enumerate() {
        tasks.spawn(publisher::run(
            index as u64,
            transport,
            plan.clone(),
            clock,
            window,
            live.clone(),
            stop.clone(),
        ));
    }
    let hard_deadline = window
        .ends()
        .then(|| clock.instant_at(window.until_ns) + request_timeout + STOP_GRACE);
    let mut stats = Vec::with_capacity(publishers);
    loop {
        let joined = match hard_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), tasks.join_next()).await,
            None => Ok(tasks.join_next().await),
        };
        match joined {
            Ok(Some(joined)) => stats.push(joined.context("a publisher task failed")??),
            Ok(None) => return Ok((stats, 0)),
            Err(_) => {
                eprintln!("notify-bench: publishers did not finish in time; abandoning them");
                stop.cancel();
                tasks.abort_all();
                let abandoned = publishers - stats.len();
                return Ok((stats, abandoned));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, FromArgMatches as _};

    use super::*;

    /// Parses `loadgen` arguments as the command line would, but blind to the environment, so an
    /// `AMQP_URL` set on the machine running the tests does not change what they see.
    fn parse(args: &[&str]) -> anyhow::Result<LoadgenArgs> {
        let command =
            LoadgenArgs::augment_args(clap::Command::new("loadgen")).mut_args(|arg| arg.env(None));
        let matches =
            command.try_get_matches_from(std::iter::once("loadgen").chain(args.iter().copied()))?;
        Ok(LoadgenArgs::from_arg_matches(&matches)?)
    }

    #[test]
    fn publishing_goes_through_grpc_unless_told_otherwise() -> anyhow::Result<()> {
        let args = parse(&[])?;
        assert_eq!(args.via, Via::Grpc);
        assert_eq!(args.publish_window(), GRPC_PUBLISH_WINDOW);
        assert_eq!(args.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(args.exchange, "cloudphone.events");
        check_args(&args)
    }

    #[test]
    fn via_amqp_takes_a_broker_url_an_exchange_and_a_deeper_window() -> anyhow::Result<()> {
        let args = parse(&[
            "--via",
            "amqp",
            "--amqp-url",
            "amqp://lg:secret@localhost:5673/test",
            "--exchange",
            "lg.events",
        ])?;
        assert_eq!(args.via, Via::Amqp);
        assert_eq!(args.amqp_url, "amqp://lg:secret@localhost:5673/test");
        assert_eq!(args.exchange, "lg.events");
        assert_eq!(args.publish_window(), AMQP_PUBLISH_WINDOW);
        check_args(&args)?;
        let args = parse(&["--via", "amqp", "--publish-window", "64"])?;
        assert_eq!(args.publish_window(), 64);
        Ok(())
    }

    #[test]
    fn a_resume_storm_takes_its_size_and_needs_at_least_one_resume() -> anyhow::Result<()> {
        let args = parse(&["--scenario", "resume-storm"])?;
        assert_eq!((args.resumes, args.journal_events), (60, 300_000));
        check_args(&args)?;
        let args = parse(&["--scenario", "resume-storm", "--resumes", "0"])?;
        assert!(check_args(&args).is_err());
        Ok(())
    }

    #[test]
    fn an_inbox_run_needs_something_to_measure_and_a_real_page() -> anyhow::Result<()> {
        let args = parse(&["--scenario", "inbox"])?;
        assert_eq!((args.users, args.inbox_page), (100_000, 20));
        check_args(&args)?;
        let silent = [
            "--scenario",
            "inbox",
            "--inbox-counts-rate",
            "0",
            "--inbox-list-rate",
            "0",
            "--inbox-mark-rate",
            "0",
        ];
        assert!(check_args(&parse(&silent)?).is_err());
        check_args(&parse(&[&silent[..], &["--inbox-publish"]].concat())?)?;
        check_args(&parse(&[&silent[..], &["--fill-only"]].concat())?)?;
        for refused in [
            &["--inbox-page", "0"][..],
            &["--inbox-page", "101"],
            &["--users", "0"],
            &["--via", "amqp"],
        ] {
            let args = parse(&[&["--scenario", "inbox"], refused].concat())?;
            assert!(check_args(&args).is_err(), "{refused:?}");
        }
        Ok(())
    }

    #[test]
    fn an_unknown_transport_is_refused() {
        assert!(parse(&["--via", "kafka"]).is_err());
    }

    #[test]
    fn a_broker_elsewhere_is_refused_but_only_when_it_is_used() -> anyhow::Result<()> {
        let remote = [
            "--amqp-url",
            "amqp://guest:guest@rabbit.prod.example:5672/%2f",
        ];
        check_args(&parse(&remote)?)?;
        let amqp = parse(&[&["--via", "amqp"], &remote[..]].concat())?;
        let error = check_args(&amqp)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("loopback"), "{error}");
        assert!(
            !error.contains("guest:guest"),
            "the password is printed: {error}"
        );
        for local in [
            "amqp://127.0.0.1",
            "amqp://u:p@[::1]:5672/%2f",
            "amqp://localhost/v",
        ] {
            check_args(&parse(&["--via", "amqp", "--amqp-url", local])?)?;
        }
        Ok(())
    }

    #[test]
    fn the_amqp_timestamp_is_milliseconds_since_the_epoch() {
        let clock = RunClock {
            start: Instant::now(),
            wall_start: UNIX_EPOCH + Duration::from_millis(1_732_096_800_123),
        };
        assert_eq!(clock.wall_ms(0), 1_732_096_800_123);
        assert_eq!(clock.wall_ms(1_500_000_000), 1_732_096_801_623);
    }
}
