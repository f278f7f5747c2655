//! Routing and delivery rules of the hub, without any transport.

use std::{
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Instant,
};

use prost::Message;
use tokio_stream::Stream;

use super::*;
use crate::{auth::Viewer, schema, store::StoredEvent};

const EPOCH: u64 = 77;

/// What the sequencer would have stored: every event the test publishes, in order.
#[derive(Default)]
struct TestJournal {
    events: std::sync::Mutex<Vec<StoredEvent>>,
    floor: AtomicU64,
    /// When set, the next scan first raises the floor to this: retention ran just before it.
    prune_before_scan: AtomicU64,
    /// Stored events examined by scans, in all.
    examined: AtomicU64,
    /// The threads scans ran on.
    scanned_on: std::sync::Mutex<Vec<std::thread::ThreadId>>,
    /// When set, the next scan waits until something is sent on (or the sender of) this.
    gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl JournalReader for TestJournal {
    fn floor(&self) -> Result<u64, crate::store::StoreError> {
        Ok(self.floor.load(Ordering::Relaxed))
    }

    fn scan(
        &self,
        after: u64,
        limits: ScanLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<Scan, crate::store::StoreError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        let pruned = self.prune_before_scan.swap(0, Ordering::Relaxed);
        if pruned > 0 {
            self.floor.fetch_max(pruned, Ordering::Relaxed);
        }
        let floor = self.floor.load(Ordering::Relaxed);
        self.scanned_on
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        let events = self.events.lock().unwrap();
        let counted = |meta: EventMeta<'_>| {
            self.examined.fetch_add(1, Ordering::Relaxed);
            select(meta)
        };
        Ok(crate::store::scan_slice(
            events.iter(),
            floor,
            after,
            limits,
            &counted,
        ))
    }

    fn scan_back(
        &self,
        before: u64,
        limits: crate::store::BackLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<crate::store::BackScan, crate::store::StoreError> {
        let floor = self.floor.load(Ordering::Relaxed);
        let events = self.events.lock().unwrap();
        Ok(crate::store::scan_slice_back(
            events.iter(),
            floor,
            before,
            limits,
            select,
        ))
    }
}

fn hub(queue_len: usize) -> Hub {
    hub_with_journal(queue_len).0
}

fn hub_with_journal(queue_len: usize) -> (Hub, Arc<TestJournal>) {
    let journal = Arc::new(TestJournal::default());
    let hub = Hub::with_reads(
        HubConfig {
            queue_len,
            replay_readers: 1,
            heartbeat_interval: std::time::Duration::from_secs(15),
        },
        Cursor {
            epoch: EPOCH,
            position: 0,
        },
        Arc::new(Metrics::new()),
        journal.clone(),
        (Reads::Inline, Reads::Inline),
        crate::otel::Tracing::off(),
    );
    (hub, journal)
}

fn filter(user: &str, admin_feed: bool, types: &[&str], device: &str) -> Filter {
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    let users = match user {
        "" => Users::None,
        "*" => Users::All,
        user => Users::One(user.into()),
    };
    Filter::new(users, admin_feed, &types, device, FilterLimits::default()).expect("valid filter")
}

struct Publisher {
    hub: Hub,
    journal: Arc<TestJournal>,
    position: u64,
}

impl Publisher {
    fn new(hub: &Hub, journal: &Arc<TestJournal>) -> Self {
        Self {
            hub: hub.clone(),
            journal: journal.clone(),
            position: 0,
        }
    }

    fn send(&mut self, event_type: &str, user: &str, device: &str) -> String {
        self.position += 1;
        let id = format!("e{}", self.position);
        let event = pb::Event {
            id: id.clone(),
            cursor: Cursor {
                epoch: EPOCH,
                position: self.position,
            }
            .to_string(),
            r#type: event_type.into(),
            user_id: user.into(),
            device_id: device.into(),
            ..Default::default()
        };
        let frame = crate::store::encode_event_frame(&event);
        self.journal.events.lock().unwrap().push(StoredEvent {
            position: self.position,
            event_type: event_type.into(),
            user_id: user.into(),
            device_id: device.into(),
            frame: frame.clone(),
        });
        self.hub.fan_out(Routed {
            event: &event,
            frame,
            position: self.position,
            published_at: Instant::now(),
            trace: None,
        });
        id
    }
}

/// Everything a subscription has ready now, decoded.
fn drain(subscription: &mut Subscription) -> Vec<Kind> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(frame)) = Pin::new(&mut *subscription).poll_next(&mut cx) {
        let response = pb::SubscribeResponse::decode(frame.bytes).expect("decodes");
        out.push(response.kind.expect("kind set"));
    }
    out
}

fn event_ids(kinds: &[Kind]) -> Vec<String> {
    kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Event(e) => Some(e.id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_user_receives_only_their_own_events() {
    let (hub, journal) = hub_with_journal(16);
    let mut alice = hub
        .subscribe(filter("alice", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut bob = hub
        .subscribe(filter("bob", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let a = publisher.send("billing.payment_success", "alice", "");
    let b = publisher.send("billing.payment_success", "bob", "");
    publisher.send("app.updated", "", "");
    assert_eq!(event_ids(&drain(&mut alice)), vec![a]);
    assert_eq!(event_ids(&drain(&mut bob)), vec![b]);
}

#[test]
fn the_firehose_receives_every_user_event_and_userless_ones() {
    let (hub, journal) = hub_with_journal(16);
    let mut firehose = hub
        .subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let ids = vec![
        publisher.send("quota.updated", "u1", ""),
        publisher.send("device.started", "u2", "d2"),
        publisher.send("app.updated", "", ""),
    ];
    publisher.send(crate::schema::ADMIN_NOTICE_TYPE, "", "");
    assert_eq!(event_ids(&drain(&mut firehose)), ids);
}

#[test]
fn the_admin_feed_gets_notices_and_quota_updates_once() {
    let (hub, journal) = hub_with_journal(16);
    let mut admin_only = hub
        .subscribe(filter("", true, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut admin_and_firehose = hub
        .subscribe(filter("*", true, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut user = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let update = publisher.send("quota.updated", "u1", "");
    let other = publisher.send("device.started", "u1", "d1");
    let notice = publisher.send(crate::schema::ADMIN_NOTICE_TYPE, "", "");
    assert_eq!(
        event_ids(&drain(&mut admin_only)),
        vec![update.clone(), notice.clone()]
    );
    // Selected twice (firehose and admin feed), delivered once.
    assert_eq!(
        event_ids(&drain(&mut admin_and_firehose)),
        vec![update.clone(), other.clone(), notice]
    );
    assert_eq!(event_ids(&drain(&mut user)), vec![update, other]);
}

#[test]
fn type_and_device_filters_narrow_the_stream() {
    let (hub, journal) = hub_with_journal(16);
    let mut billing = hub
        .subscribe(filter("u1", false, &["billing.*"], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut device = hub
        .subscribe(filter("u1", false, &[], "d1"), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let pay = publisher.send("billing.payment_success", "u1", "");
    let start = publisher.send("device.started", "u1", "d1");
    publisher.send("device.started", "u1", "d2");
    assert_eq!(event_ids(&drain(&mut billing)), vec![pay]);
    assert_eq!(event_ids(&drain(&mut device)), vec![start]);
}

#[test]
fn every_stream_starts_with_caught_up_at_the_head() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("quota.updated", "u1", "");
    publisher.send("quota.updated", "u1", "");
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let head = Cursor {
        epoch: EPOCH,
        position: 2,
    };
    let later = publisher.send("quota.updated", "u1", "");
    let kinds = drain(&mut subscription);
    assert_eq!(
        kinds[0],
        Kind::CaughtUp(pb::CaughtUp {
            cursor: head.to_string()
        })
    );
    assert_eq!(event_ids(&kinds), vec![later]);
}

#[test]
fn resuming_replays_what_was_missed_then_catches_up_then_goes_live() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let mut mine = Vec::new();
    for i in 0..6 {
        let user = if i % 2 == 0 { "u1" } else { "u2" };
        let id = publisher.send("quota.updated", user, "");
        if user == "u1" {
            mine.push(id);
        }
    }
    let from = Cursor {
        epoch: EPOCH,
        position: 2,
    };
    let head = hub.head();
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(from))
        .expect("subscribe");
    let live = publisher.send("quota.updated", "u1", "");
    let kinds = drain(&mut subscription);
    // u1's events after position 2 (positions 3 and 5), CaughtUp at the head, then live.
    assert_eq!(event_ids(&kinds), [&mine[1..], &[live][..]].concat());
    let caught_up = kinds
        .iter()
        .position(|k| matches!(k, Kind::CaughtUp(c) if c.cursor == head.to_string()))
        .expect("CaughtUp at the head");
    assert_eq!(caught_up, 2, "{kinds:?}");
    assert!(!kinds.iter().any(|k| matches!(k, Kind::Gap(_))));
}

#[test]
fn a_cursor_below_retention_gets_a_gap_then_the_oldest_retained_events() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let ids: Vec<_> = (0..5)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    journal.floor.store(3, Ordering::Relaxed);
    let from = Cursor {
        epoch: EPOCH,
        position: 1,
    };
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(from))
        .expect("subscribe");
    let kinds = drain(&mut subscription);
    assert_eq!(
        kinds[0],
        Kind::Gap(pb::Gap {
            from_cursor: from.to_string(),
            to_cursor: Cursor {
                epoch: EPOCH,
                position: 3
            }
            .to_string(),
            reason: pb::GapReason::Retention.into(),
        })
    );
    assert_eq!(event_ids(&kinds), ids[3..].to_vec());
    assert!(matches!(kinds.last(), Some(Kind::CaughtUp(_))));
}

#[test]
fn resume_edge_cases() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("quota.updated", "u1", "");
    let head = hub.head();
    // At the head: nothing missed, no gap.
    let mut at_head = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(head))
        .expect("subscribe");
    assert!(matches!(
        drain(&mut at_head).as_slice(),
        [Kind::CaughtUp(_)]
    ));
    // Another journal's cursor: a gap that says so.
    let foreign = Cursor {
        epoch: EPOCH + 1,
        position: 1,
    };
    let mut other = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(foreign))
        .expect("subscribe");
    match drain(&mut other).first() {
        Some(Kind::Gap(gap)) => assert_eq!(gap.reason, i32::from(pb::GapReason::EpochChanged)),
        other => panic!("expected a gap, got {other:?}"),
    }
    // Ahead of the journal: refused.
    let ahead = Cursor {
        epoch: EPOCH,
        position: 99,
    };
    assert!(matches!(
        hub.subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(ahead)),
        Err(HubError::CursorAhead(_))
    ));
}

#[test]
fn a_slow_subscriber_catches_up_from_the_journal_without_slowing_the_others() {
    let (hub, journal) = hub_with_journal(4);
    let mut slow = hub
        .subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut fast = hub
        .subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let mut fast_ids = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..10 {
        sent.push(publisher.send("quota.updated", "u1", ""));
        fast_ids.extend(event_ids(&drain(&mut fast)));
    }
    assert_eq!(fast_ids, sent, "the fast subscriber got everything");
    assert_eq!(hub.shared.metrics.queue_overflows.get(), 1);
    // The slow one overflowed after 3 events (CaughtUp took a place), and still gets every
    // event, in order, once: the rest from the journal.
    let kinds = drain(&mut slow);
    assert_eq!(event_ids(&kinds), sent);
    assert_eq!(slow.end_reason(), None);
    assert_eq!(slow.last_cursor().position, 10);
    // Back on the live feed: the next event arrives through the mailbox.
    let next = publisher.send("quota.updated", "u1", "");
    assert_eq!(event_ids(&drain(&mut slow)), [next]);
}

#[test]
fn shutdown_ends_every_stream_and_refuses_new_ones() {
    let hub = hub(16);
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    hub.shut_down();
    assert!(matches!(
        drain(&mut subscription).as_slice(),
        [Kind::CaughtUp(_)]
    ));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(
            Pin::new(&mut subscription).poll_next(&mut cx),
            Poll::Ready(None)
        ),
        "the stream ended"
    );
    assert_eq!(subscription.end_reason(), Some(EndReason::ShuttingDown));
    assert!(matches!(
        hub.subscribe(filter("u1", false, &[], ""), Viewer::Admin, None),
        Err(HubError::ShuttingDown)
    ));
}

#[test]
fn idle_streams_get_heartbeats_busy_ones_do_not() {
    let (hub, journal) = hub_with_journal(16);
    let mut idle = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut busy = hub
        .subscribe(filter("u2", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    hub.heartbeat(); // both had their CaughtUp since the last tick: no heartbeat yet
    assert!(matches!(drain(&mut idle).as_slice(), [Kind::CaughtUp(_)]));
    assert!(matches!(drain(&mut busy).as_slice(), [Kind::CaughtUp(_)]));
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("quota.updated", "u2", "");
    hub.heartbeat();
    assert!(matches!(drain(&mut idle).as_slice(), [Kind::Heartbeat(_)]));
    assert!(matches!(drain(&mut busy).as_slice(), [Kind::Event(_)]));
}

#[test]
fn dropping_a_subscription_unsubscribes() {
    let hub = hub(16);
    let subscription = hub
        .subscribe(filter("u1", true, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    assert_eq!(hub.subscriber_count(), 1);
    drop(subscription);
    assert_eq!(hub.subscriber_count(), 0);
    let index = hub.shared.read();
    assert!(index.by_user.is_empty() && index.admin.is_empty());
}

/// Subscribers join and heartbeats tick while another thread fans events out: every stream must
/// see, after its `CaughtUp`, every later event exactly once and in order, and no frame may
/// carry a position behind one already queued (the hand-off and heartbeat races).
#[test]
fn concurrent_subscribes_and_heartbeats_never_lose_reorder_or_rewind() {
    const EVENTS: u64 = 5_000;
    const MAX_TICKS: usize = 1_000;
    // Room for every event and every heartbeat: this test is about order, not overflow.
    let (hub, journal) = hub_with_journal(EVENTS as usize + MAX_TICKS + 16);
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            let mut publisher = Publisher::new(&hub, &journal);
            for _ in 0..EVENTS {
                publisher.send("device.error", "u1", "d1");
            }
        })
    };
    let ticker = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for _ in 0..MAX_TICKS {
                if hub.head().position >= EVENTS {
                    break;
                }
                hub.heartbeat();
                std::thread::yield_now();
            }
        })
    };
    let mut subscriptions = Vec::new();
    while hub.head().position < EVENTS && subscriptions.len() < 200 {
        subscriptions.push(
            hub.subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
                .expect("subscribe"),
        );
        std::thread::yield_now();
    }
    publisher.join().expect("publisher");
    ticker.join().expect("ticker");
    assert!(subscriptions.len() > 1, "subscribers joined during the run");

    let mut cx = Context::from_waker(Waker::noop());
    for subscription in &mut subscriptions {
        let mut positions = Vec::new();
        let mut start = None;
        while let Poll::Ready(Some(frame)) = Pin::new(&mut *subscription).poll_next(&mut cx) {
            let response = pb::SubscribeResponse::decode(frame.bytes.clone()).expect("decodes");
            match response.kind.expect("kind") {
                Kind::CaughtUp(_) => start = Some(frame.position),
                Kind::Event(_) => positions.push(frame.position),
                Kind::Heartbeat(_) | Kind::Gap(_) => {}
            }
            let last = positions
                .last()
                .copied()
                .unwrap_or(0)
                .max(start.unwrap_or(0));
            assert!(
                frame.position >= last,
                "a frame went back to {} after {last}",
                frame.position
            );
        }
        let start = start.expect("CaughtUp first");
        let expected: Vec<u64> = (start + 1..=EVENTS).collect();
        if let Some(at) =
            (0..expected.len().max(positions.len())).find(|&i| positions.get(i) != expected.get(i))
        {
            let window = |v: &[u64]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
            panic!(
                "{:?} after CaughtUp({start}): first difference at index {at}: got {:?}, expected {:?} \
                 ({} received, {} expected)",
                subscription.end_reason(),
                window(&positions),
                window(&expected),
                positions.len(),
                expected.len()
            );
        }
    }
}

#[test]
fn the_viewer_stops_what_routing_would_deliver() {
    // A user's viewer on a firehose filter (which the gRPC edge never allows): the hub still
    // hands it only that user's own events, and no admin notice.
    let (hub, journal) = hub_with_journal(8);
    let mut alice = hub
        .subscribe(
            filter("*", true, &[], ""),
            Viewer::User("alice".into()),
            None,
        )
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("billing.low_balance", "bob", "");
    publisher.send("billing.low_balance", "alice", "");
    publisher.send("app.updated", "", "");
    publisher.send(schema::ADMIN_NOTICE_TYPE, "alice", "");
    let events: Vec<_> = drain(&mut alice)
        .into_iter()
        .filter_map(|kind| match kind {
            Kind::Event(event) => Some((event.r#type, event.user_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [("billing.low_balance".to_owned(), "alice".to_owned())]
    );
}

/// A hub reading on a pool of one reader, over `stored` events of a user nobody subscribes as.
fn pooled_hub(stored: u64) -> (Hub, Arc<TestJournal>) {
    let journal = Arc::new(TestJournal::default());
    let hub = Hub::new(
        HubConfig {
            queue_len: 16,
            replay_readers: 1,
            heartbeat_interval: std::time::Duration::from_secs(15),
        },
        Cursor {
            epoch: EPOCH,
            position: 0,
        },
        Arc::new(Metrics::new()),
        journal.clone(),
        crate::otel::Tracing::off(),
    );
    let mut publisher = Publisher::new(&hub, &journal);
    for _ in 0..stored {
        publisher.send("quota.updated", "someone-else", "");
    }
    (hub, journal)
}

/// [`pooled_hub`] whose first scan waits for the returned sender.
fn pooled_hub_with_a_gated_journal(
    stored: u64,
) -> (Hub, Arc<TestJournal>, std::sync::mpsc::Sender<()>) {
    let (hub, journal) = pooled_hub(stored);
    let (open, gate) = std::sync::mpsc::channel();
    *journal.gate.lock().unwrap() = Some(gate);
    (hub, journal, open)
}

fn resume_from_start(hub: &Hub, user: &str) -> Subscription {
    let from = Cursor {
        epoch: EPOCH,
        position: 0,
    };
    hub.subscribe(
        filter(user, false, &[], ""),
        Viewer::User(user.into()),
        Some(from),
    )
    .expect("subscribe")
}

async fn next_kind_of(subscription: &mut Subscription) -> Option<Kind> {
    let next = tokio_stream::StreamExt::next(subscription);
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), next)
        .await
        .expect("a frame or the end within 10 s")?;
    pb::SubscribeResponse::decode(frame.bytes).unwrap().kind
}

/// A user resuming over a long journal that holds none of their events: each poll of the stream
/// does a bounded amount of work, and the journal is read on other threads, never on the one
/// that polls (an async worker, which carries everyone's streams). Reading inside the poll once
/// let 60 such resumes stall every live stream, `Publish` and health check for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_selects_nothing_reads_in_bounded_steps_off_the_polling_thread() {
    const STORED: u64 = 20_000;
    let (hub, journal) = pooled_hub(STORED);
    let mut subscription = resume_from_start(&hub, "u1");
    // The first poll only starts a read: it cannot have examined more than one read's worth.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut subscription).poll_next(&mut cx).is_pending());
    let examined = journal.examined.load(Ordering::Relaxed);
    assert!(examined <= REPLAY_SCAN_LIMIT as u64, "{examined}");
    // The replay runs to its end and says so at the head, having read every event once, in
    // bounded reads, none of them on this thread.
    let frame = tokio_stream::StreamExt::next(&mut subscription)
        .await
        .expect("a frame");
    let kind = pb::SubscribeResponse::decode(frame.bytes).unwrap().kind;
    assert_eq!(
        kind,
        Some(Kind::CaughtUp(pb::CaughtUp {
            cursor: hub.head().to_string()
        }))
    );
    assert_eq!(journal.examined.load(Ordering::Relaxed), STORED);
    let threads = journal.scanned_on.lock().unwrap().clone();
    assert_eq!(threads.len(), (STORED as usize).div_ceil(REPLAY_SCAN_LIMIT));
    assert!(!threads.contains(&std::thread::current().id()));
}

/// A stream handed a reader must not keep it while nobody polls the stream (its client reads
/// slowly, or not at all: the transport stops polling a stream whose flow-control window is
/// shut). Waiting for the reader inside the stream's own future once let one such client stop
/// every replay on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_polled_does_not_keep_a_journal_reader() {
    let (hub, _journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut cx = Context::from_waker(Waker::noop());
    // The one reader is busy for `first`; `stalled` waits for it, then is never polled again.
    let mut first = resume_from_start(&hub, "u1");
    assert!(Pin::new(&mut first).poll_next(&mut cx).is_pending());
    let mut stalled = resume_from_start(&hub, "u2");
    assert!(Pin::new(&mut stalled).poll_next(&mut cx).is_pending());
    open.send(()).unwrap();
    // The reader went to `stalled`'s read and came back: another resume gets its turn.
    let mut next = resume_from_start(&hub, "u3");
    assert!(matches!(
        next_kind_of(&mut next).await,
        Some(Kind::CaughtUp(_))
    ));
    drop(stalled);
}

/// Shutdown ends a stream that is waiting for a journal reader at once, with the last cursor it
/// sent, instead of after its turn, its read and its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_stream_waiting_for_the_journal_at_once() {
    let (hub, _journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut cx = Context::from_waker(Waker::noop());
    let mut busy = resume_from_start(&hub, "u1");
    assert!(Pin::new(&mut busy).poll_next(&mut cx).is_pending());
    let mut waiting = resume_from_start(&hub, "u2");
    assert!(Pin::new(&mut waiting).poll_next(&mut cx).is_pending());
    hub.shut_down();
    assert_eq!(next_kind_of(&mut waiting).await, None, "ended");
    assert_eq!(waiting.end_reason(), Some(EndReason::ShuttingDown));
    assert_eq!(waiting.last_cursor().position, 0);
    drop(open);
}

/// A stream the journal keeps waiting (a long queue for the readers) says it is alive: a
/// heartbeat every `--heartbeat-interval`, at the last cursor it sent, so clients that watch
/// for silence do not drop it and go to the back of the queue.
#[tokio::test(start_paused = true)]
async fn a_stream_kept_waiting_by_the_journal_gets_heartbeats_at_its_last_cursor() {
    let (hub, _journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut waiting = resume_from_start(&hub, "u1");
    let start = Cursor {
        epoch: EPOCH,
        position: 0,
    }
    .to_string();
    let mut cx = Context::from_waker(Waker::noop());
    let mut poll = |waiting: &mut Subscription| match Pin::new(waiting).poll_next(&mut cx) {
        Poll::Ready(Some(frame)) => pb::SubscribeResponse::decode(frame.bytes).unwrap().kind,
        Poll::Ready(None) => panic!("ended"),
        Poll::Pending => None,
    };
    // (Time does not advance by itself while a blocking read runs: it is moved by hand.)
    assert_eq!(poll(&mut waiting), None, "reading");
    for _ in 0..2 {
        tokio::time::advance(std::time::Duration::from_secs(14)).await;
        assert_eq!(poll(&mut waiting), None, "not yet");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            poll(&mut waiting),
            Some(Kind::Heartbeat(pb::Heartbeat {
                cursor: start.clone()
            }))
        );
    }
    open.send(()).unwrap();
    assert!(matches!(
        next_kind_of(&mut waiting).await,
        Some(Kind::CaughtUp(_))
    ));
}

/// A resume from the head itself (a reconnect with nothing missed) is caught up at once,
/// without waiting for a journal reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_the_head_needs_no_journal_read() {
    let (hub, journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut subscription = hub
        .subscribe(
            filter("u1", false, &[], ""),
            Viewer::User("u1".into()),
            Some(hub.head()),
        )
        .expect("subscribe");
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Some(frame)) = Pin::new(&mut subscription).poll_next(&mut cx) else {
        panic!("CaughtUp at once");
    };
    assert!(matches!(
        pb::SubscribeResponse::decode(frame.bytes).unwrap().kind,
        Some(Kind::CaughtUp(_))
    ));
    assert!(journal.scanned_on.lock().unwrap().is_empty());
    drop(open);
}

/// Retention may remove events past the point where a lagging subscriber's catch-up ends
/// (`until`, where it rejoined the live feed) before the catch-up reads them. The subscriber is
/// told of the gap up to `until` (what follows is in its mailbox, not lost), and its cursor
/// never moves backwards (this once underflowed `until - read_after`).
#[test]
fn retention_passing_a_lagging_subscribers_catch_up_gives_a_gap_and_never_rewinds() {
    let (hub, journal) = hub_with_journal(2);
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let sent: Vec<_> = (0..6)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    // The mailbox held e1 and e2, then overflowed; the catch-up to position 6 will find
    // retention already at 8.
    journal.prune_before_scan.store(8, Ordering::Relaxed);
    let kinds = drain(&mut subscription);
    assert_eq!(event_ids(&kinds), sent[..2].to_vec());
    let cursor = |position| {
        Cursor {
            epoch: EPOCH,
            position,
        }
        .to_string()
    };
    assert_eq!(
        kinds.last(),
        Some(&Kind::Gap(pb::Gap {
            from_cursor: cursor(2),
            to_cursor: cursor(6),
            reason: pb::GapReason::Retention.into(),
        }))
    );
    assert_eq!(subscription.last_cursor().position, 6);
    // Live again: the next events come through the mailbox, in order.
    let later: Vec<_> = (0..2)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    assert_eq!(event_ids(&drain(&mut subscription)), later);
    assert_eq!(subscription.last_cursor().position, 8);
}

/// A history page whose scan finds retention past the head (everything it would read is gone)
/// ends at once, at the head; it once looped forever.
#[tokio::test]
async fn a_history_page_ends_when_retention_passes_the_head_during_the_scan() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    for _ in 0..5 {
        publisher.send("quota.updated", "u1", "");
    }
    journal.prune_before_scan.store(9, Ordering::Relaxed);
    let page = hub
        .list(filter("u1", false, &[], ""), Viewer::Admin, None, 100)
        .await
        .expect("a page");
    assert!(page.events.is_empty());
    assert!(page.end);
    assert_eq!(page.next, hub.head());
}

/// Newest-first history: a cursor from another journal starts at the head with a gap that says
/// so; one ahead of the journal is refused; retention ends the paging.
#[tokio::test]
async fn newest_first_pages_report_another_journals_cursor_and_end_at_retention() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let ids: Vec<_> = (0..5)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    let u1 = || filter("u1", false, &[], "");
    let foreign = Cursor {
        epoch: EPOCH + 1,
        position: 3,
    };
    let page = hub
        .list_newest(u1(), Viewer::Admin, Some(foreign), 2)
        .await
        .expect("a page");
    let shown: Vec<_> = page.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(shown, [ids[4].clone(), ids[3].clone()]);
    let gap = page.gap.expect("a gap");
    assert_eq!(gap.reason, i32::from(pb::GapReason::EpochChanged));
    assert_eq!(page.head, hub.head());
    let ahead = Cursor {
        epoch: EPOCH,
        position: 99,
    };
    assert!(matches!(
        hub.list_newest(u1(), Viewer::Admin, Some(ahead), 2).await,
        Err(HubError::CursorAhead(_))
    ));
    // Positions 1 and 2 retained no more: the page before 4 holds 3 and ends.
    journal.floor.store(2, Ordering::Relaxed);
    let page = hub
        .list_newest(u1(), Viewer::Admin, Some(page.next), 10)
        .await
        .expect("a page");
    let shown: Vec<_> = page.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(shown, [ids[2].clone()]);
    assert!(page.end && page.gap.is_none());
}

/// A frame an older server stored for an untyped event nested too deep for protobuf decoders
/// (the schema refuses such bodies now): 60 nested lists, level 123 in its `SubscribeResponse`.
fn too_deep_frame(id: &str, position: u64, user: &str) -> bytes::Bytes {
    let mut value = prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(Default::default())),
    };
    for _ in 1..60 {
        value = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue {
                    values: vec![value],
                },
            )),
        };
    }
    let event = pb::Event {
        id: id.into(),
        cursor: Cursor {
            epoch: EPOCH,
            position,
        }
        .to_string(),
        r#type: "billing.anything".into(),
        user_id: user.into(),
        payload: Some(pb::event::Payload::Untyped(prost_types::Struct {
            fields: [("x".to_owned(), value)].into(),
        })),
        ..Default::default()
    };
    let frame = crate::store::encode_event_frame(&event);
    assert!(pb::SubscribeResponse::decode(frame.clone()).is_err());
    frame
}

impl Publisher {
    /// Stores `frame` as the next event, as the sequencer would have, and fans it out.
    fn send_frame(&mut self, event_type: &str, user: &str, frame: bytes::Bytes) -> u64 {
        self.position += 1;
        self.journal.events.lock().unwrap().push(StoredEvent {
            position: self.position,
            event_type: event_type.into(),
            user_id: user.into(),
            device_id: "".into(),
            frame: frame.clone(),
        });
        let event = pb::Event {
            r#type: event_type.into(),
            user_id: user.into(),
            ..Default::default()
        };
        self.hub.fan_out(Routed {
            event: &event,
            frame,
            position: self.position,
            published_at: Instant::now(),
            trace: None,
        });
        self.position
    }
}

/// WARN lines logged on this thread while the guard lives.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logged {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logged = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || logged.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

/// A stored frame that does not decode (too deep for prost, or damaged) is not left out of a
/// history page, as it once was without a word: the page holds the event without its payload,
/// with the journal's type and user and what its envelope says, and paging goes on past it. Each
/// read counts in `notify_unreadable_events_total`; each position is logged once.
#[tokio::test]
async fn a_stored_frame_that_does_not_decode_is_served_without_its_payload_logged_and_counted() {
    let logged = Logged::default();
    let _guard = logged.capture();
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let first = publisher.send("quota.updated", "u1", "");
    let deep = publisher.send_frame("billing.anything", "u1", too_deep_frame("deep", 2, "u1"));
    let damaged = publisher.send_frame(
        "quota.updated",
        "u1",
        bytes::Bytes::from_static(b"\x0a\xff\xff not a frame"),
    );
    let last = publisher.send("quota.updated", "u1", "");
    let u1 = || filter("u1", false, &[], "");

    let page = hub
        .list(u1(), Viewer::User("u1".into()), None, 2)
        .await
        .expect("a page");
    let ids: Vec<_> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [first.as_str(), "deep"]);
    let stub = &page.events[1];
    assert_eq!(stub.payload, None);
    assert_eq!(stub.r#type, "billing.anything");
    assert_eq!(stub.user_id, "u1");
    assert_eq!(stub.cursor, hub.shared.cursor(deep).to_string());
    assert!(!page.end);
    assert_eq!(page.next.position, deep);

    let page = hub
        .list(u1(), Viewer::User("u1".into()), Some(page.next), 2)
        .await
        .expect("the next page");
    assert_eq!(page.events.len(), 2, "{:?}", page.events);
    let damaged_event = &page.events[0];
    assert_eq!(
        (damaged_event.payload.as_ref(), damaged_event.id.as_str()),
        (None, "")
    );
    assert_eq!(damaged_event.r#type, "quota.updated");
    assert_eq!(damaged_event.cursor, hub.shared.cursor(damaged).to_string());
    assert_eq!(page.events[1].id, last);
    assert!(page.end);
    assert_eq!(hub.shared.metrics.unreadable_events.get(), 2);

    // Newest first, the same: all four events.
    let page = hub
        .list_newest(u1(), Viewer::Admin, None, 10)
        .await
        .expect("a page");
    let ids: Vec<_> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [last.as_str(), "", "deep", first.as_str()]);
    assert_eq!(hub.shared.metrics.unreadable_events.get(), 4);
    // Read twice, logged once each.
    assert_eq!(logged.lines_with("does not decode"), 2);
    assert_eq!(logged.lines_with(&format!("position={deep}")), 1);
    assert_eq!(logged.lines_with(&format!("position={damaged}")), 1);
}

/// A stream resuming over an event an older server stored too deep for protobuf decoders gets
/// it without its payload, a frame it can decode, instead of the frame that stopped it at every
/// resume.
#[test]
fn a_replayed_frame_too_deep_for_clients_is_sent_without_its_payload() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let first = publisher.send("quota.updated", "u1", "");
    publisher.send_frame("billing.anything", "u1", too_deep_frame("deep", 2, "u1"));
    let last = publisher.send("quota.updated", "u1", "");
    let mut subscription = resume_from_start(&hub, "u1");
    let kinds = drain(&mut subscription);
    assert_eq!(event_ids(&kinds), [first, "deep".into(), last]);
    let Kind::Event(deep) = &kinds[1] else {
        panic!("{kinds:?}");
    };
    assert_eq!(deep.payload, None);
    assert_eq!(deep.cursor, hub.shared.cursor(2).to_string());
    assert!(matches!(kinds.last(), Some(Kind::CaughtUp(_))));
    assert_eq!(hub.shared.metrics.unreadable_events.get(), 1);
}

mod interleavings {
    //! Publishes, reads, disconnects and resumes in any order, with queues small enough to lag:
    //! a client that always resumes from the last cursor it processed receives every one of its
    //! events exactly once, in order.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Publish { mine: bool },
        Open,
        Read(usize),
        Disconnect,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<bool>().prop_map(|mine| Op::Publish { mine }),
            1 => Just(Op::Open),
            3 => (1_usize..8).prop_map(Op::Read),
            1 => Just(Op::Disconnect),
        ]
    }

    /// Reads up to `n` ready frames, recording events and moving `last` as a client would.
    fn read(
        subscription: &mut Subscription,
        n: usize,
        got: &mut Vec<String>,
        last: &mut Cursor,
    ) -> Result<(), TestCaseError> {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..n {
            let Poll::Ready(Some(frame)) = Pin::new(&mut *subscription).poll_next(&mut cx) else {
                break;
            };
            let kind = pb::SubscribeResponse::decode(frame.bytes)
                .expect("decodes")
                .kind
                .expect("kind set");
            match kind {
                Kind::Event(event) => {
                    got.push(event.id);
                    *last = Cursor::parse(&event.cursor).expect("a cursor");
                }
                Kind::CaughtUp(c) => *last = Cursor::parse(&c.cursor).expect("a cursor"),
                Kind::Heartbeat(_) => {}
                Kind::Gap(gap) => prop_assert!(false, "unexpected gap {gap:?}"),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_gap_and_no_duplicate_at_any_hand_off(
            ops in prop::collection::vec(op(), 1..120),
            queue_len in 1_usize..6,
        ) {
            let (hub, journal) = hub_with_journal(queue_len);
            let mut publisher = Publisher::new(&hub, &journal);
            let (mut expected, mut got) = (Vec::new(), Vec::new());
            let mut last = Cursor { epoch: EPOCH, position: 0 };
            let mut subscription: Option<Subscription> = None;
            let open = |last: Cursor| {
                hub.subscribe(
                    filter("u1", false, &[], ""),
                    Viewer::User("u1".into()),
                    Some(last),
                )
                .expect("subscribe")
            };
            for op in ops {
                match op {
                    Op::Publish { mine } => {
                        let id = publisher.send("quota.updated", if mine { "u1" } else { "u2" }, "");
                        if mine {
                            expected.push(id);
                        }
                    }
                    Op::Open => {
                        if subscription.is_none() {
                            subscription = Some(open(last));
                        }
                    }
                    Op::Read(n) => {
                        if let Some(s) = subscription.as_mut() {
                            read(s, n, &mut got, &mut last)?;
                        }
                    }
                    Op::Disconnect => subscription = None,
                }
            }
            let mut s = subscription.unwrap_or_else(|| open(last));
            read(&mut s, usize::MAX, &mut got, &mut last)?;
            prop_assert_eq!(got, expected);
        }
    }
}
