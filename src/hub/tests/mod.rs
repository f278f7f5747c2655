//! Routing and delivery rules of the hub, without any transport: the test journal, hub and
//! publisher every test shares, and one file per subject: `routing` (who gets an event),
//! `resume` (replay, gaps and catch-up), `lifecycle` (heartbeats, shutdown, the races between
//! joining and fan-out), `readers` (journal reads off the polling thread), `history` (pages),
//! `storm` (conflation, coalesced notices and a stream's rate),
//! `unreadable` (stored frames that do not decode), `interleavings` (a property test of the
//! hand-offs).

mod history;
mod interleavings;
mod lifecycle;
mod readers;
mod resume;
mod routing;
mod storm;
mod unreadable;

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Instant,
};

use prost::Message;
use tokio_stream::Stream;

use super::{reads::Reads, subscription::REPLAY_SCAN_LIMIT, *};
use crate::{
    auth::Viewer,
    pb::{self, subscribe_response::Kind},
    schema,
    store::{Cursor, EventMeta, JournalReader, Scan, ScanLimits, StoredEvent},
    telemetry::Metrics,
};

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
    /// Scans that pass before the gate applies.
    gate_after: AtomicU64,
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
        let passes = self
            .gate_after
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let gate = if passes {
            None
        } else {
            self.gate.lock().unwrap().take()
        };
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
        HubSettings {
            queue_len,
            replay_readers: 1,
            heartbeat_interval: std::time::Duration::from_secs(15),
            notice_coalesce_window: std::time::Duration::from_secs(2),
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
    Filter::new(users, admin_feed, &types, device, FilterSettings::default()).expect("valid filter")
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

    /// Stores and fans out `event` (its id and cursor set here); returns its position.
    fn send_event(&mut self, mut event: pb::Event) -> u64 {
        self.position += 1;
        if event.id.is_empty() {
            event.id = format!("e{}", self.position);
        }
        event.cursor = Cursor {
            epoch: EPOCH,
            position: self.position,
        }
        .to_string();
        let frame = crate::store::encode_event_frame(&event);
        self.journal.events.lock().unwrap().push(StoredEvent {
            position: self.position,
            event_type: event.r#type.as_str().into(),
            user_id: event.user_id.as_str().into(),
            device_id: event.device_id.as_str().into(),
            frame: frame.clone(),
        });
        self.hub.fan_out(Routed {
            event: &event,
            frame,
            position: self.position,
            published_at: Instant::now(),
            trace: None,
            muted: false,
        });
        self.position
    }

    fn send(&mut self, event_type: &str, user: &str, device: &str) -> String {
        let position = self.send_event(pb::Event {
            r#type: event_type.into(),
            user_id: user.into(),
            device_id: device.into(),
            ..Default::default()
        });
        format!("e{position}")
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

/// A hub reading on a pool of one reader, over `stored` events of a user nobody subscribes as.
fn pooled_hub(stored: u64) -> (Hub, Arc<TestJournal>) {
    let (hub, journal) = pooled_hub_beating(std::time::Duration::from_secs(15));
    let mut publisher = Publisher::new(&hub, &journal);
    for _ in 0..stored {
        publisher.send("quota.updated", "someone-else", "");
    }
    (hub, journal)
}

/// A hub reading on a pool of one reader over an empty journal, whose streams kept waiting get
/// a heartbeat every `heartbeat_interval`.
fn pooled_hub_beating(heartbeat_interval: std::time::Duration) -> (Hub, Arc<TestJournal>) {
    let journal = Arc::new(TestJournal::default());
    let hub = Hub::new(
        HubSettings {
            queue_len: 16,
            replay_readers: 1,
            heartbeat_interval,
            notice_coalesce_window: std::time::Duration::from_secs(2),
        },
        Cursor {
            epoch: EPOCH,
            position: 0,
        },
        Arc::new(Metrics::new()),
        journal.clone(),
        crate::otel::Tracing::off(),
    );
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
