//! The publisher side: producer-style JSON bodies sent with `Publish` or through RabbitMQ (see
//! `amqp`), on an open-loop timetable when a rate is given.
//!
//! With `--rate R` and P publishers, event `seq` (publisher `seq % P`) is due at `seq / R`
//! seconds after publishing starts, and its send stamp — the instant latency is measured from —
//! is that *scheduled* instant, not the moment the call went out. A publisher that falls behind
//! (slow answers, a full window, the timer's ~1 ms granularity) therefore cannot hide the delay
//! it caused (coordinated omission); how far behind it was is reported separately as the
//! publisher lag. Without a rate the loop is closed (a new call as soon as a window slot is free)
//! and the stamp is the actual send instant. A fill ([`PublishPlan::fill`]) is closed loop too,
//! and ends after a number of events rather than with a window.
//!
//! Every transport keeps up to `--publish-window` events in flight per publisher: with gRPC,
//! unary calls on one HTTP/2 connection (`--publish-mode unary`) or requests on one
//! `PublishStream` (`--publish-mode stream`); with AMQP, messages on one channel whose publisher
//! confirms have not arrived yet. An AMQP event counts as sent only once the broker confirmed it.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use tokio::{
    sync::{mpsc, oneshot},
    task::{JoinError, JoinSet},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use super::{
    LATE_SEND_GRACE_NS, Live, LoadgenArgs, RunClock, Timetable, Window, amqp, code_name, latency,
};
use notify_backbone::pb::{
    self, notification_service_client::NotificationServiceClient, publish_request::Body,
    publish_stream_response::Result as Outcome,
};

/// Distinct failure kinds kept per publisher with an example message each.
const MAX_FAILURE_KINDS: usize = 8;

/// How a publisher hands its events over.
pub(super) enum Transport {
    /// `Publish` calls on the publisher's own HTTP/2 connection.
    Grpc(NotificationServiceClient<Channel>),
    /// One `PublishStream` on the publisher's own HTTP/2 connection (opened when the
    /// publisher starts, with its token).
    GrpcStream(NotificationServiceClient<Channel>),
    /// Messages on the publisher's own confirm-mode AMQP channel (boxed: it carries a whole
    /// `BasicProperties`, several hundred bytes).
    Amqp(Box<amqp::Publisher>),
}

/// What one publish on a `PublishStream` comes to: `Ok(duplicate)` or why it failed.
type StreamAnswer = oneshot::Sender<Result<bool, Failure>>;

/// An open `PublishStream`: requests go out in order, and its answers, which come in the same
/// order, resolve the oldest publish waiting.
struct OpenStream {
    requests: mpsc::Sender<pb::PublishStreamRequest>,
    waiting: Arc<Mutex<VecDeque<StreamAnswer>>>,
}

impl OpenStream {
    async fn open(
        client: &mut NotificationServiceClient<Channel>,
        token: &str,
        window: usize,
    ) -> anyhow::Result<Self> {
        let (requests, outbox) = mpsc::channel(window.max(1));
        let request =
            notify_backbone::client::authorized(ReceiverStream::new(outbox), Some(token))?;
        let mut answers = client
            .publish_stream(request)
            .await
            .context("opening a PublishStream")?
            .into_inner();
        let waiting: Arc<Mutex<VecDeque<StreamAnswer>>> = Arc::default();
        let answered = Arc::clone(&waiting);
        tokio::spawn(async move {
            let end = loop {
                let result = match answers.message().await {
                    Ok(Some(answer)) => match answer.result {
                        Some(Outcome::Published(published)) => Ok(published.duplicate),
                        Some(Outcome::Error(error)) => Err(Failure {
                            code: code_name(Code::from(error.code)),
                            message: error.message,
                        }),
                        None => Err(Failure {
                            code: code_name(Code::Unknown),
                            message: "an answer without a result".into(),
                        }),
                    },
                    Ok(None) => break "the PublishStream ended".to_owned(),
                    Err(status) => break format!("the PublishStream ended: {status}"),
                };
                let oldest = lock(&answered).pop_front();
                if let Some(oldest) = oldest {
                    let _ = oldest.send(result);
                }
            };
            for waiting in lock(&answered).drain(..) {
                let _ = waiting.send(Err(Failure {
                    code: code_name(Code::Unavailable),
                    message: end.clone(),
                }));
            }
        });
        Ok(Self { requests, waiting })
    }

    /// Sends one request; the receiver gets its answer. Waits while the stream's window is
    /// full.
    async fn send(&self, request: pb::PublishRequest) -> oneshot::Receiver<Result<bool, Failure>> {
        let (answer, answered) = oneshot::channel();
        lock(&self.waiting).push_back(answer);
        let request = pb::PublishStreamRequest {
            publish: Some(request),
        };
        if let Err(mpsc::error::SendError(_)) = self.requests.send(request).await {
            // The stream is gone: this request was never sent, so it has no answer to wait
            // for (dropping its sender says so to the receiver).
            lock(&self.waiting).pop_back();
        }
        answered
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whose events are published.
#[derive(Debug, Clone, Copy)]
pub(super) enum TargetUsers {
    /// A uniformly random one of `lg-user-0` … `lg-user-{n-1}` per event.
    Random(u64),
    /// `lg-user-{seq % n}` for event `seq`: each of the `n` users gets every `n`-th event, so a
    /// fill of `k × n` events gives each exactly `k`.
    Cycle(u64),
    /// Always `lg-user-{n}`.
    One(u64),
}

/// Long enough for any run; the token is minted per run.
const SERVICE_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What every publisher needs to know, shared.
pub(super) struct PublishPlan {
    publishers: u64,
    window: usize,
    rate: u64,
    /// Events `0..limit` only, over all publishers (a fill); `None`: until the window ends.
    limit: Option<u64>,
    request_timeout: Duration,
    routing_key: String,
    /// The event type as a JSON string literal (quoted and escaped), written into every body.
    event_type_json: String,
    run_prefix: String,
    users: TargetUsers,
    /// Each publisher's bearer token (a `service` role, its own subject: the server limits
    /// the publish rate per subject, and each publisher stands for one producing service).
    pub service_tokens: Vec<String>,
}

impl PublishPlan {
    /// The plan of a run.
    pub(super) fn new(
        args: &LoadgenArgs,
        run_prefix: &str,
        users: TargetUsers,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            publishers: args.publishers as u64,
            window: args.publish_window(),
            rate: args.rate,
            limit: None,
            request_timeout: args.request_timeout,
            routing_key: args.event_type.clone(),
            event_type_json: serde_json::to_string(&args.event_type)
                .context("--event-type as JSON")?,
            run_prefix: run_prefix.to_owned(),
            users,
            service_tokens: {
                let secret = notify_backbone::client::secret_or_dev(args.jwt_secret.as_deref())?;
                (0..args.publishers)
                    .map(|index| {
                        notify_backbone::client::mint_with(
                            &secret,
                            &format!("loadgen-publisher-{index}"),
                            &["service".to_owned()],
                            SERVICE_TOKEN_TTL,
                            notify_backbone::auth::DEFAULT_ISSUER,
                            notify_backbone::auth::DEFAULT_AUDIENCE,
                        )
                    })
                    .collect::<Result<_, _>>()?
            },
        })
    }

    /// The same plan as a fill: `events` events in all, as fast as the server takes them
    /// (closed loop), whatever `--rate` says.
    pub(super) fn fill(mut self, events: u64) -> Self {
        self.rate = 0;
        self.limit = Some(events);
        self
    }

    /// How long one publish may take (`--request-timeout`).
    pub(super) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn timetable(&self) -> Timetable {
        Timetable {
            rate: self.rate,
            senders: self.publishers,
        }
    }

    /// When event `seq` is due, in nanoseconds after publishing starts.
    fn due_offset_ns(&self, seq: u64) -> u64 {
        self.timetable().due_offset_ns(seq)
    }

    /// How many events of publisher `index`, from `round` on, were due inside the measurement
    /// window.
    fn unsent_in_window(&self, index: u64, from_round: u64, window: &Window) -> u64 {
        self.timetable().unsent_in_window(index, from_round, window)
    }
}

/// One kind of failed publish.
#[derive(Debug, Clone)]
pub(super) struct FailureTally {
    /// The gRPC status code, e.g. `INTERNAL`; `DEADLINE_EXCEEDED` for a call or a confirm past
    /// --request-timeout; or what the broker did: `AMQP_NACK`, `AMQP_RETURNED` (no queue bound),
    /// `AMQP_CHANNEL_ERROR` (channel or connection closed under the publish).
    pub code: String,
    /// How many calls failed this way.
    pub count: u64,
    /// The first such failure's message.
    pub example: String,
}

impl FailureTally {
    /// Counts `count` failures in `tallies`: under their code, or as a new kind with `example`
    /// as its message while fewer than [`MAX_FAILURE_KINDS`] are kept.
    pub(super) fn add_to(tallies: &mut Vec<Self>, code: &str, count: u64, example: &str) {
        if let Some(tally) = tallies.iter_mut().find(|t| t.code == code) {
            tally.count += count;
        } else if tallies.len() < MAX_FAILURE_KINDS {
            tallies.push(Self {
                code: code.to_owned(),
                count,
                example: example.to_owned(),
            });
        }
    }
}

/// Outcome counts of publish calls: one publisher's, or all publishers' added up.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PublishCounts {
    /// Calls accepted by the server (duplicates included), or messages the broker confirmed.
    pub ok: u64,
    /// Accepted calls whose event is in the measurement window.
    pub ok_measured: u64,
    /// Failed calls.
    pub errors: u64,
    /// Failed calls whose event is in the measurement window.
    pub errors_measured: u64,
    /// Calls the server answered as duplicates (should not happen: every id is new).
    pub duplicates: u64,
    /// Rated runs: events due inside the measurement window that were never sent, because the
    /// publisher was still behind the timetable when the window closed.
    pub unsent_measured: u64,
}

impl PublishCounts {
    /// Adds another publisher's counts to these.
    pub fn add(&mut self, other: &Self) {
        self.ok += other.ok;
        self.ok_measured += other.ok_measured;
        self.errors += other.errors;
        self.errors_measured += other.errors_measured;
        self.duplicates += other.duplicates;
        self.unsent_measured += other.unsent_measured;
    }
}

/// What one publisher did.
pub(super) struct PublisherStats {
    /// What its calls came to.
    pub counts: PublishCounts,
    /// Failures by kind.
    pub failures: Vec<FailureTally>,
    /// Duration of measured publishes, µs: the `Publish` call, or publish → broker confirm.
    pub call_us: Histogram<u64>,
    /// How late measured sends went out against the timetable, µs (rated runs only).
    pub lag_us: Histogram<u64>,
}

impl PublisherStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            counts: PublishCounts::default(),
            failures: Vec::new(),
            call_us: latency::histogram()?,
            lag_us: latency::histogram()?,
        })
    }

    fn complete(&mut self, joined: Result<Completion, JoinError>, window: &Window, live: &Live) {
        let completion = match joined {
            Ok(completion) => completion,
            Err(error) => {
                // The event's stamp went down with the task; count it as a measured failure so
                // the run is not mistaken for a clean one.
                self.fail("TASK_FAILED", &error.to_string(), true, live);
                return;
            }
        };
        let measured = window.measures(completion.stamp_ns);
        match completion.result {
            Ok(duplicate) => {
                self.counts.ok += 1;
                self.counts.duplicates += u64::from(duplicate);
                live.published.fetch_add(1, Relaxed);
                if measured {
                    self.counts.ok_measured += 1;
                    let call_ns = completion.done_ns.saturating_sub(completion.sent_ns);
                    self.call_us.saturating_record(call_ns / 1000);
                }
            }
            Err(failure) => self.fail(&failure.code, &failure.message, measured, live),
        }
    }

    fn fail(&mut self, code: &str, message: &str, measured: bool, live: &Live) {
        self.counts.errors += 1;
        self.counts.errors_measured += u64::from(measured);
        live.publish_errors.fetch_add(1, Relaxed);
        FailureTally::add_to(&mut self.failures, code, 1, message);
    }
}

/// Why one publish failed.
pub(super) struct Failure {
    /// See [`FailureTally::code`].
    pub code: String,
    /// What went wrong, for the report.
    pub message: String,
}

/// One finished publish: a `Publish` call answered, or an AMQP message confirmed.
struct Completion {
    stamp_ns: u64,
    sent_ns: u64,
    done_ns: u64,
    /// `Ok(duplicate)` or why it failed.
    result: Result<bool, Failure>,
}

/// Publisher `index`: publishes events `index`, `index + P`, `index + 2P`, … until the window
/// ends or `stop` is cancelled, then waits for its calls in flight (each bounded by
/// --request-timeout).
pub(super) async fn run(
    index: u64,
    transport: Transport,
    plan: Arc<PublishPlan>,
    clock: RunClock,
    window: Window,
    live: Arc<Live>,
    stop: CancellationToken,
) -> anyhow::Result<PublisherStats> {
    let mut stats = PublisherStats::new()?;
    let token = usize::try_from(index)
        .ok()
        .and_then(|i| plan.service_tokens.get(i))
        .context("no token for this publisher")?
        .clone();
    let mut bodies = BodyWriter::new(&plan, clock);
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut in_flight = JoinSet::new();
    let stream = match &transport {
        Transport::GrpcStream(client) => {
            Some(OpenStream::open(&mut client.clone(), &token, plan.window).await?)
        }
        _ => None,
    };
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);

    for round in 0_u64.. {
        let seq = index + round * plan.publishers;
        let due_ns = (plan.rate > 0).then(|| window.publish_from_ns + plan.due_offset_ns(seq));
        if due_ns.is_some_and(|due_ns| due_ns >= window.until_ns)
            || plan.limit.is_some_and(|limit| seq >= limit)
        {
            break;
        }
        while in_flight.len() >= plan.window {
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            stats.complete(joined, &window, &live);
        }
        while let Some(joined) = in_flight.try_join_next() {
            stats.complete(joined, &window, &live);
        }
        if stop.is_cancelled() {
            break;
        }
        let cutoff_ns = match due_ns {
            Some(_) => window.until_ns + LATE_SEND_GRACE_NS,
            None => window.until_ns,
        };
        if clock.now_ns() >= cutoff_ns {
            // Behind the timetable when the window closed. Working off the backlog now would
            // only stretch the run (and stamp events with times long past); what was due and
            // not sent is counted instead, and makes the run invalid.
            if due_ns.is_some() {
                stats.counts.unsent_measured = plan.unsent_in_window(index, round, &window);
            }
            break;
        }
        let stamp_ns = match due_ns {
            Some(due_ns) => {
                if due_ns > clock.now_ns() {
                    tokio::select! {
                        () = tokio::time::sleep_until(clock.instant_at(due_ns).into()) => {}
                        () = &mut cancelled => break,
                    }
                }
                if window.measures(due_ns) {
                    stats
                        .lag_us
                        .saturating_record(clock.now_ns().saturating_sub(due_ns) / 1000);
                }
                due_ns
            }
            None => clock.now_ns(),
        };
        let user = match plan.users {
            TargetUsers::Random(count) => rng.random_range(0..count.max(1)),
            TargetUsers::Cycle(count) => seq % count.max(1),
            TargetUsers::One(user) => user,
        };
        let body = bodies
            .write(seq, stamp_ns, user)
            .context("formatting a body")?;
        let timeout = plan.request_timeout;
        match &transport {
            Transport::Grpc(client) => {
                let request = pb::PublishRequest {
                    routing_key: plan.routing_key.clone(),
                    body: Some(Body::Json(body)),
                };
                let mut client = client.clone();
                let request = notify_backbone::client::authorized(request, Some(&token))?;
                in_flight.spawn(async move {
                    let sent_ns = clock.now_ns();
                    let result = match tokio::time::timeout(timeout, client.publish(request)).await
                    {
                        Ok(Ok(response)) => Ok(response.into_inner().duplicate),
                        Ok(Err(status)) => Err(Failure {
                            code: code_name(status.code()),
                            message: status.message().to_owned(),
                        }),
                        Err(_) => Err(too_late(timeout)),
                    };
                    Completion {
                        stamp_ns,
                        sent_ns,
                        done_ns: clock.now_ns(),
                        result,
                    }
                });
            }
            Transport::GrpcStream(_) => {
                let Some(stream) = &stream else {
                    anyhow::bail!("the PublishStream is not open");
                };
                let request = pb::PublishRequest {
                    routing_key: plan.routing_key.clone(),
                    body: Some(Body::Json(body)),
                };
                let sent_ns = clock.now_ns();
                let answered = stream.send(request).await;
                in_flight.spawn(async move {
                    let result = match tokio::time::timeout(timeout, answered).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(Failure {
                            code: code_name(Code::Unavailable),
                            message: "the PublishStream ended before the request was sent".into(),
                        }),
                        Err(_) => Err(too_late(timeout)),
                    };
                    Completion {
                        stamp_ns,
                        sent_ns,
                        done_ns: clock.now_ns(),
                        result,
                    }
                });
            }
            Transport::Amqp(publisher) => {
                let sent_ns = clock.now_ns();
                let deadline = tokio::time::Instant::now() + timeout;
                // Handed over here, one after another, not in the spawned tasks: lapin numbers a
                // message for its confirm when the publish starts, the broker when the message
                // arrives, and the two only agree if publishes on a channel never overlap. Only
                // the waits for the confirms run side by side. The AMQP timestamp is the stamp's
                // wall time, the instant the body's `timestamp` names too.
                let handed = tokio::time::timeout_at(
                    deadline,
                    publisher.send(&body, clock.wall_ms(stamp_ns)),
                )
                .await;
                in_flight.spawn(async move {
                    let result = match handed {
                        Ok(Ok(confirm)) => match tokio::time::timeout_at(deadline, confirm).await {
                            Ok(confirmation) => amqp::outcome(confirmation).map(|()| false),
                            Err(_) => Err(too_late(timeout)),
                        },
                        Ok(Err(error)) => Err(amqp::channel_failure(&error)),
                        Err(_) => Err(too_late(timeout)),
                    };
                    Completion {
                        stamp_ns,
                        sent_ns,
                        done_ns: clock.now_ns(),
                        result,
                    }
                });
            }
        }
    }
    // The client's half of a stream ends here: the server answers what it read, then ends.
    drop(stream);
    while let Some(joined) = in_flight.join_next().await {
        stats.complete(joined, &window, &live);
    }
    Ok(stats)
}

/// A publish that got no answer (or no confirm) within --request-timeout.
fn too_late(timeout: Duration) -> Failure {
    Failure {
        code: code_name(Code::DeadlineExceeded),
        message: format!("no answer within --request-timeout ({timeout:?})"),
    }
}

/// Writes the producer bodies (shape D, the `device.error` envelope of `docs/wire-format.md`
/// "Body shapes"):
///
/// `{"eventId":"lg-<run>-<seq>-<send_nanos>","eventType":…,"timestamp":"<ISO>","payload":{…},"_trace":{}}`
struct BodyWriter {
    run_prefix: String,
    event_type_json: String,
    clock: RunClock,
    iso: IsoTime,
    /// The longest body so far. The request must own its body (prost's `bytes` is a `Vec<u8>`),
    /// so one allocation per event is the floor; sizing it right keeps it at exactly one.
    capacity: usize,
}

impl BodyWriter {
    fn new(plan: &PublishPlan, clock: RunClock) -> Self {
        Self {
            run_prefix: plan.run_prefix.clone(),
            event_type_json: plan.event_type_json.clone(),
            clock,
            iso: IsoTime::default(),
            capacity: 256,
        }
    }

    fn write(&mut self, seq: u64, stamp_ns: u64, user: u64) -> Result<Vec<u8>, std::fmt::Error> {
        let at = self
            .iso
            .at(self.clock.wall_start + Duration::from_nanos(stamp_ns))?;
        let mut body = String::with_capacity(self.capacity);
        write!(
            body,
            concat!(
                r#"{{"eventId":"{prefix}{seq}-{stamp}","eventType":{event_type},"timestamp":"{at}","#,
                r#""payload":{{"deviceId":"d-{user}","deviceName":"lg","userId":"lg-user-{user}","#,
                r#""errorType":"load","errorMessage":"loadgen","occurredAt":"{at}"}},"_trace":{{}}}}"#,
            ),
            prefix = self.run_prefix,
            seq = seq,
            stamp = stamp_ns,
            event_type = self.event_type_json,
            at = at,
            user = user,
        )?;
        self.capacity = self.capacity.max(body.len());
        Ok(body.into_bytes())
    }
}

/// ISO-8601 UTC timestamps with milliseconds. The calendar part is formatted once per second;
/// each call only appends the milliseconds.
#[derive(Default)]
struct IsoTime {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    calendar: String,
    text: String,
}

impl IsoTime {
    fn at(&mut self, wall: SystemTime) -> Result<&str, std::fmt::Error> {
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.second != Some(second) {
            let calendar: DateTime<Utc> = (UNIX_EPOCH + Duration::from_secs(second)).into();
            self.calendar.clear();
            write!(self.calendar, "{}", calendar.format("%Y-%m-%dT%H:%M:%S"))?;
            self.second = Some(second);
        }
        self.text.clear();
        write!(
            self.text,
            "{}.{:03}Z",
            self.calendar,
            since_epoch.subsec_millis()
        )?;
        Ok(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: u64, publishers: u64) -> PublishPlan {
        PublishPlan {
            service_tokens: vec![String::new(); usize::try_from(publishers).unwrap()],
            publishers,
            window: 1,
            rate,
            limit: None,
            request_timeout: Duration::from_secs(1),
            routing_key: "device.error".into(),
            event_type_json: "\"device.error\"".into(),
            run_prefix: "lg-0000abcd-".into(),
            users: TargetUsers::One(0),
        }
    }

    #[test]
    fn the_timetable_spreads_events_evenly_and_does_not_drift() {
        let plan = plan(3, 2);
        assert_eq!(plan.due_offset_ns(0), 0);
        assert_eq!(plan.due_offset_ns(1), 333_333_333);
        assert_eq!(plan.due_offset_ns(3), 1_000_000_000);
        assert_eq!(plan.due_offset_ns(3_000_000), 1_000_000_000_000_000);
    }

    #[test]
    fn events_due_in_the_window_but_not_sent_are_counted() {
        // 10 events/s over 2 publishers: publisher 1 owns seq 1, 3, 5, … due at 0.1 s, 0.3 s, …
        let plan = plan(10, 2);
        let window = Window {
            publish_from_ns: 0,
            measure_from_ns: 200_000_000,
            until_ns: 1_000_000_000,
        };
        // From round 0 on: seq 1 (0.1 s, warmup), 3, 5, 7, 9 (measured).
        assert_eq!(plan.unsent_in_window(1, 0, &window), 4);
        assert_eq!(plan.unsent_in_window(1, 3, &window), 2);
        assert_eq!(plan.unsent_in_window(1, 5, &window), 0);
    }

    #[test]
    fn a_body_is_a_shape_d_envelope_whose_id_carries_the_stamp() -> anyhow::Result<()> {
        let clock = RunClock {
            start: std::time::Instant::now(),
            wall_start: UNIX_EPOCH + Duration::from_secs(1_732_096_800),
        };
        let mut writer = BodyWriter::new(&plan(1, 1), clock);
        let body = writer.write(42, 1_500_000_000, 7)?;
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(json["eventId"], "lg-0000abcd-42-1500000000");
        assert_eq!(json["eventType"], "device.error");
        assert_eq!(json["timestamp"], "2024-11-20T10:00:01.500Z");
        assert_eq!(json["payload"]["userId"], "lg-user-7");
        assert_eq!(json["payload"]["deviceId"], "d-7");
        assert_eq!(json["payload"]["occurredAt"], "2024-11-20T10:00:01.500Z");
        assert_eq!(json["_trace"], serde_json::json!({}));
        Ok(())
    }
}
