//! The subscriber side: opening thousands of streams with bounded concurrency, reading them, and
//! turning each received event into a latency sample.
//!
//! Each stream is one task that owns everything it counts and hands its [`StreamOutcome`] in
//! when told to stop; latencies go through [`Samples`] (see `latency`). A task is told to stop
//! through its own oneshot channel rather than a shared token: a shared waker list would be one
//! more thing every stream touches on every message.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    sync::{Semaphore, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tonic::{Code, Status, transport::Channel};

use super::{Live, RunClock, Scenario, SubscriberTotals, latency::Samples};
use notify_backbone::pb;

/// The gRPC path of `Subscribe`, called with [`Delivery`] as the response type.
const SUBSCRIBE_PATH: &str = "/cloudphone.notify.v1.NotificationService/Subscribe";

/// What the load generator reads of a `SubscribeResponse` (`proto/`, same field numbers): which
/// kind it is and, for an event, its id (the send stamp is in it). prost skips every other field
/// unread, where `pb::SubscribeResponse` would allocate the whole event (strings, timestamps,
/// payload): at a million deliveries a second that decoding was the load generator's largest
/// cost, and it runs on the same cores as the server it measures.
#[derive(Clone, PartialEq, prost::Message)]
struct Delivery {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(message, tag = "1")]
    Event(EventId),
    #[prost(message, tag = "2")]
    CaughtUp(Unread),
    #[prost(message, tag = "3")]
    Gap(Unread),
    #[prost(message, tag = "4")]
    Heartbeat(Unread),
}

/// `Event.id` (field 1) and nothing else of the event.
#[derive(Clone, PartialEq, prost::Message)]
struct EventId {
    #[prost(string, tag = "1")]
    id: String,
}

/// A message whose fields the load generator does not read.
#[derive(Clone, PartialEq, prost::Message)]
struct Unread {}

/// What every subscriber needs to know, shared.
pub(super) struct SubscribePlan {
    /// The HS256 secret to mint each subscriber's token with.
    pub secret: String,
    /// Which users to subscribe as.
    pub scenario: Scenario,
    /// The event type subscribed to.
    pub event_type: String,
    /// `lg-<run>-`: the id prefix of this run's events; anything else is foreign.
    pub run_prefix: String,
    /// Streams opening at the same time.
    pub open_concurrency: usize,
    /// Streams not open by then have failed.
    pub deadline: std::time::Instant,
    /// Streams `0..slow` read slowly and record no latency.
    pub slow: usize,
    /// A slow stream's pause after each event.
    pub slow_read_delay: std::time::Duration,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// The loadgen stopped it at the end of the run: the normal case.
    Stopped,
    /// It never opened.
    OpenFailed {
        /// The status code (`DeadlineExceeded` when the open phase ran out of time).
        code: Code,
        /// Why.
        message: String,
    },
    /// The server ended it with an error status, e.g. RESOURCE_EXHAUSTED for a subscriber that
    /// fell behind: a dropped stream.
    Dropped {
        /// The status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// The server ended it without a status: also a dropped stream.
    Closed,
}

/// What one stream saw.
#[derive(Debug, Clone)]
pub(super) struct StreamOutcome {
    /// `CaughtUp` messages (one per stream).
    pub caught_up: u64,
    /// `Heartbeat` messages.
    pub heartbeats: u64,
    /// `Gap` messages.
    pub gaps: u64,
    /// Events that were not this run's (another publisher on the same server).
    pub foreign: u64,
    /// Messages with no kind this loadgen knows.
    pub unknown: u64,
    /// Events a slow stream received (not in the latency figures).
    pub slow_events: u64,
    /// Whether it received any message.
    pub got_first_message: bool,
    /// How it ended.
    pub end: StreamEnd,
}

impl StreamOutcome {
    fn new() -> Self {
        Self {
            caught_up: 0,
            heartbeats: 0,
            gaps: 0,
            foreign: 0,
            unknown: 0,
            slow_events: 0,
            got_first_message: false,
            end: StreamEnd::Stopped,
        }
    }
}

/// The running subscriber tasks and the means to stop them.
pub(super) struct Subscribers {
    tasks: Vec<JoinHandle<StreamOutcome>>,
    stops: Vec<oneshot::Sender<()>>,
}

/// Starts one task per stream; stream `i` uses connection `i % channels.len()`. The tasks open
/// their streams at most `open_concurrency` at a time.
pub(super) fn spawn_all(
    count: usize,
    channels: &[Channel],
    plan: Arc<SubscribePlan>,
    clock: RunClock,
    live: Arc<Live>,
) -> Subscribers {
    let permits = Arc::new(Semaphore::new(plan.open_concurrency));
    let mut tasks = Vec::with_capacity(count);
    let mut stops = Vec::with_capacity(count);
    for index in 0..count {
        let (stop_tx, stop_rx) = oneshot::channel();
        let channel = channels[index % channels.len()].clone();
        tasks.push(tokio::spawn(subscribe(
            index,
            channel,
            plan.clone(),
            permits.clone(),
            clock,
            live.clone(),
            stop_rx,
        )));
        stops.push(stop_tx);
    }
    Subscribers { tasks, stops }
}

/// Stops every stream and collects what each saw, waiting at most `grace` for the tasks.
pub(super) async fn stop_all(subscribers: Subscribers, grace: Duration) -> SubscriberTotals {
    let Subscribers { tasks, stops } = subscribers;
    // Dropping a sender is the stop signal.
    drop(stops);
    let deadline = Instant::now() + grace;
    let mut totals = SubscriberTotals {
        outcomes: Vec::with_capacity(tasks.len()),
        lost_tasks: 0,
    };
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(outcome)) => totals.outcomes.push(outcome),
            Ok(Err(_)) => totals.lost_tasks += 1,
            Err(_) => {
                task.abort();
                totals.lost_tasks += 1;
            }
        }
    }
    totals
}

/// The request of subscriber `index`.
fn request(index: usize, plan: &SubscribePlan) -> pb::SubscribeRequest {
    let user_id = match plan.scenario {
        Scenario::PerUser
        | Scenario::Idle
        | Scenario::Replay
        | Scenario::ResumeStorm
        | Scenario::Inbox
        | Scenario::Conflation => format!("lg-user-{index}"),
        Scenario::Firehose => "*".to_owned(),
    };
    pb::SubscribeRequest {
        event_types: vec![plan.event_type.clone()],
        device_id: String::new(),
        user_id,
        admin_feed: false,
        resume_after: String::new(),
        inbox: false,
        conflate: false,
        max_events_per_second: 0,
    }
}

/// The request of subscriber `index` with its token: its user's, or an admin's for the firehose.
fn authorized_request(
    index: usize,
    plan: &SubscribePlan,
) -> anyhow::Result<tonic::Request<pb::SubscribeRequest>> {
    let request = request(index, plan);
    let (sub, role) = match plan.scenario {
        // One subject per stream, as many dashboards would have: the server limits streams
        // per subject.
        Scenario::Firehose => (format!("loadgen-admin-{index}"), "admin"),
        Scenario::PerUser
        | Scenario::Idle
        | Scenario::Replay
        | Scenario::ResumeStorm
        | Scenario::Inbox
        | Scenario::Conflation => (request.user_id.clone(), "user"),
    };
    let token = notify_backbone::client::mint_with(
        &plan.secret,
        &sub,
        &[role.to_owned()],
        std::time::Duration::from_secs(24 * 3600),
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )?;
    notify_backbone::client::authorized(request, Some(&token))
}

/// One stream, from opening to being stopped.
async fn subscribe(
    index: usize,
    channel: Channel,
    plan: Arc<SubscribePlan>,
    permits: Arc<Semaphore>,
    clock: RunClock,
    live: Arc<Live>,
    mut stop: oneshot::Receiver<()>,
) -> StreamOutcome {
    let mut outcome = StreamOutcome::new();
    let opening = async {
        // The permit is held only while opening: an open stream costs the server nothing more
        // to set up, so the next one may start.
        let _permit = permits
            .acquire_owned()
            .await
            .map_err(|_| Status::cancelled("notify-bench stopped opening streams"))?;
        let request =
            authorized_request(index, &plan).map_err(|e| Status::internal(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<pb::SubscribeRequest, Delivery>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(SUBSCRIBE_PATH);
        grpc.server_streaming(request, path, codec).await
    };
    let opened = tokio::select! {
        opened = tokio::time::timeout_at(plan.deadline.into(), opening) => opened,
        _ = &mut stop => Ok(Err(Status::cancelled("notify-bench stopped before the stream opened"))),
    };
    let mut stream = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            outcome.end = StreamEnd::OpenFailed {
                code: status.code(),
                message: status.message().to_owned(),
            };
            live.open_failed.fetch_add(1, Relaxed);
            live.settled.fetch_add(1, Relaxed);
            return outcome;
        }
        Err(_) => {
            outcome.end = StreamEnd::OpenFailed {
                code: Code::DeadlineExceeded,
                message: "not open within --open-timeout; the server may cap streams per HTTP/2 \
                          connection (SETTINGS_MAX_CONCURRENT_STREAMS): try more --connections"
                    .to_owned(),
            };
            live.open_failed.fetch_add(1, Relaxed);
            live.settled.fetch_add(1, Relaxed);
            return outcome;
        }
    };
    live.opened.fetch_add(1, Relaxed);

    let mut samples = Samples::new(index);
    outcome.end = loop {
        // Messages first: a stop only matters once the stream has nothing ready.
        let message = tokio::select! {
            biased;
            message = stream.message() => message,
            _ = &mut stop => break StreamEnd::Stopped,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => break StreamEnd::Closed,
            Err(status) => {
                break StreamEnd::Dropped {
                    code: status.code(),
                    message: status.message().to_owned(),
                };
            }
        };
        if !outcome.got_first_message {
            outcome.got_first_message = true;
            live.first_messages.fetch_add(1, Relaxed);
            live.settled.fetch_add(1, Relaxed);
        }
        if index < plan.slow {
            if let Some(Kind::Event(_)) = response.kind {
                outcome.slow_events += 1;
                tokio::select! {
                    () = tokio::time::sleep(plan.slow_read_delay) => {}
                    _ = &mut stop => break StreamEnd::Stopped,
                }
            }
            continue;
        }
        match response.kind {
            Some(Kind::Event(event)) => match send_stamp(&event.id, &plan.run_prefix) {
                Some(stamp_ns) => {
                    let now_ns = clock.now_ns();
                    let measured = live.window.get().is_some_and(|w| w.measures(stamp_ns));
                    let latency_us = now_ns.saturating_sub(stamp_ns) / 1000;
                    samples.push(&live.latency, latency_us, measured, now_ns);
                }
                None => outcome.foreign += 1,
            },
            Some(Kind::CaughtUp(_)) => outcome.caught_up += 1,
            Some(Kind::Heartbeat(_)) => outcome.heartbeats += 1,
            Some(Kind::Gap(_)) => outcome.gaps += 1,
            None => outcome.unknown += 1,
        }
    };
    samples.flush(&live.latency);
    if matches!(outcome.end, StreamEnd::Dropped { .. } | StreamEnd::Closed) {
        live.dropped.fetch_add(1, Relaxed);
        if !outcome.got_first_message {
            live.settled.fetch_add(1, Relaxed);
        }
    }
    outcome
}

/// The send stamp of one of this run's events: `id` is `<run_prefix><seq>-<send_nanos>`.
fn send_stamp(id: &str, run_prefix: &str) -> Option<u64> {
    let rest = id.strip_prefix(run_prefix)?;
    let (_seq, nanos) = rest.rsplit_once('-')?;
    nanos.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// A [`Delivery`] decoded from the server's encoding of each kind: the field numbers match
    /// `proto/`, and what it leaves unread does not disturb what it reads.
    #[test]
    fn a_delivery_reads_the_kind_and_the_event_id_of_a_subscribe_response() {
        use pb::subscribe_response::Kind as Full;
        let decode = |kind: Full| {
            let bytes = pb::SubscribeResponse { kind: Some(kind) }.encode_to_vec();
            Delivery::decode(bytes.as_slice()).expect("a SubscribeResponse decodes as a Delivery")
        };
        let event = pb::Event {
            id: "lg-1-7-42".into(),
            cursor: "c-9".into(),
            r#type: "device.error".into(),
            user_id: "lg-user-3".into(),
            device_id: "d-1".into(),
            ..Default::default()
        };
        assert_eq!(
            decode(Full::Event(event)).kind,
            Some(Kind::Event(EventId {
                id: "lg-1-7-42".into()
            }))
        );
        let caught_up = Full::CaughtUp(pb::CaughtUp {
            cursor: "c-9".into(),
        });
        assert_eq!(decode(caught_up).kind, Some(Kind::CaughtUp(Unread {})));
        let gap = Full::Gap(pb::Gap {
            from_cursor: "a".into(),
            ..Default::default()
        });
        assert_eq!(decode(gap).kind, Some(Kind::Gap(Unread {})));
        let heartbeat = Full::Heartbeat(pb::Heartbeat::default());
        assert_eq!(decode(heartbeat).kind, Some(Kind::Heartbeat(Unread {})));
    }

    #[test]
    fn the_send_stamp_is_read_from_the_event_id() {
        assert_eq!(
            send_stamp("lg-0000abcd-17-123456789", "lg-0000abcd-"),
            Some(123_456_789)
        );
    }

    #[test]
    fn ids_of_other_runs_and_producers_are_foreign() {
        assert_eq!(send_stamp("lg-ffffffff-17-123", "lg-0000abcd-"), None);
        assert_eq!(
            send_stamp("device-error-d1-1732096800000", "lg-0000abcd-"),
            None
        );
        assert_eq!(send_stamp("lg-0000abcd-garbage", "lg-0000abcd-"), None);
    }

    #[test]
    fn firehose_subscribers_select_every_user() {
        let plan = SubscribePlan {
            secret: "s".into(),
            scenario: Scenario::Firehose,
            event_type: "device.error".into(),
            run_prefix: "lg-1-".into(),
            open_concurrency: 1,
            deadline: std::time::Instant::now(),
            slow: 0,
            slow_read_delay: std::time::Duration::ZERO,
        };
        assert_eq!(request(7, &plan).user_id, "*");
        let plan = SubscribePlan {
            scenario: Scenario::PerUser,
            ..plan
        };
        assert_eq!(request(7, &plan).user_id, "lg-user-7");
        assert_eq!(request(7, &plan).event_types, ["device.error"]);
    }
}
