//! Fan-out: which subscribers get an event, and handing it to them without ever waiting.
//!
//! Owns: the routing index (user id → subscribers, the firehose, the admin feed), filters, each
//! subscriber's bounded [`Mailbox`] and its overflow policy (continue from the journal), replay
//! on resume and the hand-off to live events, history pages ([`Hub::list`]), heartbeats, and
//! ending every stream on shutdown. Does not own: decoding (`schema`), positions (`store`), the
//! order of events (the `sequencer` calls [`Hub::fan_out`] in journal order, one event at a
//! time), or transport (`grpc` turns a [`Subscription`] into a gRPC stream).
//!
//! Each event is encoded once into a `SubscribeResponse`; all its recipients share those bytes.
//! History pages decode stored frames; one that does not decode is served without its payload,
//! logged and counted, never left out (see `decode_events`). Replays check the frames that can
//! hold a `Struct` the same way (`make_replayable`).
//!
//! Journal reads (replays, history pages) never run on the async workers, which carry every
//! live stream: each read is bounded (stored events examined, events and bytes selected) and
//! runs on a blocking thread, at most `--replay-readers` replay reads and as many history reads
//! at once. A storm of resumes waits for its turn at the replay readers: it is slow for those
//! who replay, while live streams, `Publish`, health checks, history pages and resumes that are
//! already at the head go on as before. A reader is held only while it reads, never by a stream
//! that is slow to take what was read.

mod filter;
mod mailbox;

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use prost::Message;
use tokio::sync::Semaphore;

pub use filter::{
    Audience, Filter, FilterError, FilterLimits, MAX_PATTERN_LEN, MAX_TYPE_PATTERNS, Users,
};
pub use mailbox::{EndReason, Frame, Mailbox, Next, Push};

use crate::{
    auth::Viewer,
    otel::{Delivery, EventTrace, FrameTrace, MAX_HANDOFF_SPANS, Tracing},
    pb::{self, subscribe_response::Kind},
    store::{
        BackLimits, BackScan, Cursor, EventMeta, JournalReader, Scan, ScanLimits, StoreError,
        StoredEvent,
    },
    telemetry::Metrics,
};

/// Settings of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Frames one subscriber may have queued before it counts as too slow (see [`Mailbox`]).
    pub queue_len: usize,
    /// Replay reads that may run at once, each on a blocking thread; further reads wait their
    /// turn (`--replay-readers`). History pages have as many readers of their own.
    pub replay_readers: usize,
    /// A replaying stream that waited this long for the journal gets a heartbeat
    /// (`--heartbeat-interval`), so clients watching for silence do not give up on it.
    pub heartbeat_interval: std::time::Duration,
}

/// Why a subscription could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The server is shutting down and takes no new subscribers.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// `resume_after` is a position this journal has not reached.
    #[error("cursor {0} is ahead of this server's journal")]
    CursorAhead(String),
    /// The journal could not be read.
    #[error("the journal cannot be read: {0}")]
    Journal(String),
}

struct Subscriber {
    id: u64,
    filter: Filter,
    /// Checked for every event routed to this subscriber, on top of the routing index.
    viewer: Viewer,
    mailbox: Mailbox,
}

#[derive(Default)]
struct Index {
    /// Every subscriber, by id.
    all: HashMap<u64, Arc<Subscriber>>,
    /// Subscribers of one user's events.
    by_user: HashMap<Box<str>, Vec<Arc<Subscriber>>>,
    /// Subscribers of every user's events.
    firehose: Vec<Arc<Subscriber>>,
    /// Subscribers of the admin feed.
    admin: Vec<Arc<Subscriber>>,
    /// Set at shutdown: no new subscribers.
    closed: bool,
}

impl Index {
    fn insert(&mut self, subscriber: Arc<Subscriber>) {
        match &subscriber.filter.users {
            Users::None => {}
            Users::One(user) => self
                .by_user
                .entry(user.clone())
                .or_default()
                .push(subscriber.clone()),
            Users::All => self.firehose.push(subscriber.clone()),
        }
        if subscriber.filter.admin_feed {
            self.admin.push(subscriber.clone());
        }
        self.all.insert(subscriber.id, subscriber);
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(subscriber) = self.all.remove(&id) else {
            return false;
        };
        let keep = |s: &Arc<Subscriber>| s.id != id;
        match &subscriber.filter.users {
            Users::None => {}
            Users::One(user) => {
                if let Some(list) = self.by_user.get_mut(user) {
                    list.retain(keep);
                    if list.is_empty() {
                        self.by_user.remove(user);
                    }
                }
            }
            Users::All => self.firehose.retain(keep),
        }
        if subscriber.filter.admin_feed {
            self.admin.retain(keep);
        }
        true
    }
}

struct Shared {
    config: HubConfig,
    metrics: Arc<Metrics>,
    epoch: u64,
    /// Position of the last event fanned out. Written under the index read lock after the
    /// event was pushed, read under the write lock by `subscribe`: see [`Hub::subscribe`].
    head: AtomicU64,
    next_id: AtomicU64,
    index: RwLock<Index>,
    /// Where replays, lagging subscribers and history pages read.
    journal: Arc<dyn JournalReader>,
    /// Where replay reads run.
    reads: Reads,
    /// Where history (`ListEvents`) reads run: readers of their own, so a page is not queued
    /// behind a storm of replays.
    history: Reads,
    /// Hand-off spans of sampled replayed events, when tracing is on.
    tracing: Tracing,
    /// Where history reads report stored frames that do not decode.
    unreadable: Unreadable,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cursor(&self, position: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            position,
        }
    }
}

/// The fan-out hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// An event ready to fan out: routing facts plus the encoded `SubscribeResponse` all recipients
/// share.
#[derive(Debug, Clone)]
pub struct Routed<'a> {
    /// The event (its `cursor` set), for routing.
    pub event: &'a pb::Event,
    /// `SubscribeResponse { event }` encoded, as the journal stored it: sent as is.
    pub frame: Bytes,
    /// Its journal position.
    pub position: u64,
    /// When it entered the server.
    pub published_at: Instant,
    /// Its trace, if sampled.
    pub trace: Option<EventTrace>,
}

impl Hub {
    /// A hub with no subscribers whose head is `head` (the journal's head at start-up).
    /// `tracing` records the hand-offs of sampled replayed events.
    pub fn new(
        config: HubConfig,
        head: Cursor,
        metrics: Arc<Metrics>,
        journal: Arc<dyn JournalReader>,
        tracing: Tracing,
    ) -> Self {
        let readers = || {
            let permits = config.replay_readers.clamp(1, Semaphore::MAX_PERMITS);
            Reads::Pool(Arc::new(Semaphore::new(permits)))
        };
        Self::with_reads(
            config,
            head,
            metrics,
            journal,
            (readers(), readers()),
            tracing,
        )
    }

    fn with_reads(
        config: HubConfig,
        head: Cursor,
        metrics: Arc<Metrics>,
        journal: Arc<dyn JournalReader>,
        (reads, history): (Reads, Reads),
        tracing: Tracing,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                metrics: Arc::clone(&metrics),
                epoch: head.epoch,
                head: AtomicU64::new(head.position),
                next_id: AtomicU64::new(1),
                index: RwLock::new(Index::default()),
                journal,
                reads,
                history,
                tracing,
                unreadable: Unreadable::new(metrics),
            }),
        }
    }

    /// The cursor of the last event fanned out.
    pub fn head(&self) -> Cursor {
        self.shared.cursor(self.shared.head.load(Ordering::Acquire))
    }

    /// The number of open subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.shared.read().all.len()
    }

    /// Hands one event to every subscriber that selects it and whose filters pass it. Never
    /// waits: a subscriber whose mailbox is full lags, and continues from the journal (see
    /// [`Mailbox`]). Must be called in journal order, by one caller at a time (the sequencer).
    /// Returns how many subscribers' queues took it.
    pub fn fan_out(&self, routed: Routed<'_>) -> u64 {
        let event = routed.event;
        let frame = Frame {
            bytes: routed.frame,
            position: routed.position,
            published_at: Some(routed.published_at),
            trace: routed.trace.map(FrameTrace::live),
        };
        let shared = &*self.shared;
        let index = shared.read();
        let mut delivered = 0_u64;
        let audience = Audience::of(&event.r#type);
        let admin_notice = audience == Audience::AdminOnly;
        let mut deliver = |subscriber: &Subscriber| {
            if !subscriber.filter.passes(&event.r#type, &event.device_id)
                || !subscriber.viewer.may_see(&event.user_id, admin_notice)
            {
                return;
            }
            match subscriber.mailbox.push(frame.clone()) {
                Push::Queued => delivered += 1,
                Push::Overflowed => {
                    shared.metrics.queue_overflows.inc();
                }
                Push::Lagging | Push::Closed => {}
            }
        };
        match audience {
            Audience::AdminOnly => index.admin.iter().for_each(|s| deliver(s)),
            Audience::Users { admin_too } => {
                if !event.user_id.is_empty()
                    && let Some(list) = index.by_user.get(event.user_id.as_str())
                {
                    list.iter().for_each(|s| deliver(s));
                }
                index.firehose.iter().for_each(|s| deliver(s));
                if admin_too {
                    // Skip admins whose user selection already delivered this event.
                    index
                        .admin
                        .iter()
                        .filter(|s| !s.filter.selects_user(&event.user_id))
                        .for_each(|s| deliver(s));
                }
            }
        }
        // Published while still holding the read lock, so `subscribe` (write lock) sees either
        // the event pushed to nobody new and the old head, or the new head.
        shared.head.store(routed.position, Ordering::Release);
        drop(index);
        shared.metrics.record_fan_out(&event.r#type, delivered);
        delivered
    }

    /// Opens a subscription.
    ///
    /// Without `resume_after` the stream starts with `CaughtUp` at the current head. With it,
    /// the stream first replays from the journal every event after that cursor that this
    /// subscriber selects and may see, then says `CaughtUp` at the head it replayed to, then
    /// carries live events: the subscriber joins the live feed (under the index write lock, so
    /// no fan-out runs) before replay starts, so the hand-off has no gap and no duplicate. A
    /// cursor from another journal epoch, or older than what the journal retains, gets a `Gap`
    /// first and replays the oldest retained events.
    ///
    /// `viewer` is what the subscriber may see (from its token); every routed or replayed event
    /// is checked against it, whatever the filter selected.
    pub fn subscribe(
        &self,
        filter: Filter,
        viewer: Viewer,
        resume_after: Option<Cursor>,
    ) -> Result<Subscription, HubError> {
        let shared = &*self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber {
            id,
            filter,
            viewer,
            mailbox: Mailbox::new(shared.config.queue_len),
        });
        let mut index = shared.write();
        if index.closed {
            return Err(HubError::ShuttingDown);
        }
        // Under the write lock no event is being fanned out, so `head` is exact: every event up
        // to it is in the journal, every later one will reach this subscriber's mailbox.
        let head = shared.cursor(shared.head.load(Ordering::Acquire));
        let mut pending = VecDeque::new();
        let mut replay = None;
        if let Some(from) = resume_after {
            if from.epoch == head.epoch && from.position > head.position {
                return Err(HubError::CursorAhead(from.to_string()));
            }
            if from == head {
                // Nothing missed (a reconnect after a blip, the usual case in a reconnect
                // storm): caught up at once, no journal read.
                pending.push_back(caught_up_frame(head));
            } else {
                let start = if from.epoch == head.epoch {
                    from.position
                } else {
                    pending.push_back(gap_frame(from, head.epoch, 0, pb::GapReason::EpochChanged));
                    0
                };
                replay = Some(Replay {
                    read_after: start,
                    until: head.position,
                    caught_up: true,
                });
            }
        } else {
            pending.push_back(caught_up_frame(head));
        }
        // The opening frames count as activity: no heartbeat right behind them.
        subscriber.mailbox.touch();
        index.insert(subscriber.clone());
        drop(index);
        shared.metrics.subscribers.inc();
        Ok(Subscription {
            hub: self.shared.clone(),
            subscriber,
            last_position: replay.map_or(head.position, |r: Replay| r.read_after),
            pending,
            replay,
            reading: None,
            waiting: None,
            replay_spans_left: MAX_HANDOFF_SPANS,
        })
    }

    /// Reads up to `limit` stored events after `after` (from the oldest retained without it)
    /// that a subscription with `filter` seen by `viewer` would get, oldest first. One bounded
    /// read ([`LIST_SCAN_LIMIT`] events examined) on the journal readers: a page of a user with
    /// few events in a busy journal ends early, and its `next` continues the scan.
    ///
    /// # Errors
    ///
    /// [`HubError::CursorAhead`] for a cursor beyond the head; [`HubError::Journal`] when the
    /// journal cannot be read.
    pub async fn list(
        &self,
        filter: Filter,
        viewer: Viewer,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, HubError> {
        let shared = &*self.shared;
        let head = shared.head.load(Ordering::Acquire);
        let start = match after {
            Some(after) if after.epoch != shared.epoch => 0,
            Some(after) if after.position > head => {
                return Err(HubError::CursorAhead(after.to_string()));
            }
            Some(after) => after.position,
            None => 0,
        };
        let limits = ScanLimits {
            until: head,
            max_scanned: LIST_SCAN_LIMIT,
            max_selected: limit,
            max_bytes: LIST_PAGE_BYTES,
        };
        let (scan, events) = self
            .read_page(
                filter,
                viewer,
                move |journal, select| journal.scan(start, limits, select),
                |scan: &Scan| &scan.events,
            )
            .await?;
        let gap = match after {
            Some(after) if after.epoch != shared.epoch => {
                Some((after, pb::GapReason::EpochChanged))
            }
            Some(after) if after.position < scan.floor => Some((after, pb::GapReason::Retention)),
            _ => None,
        };
        Ok(Page {
            events,
            next: shared.cursor(scan.last),
            end: scan.last >= head,
            gap: gap.map(|(from, reason)| pb::Gap {
                from_cursor: from.to_string(),
                // Never past where the page ends: what follows `next` is the next page's.
                to_cursor: shared.cursor(scan.floor.min(scan.last)).to_string(),
                reason: reason.into(),
            }),
            head: shared.cursor(head),
        })
    }

    /// Reads one history page on the `ListEvents` readers: `scan` reads the journal with the
    /// page's selection, and the events it selected (`events_of`) are decoded there too, since
    /// a page of them is CPU work for the reader's thread, not for an async worker.
    async fn read_page<S: Send + 'static>(
        &self,
        filter: Filter,
        viewer: Viewer,
        scan: impl FnOnce(&dyn JournalReader, &dyn Fn(EventMeta<'_>) -> bool) -> Result<S, StoreError>
        + Send
        + 'static,
        events_of: fn(&S) -> &[StoredEvent],
    ) -> Result<(S, Vec<pb::Event>), HubError> {
        let shared = Arc::clone(&self.shared);
        self.shared
            .history
            .run(move || {
                let scanned = scan(&*shared.journal, &|meta| selects(&filter, &viewer, meta))?;
                let events = decode_events(
                    events_of(&scanned),
                    |position| shared.cursor(position),
                    &shared.unreadable,
                );
                Ok((scanned, events))
            })
            .await
            .map_err(|e| HubError::Journal(e.to_string()))
    }

    /// One page of stored history, newest first: the newest events before `before` (from the
    /// head when `None`) that `filter` selects and `viewer` may see, with the same bounds as
    /// [`Hub::list`]. `Page::next` continues with older events; `Page::head` is the head the
    /// page was read at, from which a subscription goes live with nothing missed or repeated.
    /// A `before` from another journal epoch starts at the head, with a gap saying so.
    pub async fn list_newest(
        &self,
        filter: Filter,
        viewer: Viewer,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, HubError> {
        let shared = &*self.shared;
        let head = shared.head.load(Ordering::Acquire);
        let (start, other_epoch) = match before {
            Some(before) if before.epoch != shared.epoch => (head + 1, Some(before)),
            Some(before) if before.position > head => {
                return Err(HubError::CursorAhead(before.to_string()));
            }
            Some(before) => (before.position, None),
            None => (head + 1, None),
        };
        let limits = BackLimits {
            max_scanned: LIST_SCAN_LIMIT,
            max_selected: limit,
            max_bytes: LIST_PAGE_BYTES,
        };
        let (scan, events) = self
            .read_page(
                filter,
                viewer,
                move |journal, select| journal.scan_back(start, limits, select),
                |scan: &BackScan| &scan.events,
            )
            .await?;
        Ok(Page {
            events,
            next: shared.cursor(scan.first),
            end: scan.first <= scan.floor,
            gap: other_epoch.map(|from| pb::Gap {
                from_cursor: from.to_string(),
                to_cursor: shared.cursor(head).to_string(),
                reason: pb::GapReason::EpochChanged.into(),
            }),
            head: shared.cursor(head),
        })
    }

    /// Lets a lagged subscriber receive live events again: under the index write lock (no
    /// fan-out running) its mailbox is reopened and the head read, so every event after that
    /// head reaches the mailbox and every event up to it is in the journal.
    fn rejoin(shared: &Shared, subscriber: &Subscriber) -> u64 {
        let _index = shared.write();
        subscriber.mailbox.rejoin();
        shared.head.load(Ordering::Acquire)
    }

    /// Sends a heartbeat to every subscriber that received nothing since the last call.
    ///
    /// Takes the write lock: with no fan-out running, `head` is exact and no event can be
    /// queued between the idleness check and the heartbeat, so a heartbeat never carries a
    /// cursor behind an event already queued on its stream. It runs once per
    /// `--heartbeat-interval`, so briefly pausing fan-out is cheap.
    pub fn heartbeat(&self) {
        let index = self.shared.write();
        let head = self.head();
        let frame = control_frame(
            Kind::Heartbeat(pb::Heartbeat {
                cursor: head.to_string(),
            }),
            head.position,
        );
        for subscriber in index.all.values() {
            if subscriber.mailbox.take_busy() {
                continue;
            }
            if subscriber.mailbox.push(frame.clone()) == Push::Overflowed {
                self.shared.metrics.queue_overflows.inc();
            }
            // The heartbeat itself must not count as activity for the next tick.
            subscriber.mailbox.take_busy();
        }
    }

    /// Ends every subscription (queued frames are still delivered) and refuses new ones.
    pub fn shut_down(&self) {
        let mut index = self.shared.write();
        index.closed = true;
        for subscriber in index.all.values() {
            subscriber.mailbox.close(EndReason::ShuttingDown);
        }
    }
}

fn caught_up_frame(head: Cursor) -> Frame {
    control_frame(
        Kind::CaughtUp(pb::CaughtUp {
            cursor: head.to_string(),
        }),
        head.position,
    )
}

/// A `Gap` from `from` to position `to` of this journal (`epoch`).
fn gap_frame(from: Cursor, epoch: u64, to: u64, reason: pb::GapReason) -> Frame {
    control_frame(
        Kind::Gap(pb::Gap {
            from_cursor: from.to_string(),
            to_cursor: Cursor {
                epoch,
                position: to,
            }
            .to_string(),
            reason: reason.into(),
        }),
        to,
    )
}

fn control_frame(kind: Kind, position: u64) -> Frame {
    Frame {
        bytes: pb::SubscribeResponse { kind: Some(kind) }
            .encode_to_vec()
            .into(),
        position,
        published_at: None,
        trace: None,
    }
}

/// Events to read from the journal before the mailbox: after a resume, or after lagging.
#[derive(Debug, Clone, Copy)]
struct Replay {
    /// Read events after this position...
    read_after: u64,
    /// ...up to this one (the hub's head when the subscriber joined or rejoined the live feed).
    until: u64,
    /// Say `CaughtUp` at `until` when done (after a resume; a lagging subscriber's catch-up is
    /// silent).
    caught_up: bool,
}

/// Selected events one replay read returns at most: bounds a replaying stream's memory.
const REPLAY_BATCH: usize = 256;

/// Bytes of selected events one replay read returns at most (at least one event, however large):
/// with large events, the count alone would let one batch hold tens of MiB.
const REPLAY_BATCH_BYTES: usize = 1024 * 1024;

/// Stored events one replay read examines at most, selected or not: bounds how long one read
/// holds a reader when the subscriber selects few of them (a user resuming over a busy journal).
const REPLAY_SCAN_LIMIT: usize = 4096;

/// Where journal reads run.
#[derive(Clone)]
enum Reads {
    /// On the blocking pool, as many at once as the semaphore has permits.
    Pool(Arc<Semaphore>),
    /// Inside the caller's poll: unit tests step the hub without a runtime this way.
    #[cfg(test)]
    Inline,
}

/// The outcome of a journal read running on the readers.
type PendingRead<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

impl Reads {
    /// Runs `job` (one bounded journal read) on a reader thread once a reader is free.
    ///
    /// The wait for a reader and the read run in a task of their own, not in the caller's
    /// future: a stream that is not polled for a while (its client reads slowly, or not at all)
    /// must not hold a reader it was handed, or one slow client would stop every replay. The
    /// permit goes with the job to its thread and is given back when the read ends; dropping the
    /// returned future before that leaves the queue, or lets a started read finish alone.
    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> PendingRead<T> {
        match self {
            Reads::Pool(readers) => {
                let readers = Arc::clone(readers);
                let task = tokio::spawn(async move {
                    let permit = readers.acquire_owned().await.map_err(|_| {
                        StoreError::Unavailable("the journal readers closed".into())
                    })?;
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        job()
                    })
                    .await
                    .unwrap_or_else(|error| {
                        Err(StoreError::Unavailable(format!(
                            "a journal read failed: {error}"
                        )))
                    })
                });
                Box::pin(ReadTask(task))
            }
            #[cfg(test)]
            Reads::Inline => Box::pin(std::future::ready(job())),
        }
    }
}

/// A journal read running in its own task; dropping it aborts the task (see [`Reads::run`]).
struct ReadTask<T>(tokio::task::JoinHandle<Result<T, StoreError>>);

impl<T> Future for ReadTask<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|error| {
                Err(StoreError::Unavailable(format!(
                    "a journal read failed: {error}"
                )))
            })
        })
    }
}

impl<T> Drop for ReadTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One subscriber's stream of encoded frames. Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Shared>,
    subscriber: Arc<Subscriber>,
    /// The position of the last frame yielded.
    last_position: u64,
    /// Frames to yield before anything else (a gap, replayed events, `CaughtUp`).
    pending: VecDeque<Frame>,
    /// Journal reading still to do before the mailbox.
    replay: Option<Replay>,
    /// The read of `replay`'s next batch, while it runs.
    reading: Option<PendingRead<Scan>>,
    /// While reads keep the stream waiting with nothing to send: when it gets a heartbeat.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Hand-off spans this stream may still record for replayed events (tracing on).
    replay_spans_left: u32,
}

/// Whether a subscription with `filter`, seen by `viewer`, gets the stored event: the routing of
/// [`Hub::fan_out`] (its user, the firehose, the admin feed), the filters and the viewer,
/// decided from stored facts.
fn selects(filter: &Filter, viewer: &Viewer, event: EventMeta<'_>) -> bool {
    let audience = Audience::of(event.event_type);
    let routed = match audience {
        Audience::AdminOnly => filter.admin_feed,
        Audience::Users { admin_too } => {
            filter.selects_user(event.user_id) || (admin_too && filter.admin_feed)
        }
    };
    routed
        && filter.passes(event.event_type, event.device_id)
        && viewer.may_see(event.user_id, audience == Audience::AdminOnly)
}

/// The events of stored frames (a history page's), in the frames' order: one event for every
/// frame, so a page never silently leaves one out. A frame that does not decode (an event stored
/// before its nesting was bounded, too deep for any protobuf decoder; a damaged record) is served
/// as what can be read of it: its envelope without the payload (see [`unreadable_event`]), and
/// reported by `unreadable`.
fn decode_events(
    stored: &[StoredEvent],
    cursor: impl Fn(u64) -> Cursor,
    unreadable: &Unreadable,
) -> Vec<pb::Event> {
    stored
        .iter()
        .map(
            |stored| match pb::SubscribeResponse::decode(stored.frame.clone()) {
                Ok(pb::SubscribeResponse {
                    kind: Some(Kind::Event(event)),
                }) => event,
                Ok(_) => {
                    unreadable.report(stored, &"the frame holds no event");
                    unreadable_event(stored, cursor(stored.position))
                }
                Err(error) => {
                    unreadable.report(stored, &error);
                    unreadable_event(stored, cursor(stored.position))
                }
            },
        )
        .collect()
}

/// Replaces each replayed frame that does not decode by the frame of its [`unreadable_event`],
/// so that a stream resuming over it is not stopped at it at every resume. Only frames of types
/// that can carry a `Struct` (untyped events, `app.updated`) are decoded to check: those are the
/// frames an older server stored too deep for protobuf decoders; every other frame is sent as
/// stored, undecoded, as before.
fn make_replayable(
    events: &mut [StoredEvent],
    cursor: impl Fn(u64) -> Cursor,
    unreadable: &Unreadable,
) {
    for stored in events.iter_mut() {
        if !may_hold_struct(&stored.event_type) {
            continue;
        }
        if let Err(error) = pb::SubscribeResponse::decode(stored.frame.clone()) {
            unreadable.report(stored, &error);
            let event = unreadable_event(stored, cursor(stored.position));
            stored.frame = crate::store::encode_event_frame(&event);
        }
    }
}

/// Whether events of `event_type` can carry a `google.protobuf.Struct`.
fn may_hold_struct(event_type: &str) -> bool {
    !crate::schema::is_typed(event_type) || event_type == APP_UPDATED_TYPE
}

/// The one typed event with `Struct` fields (`old_values`, `new_values`).
const APP_UPDATED_TYPE: &str = "app.updated";

/// What a history page serves for a stored frame that does not decode: the event without its
/// payload. The type, user and device are the journal's (what routing and authorization used);
/// the id, times and trace context are read from the frame when its envelope can be (the
/// payload, where such frames fail, is skipped without being decoded), else left empty. A client
/// handles an event without a payload already: it is what an older client sees of a payload type
/// added after it was built.
fn unreadable_event(stored: &StoredEvent, cursor: Cursor) -> pb::Event {
    let envelope = StoredFrame::decode(stored.frame.clone())
        .ok()
        .and_then(|frame| frame.event)
        .unwrap_or_default();
    pb::Event {
        id: envelope.id,
        cursor: cursor.to_string(),
        r#type: stored.event_type.to_string(),
        user_id: stored.user_id.to_string(),
        device_id: stored.device_id.to_string(),
        occurred_at: envelope.occurred_at,
        received_at: envelope.received_at,
        traceparent: envelope.traceparent,
        tracestate: envelope.tracestate,
        payload: None,
    }
}

/// A stored `SubscribeResponse` read for its event's envelope only: the payload's fields are
/// not declared, so they are skipped, not decoded, however deep they nest.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredFrame {
    #[prost(message, optional, tag = "1")]
    event: Option<StoredEnvelope>,
}

/// The fields of `Event` before its payload (the same tags).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEnvelope {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "6")]
    occurred_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "7")]
    received_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "8")]
    traceparent: String,
    #[prost(string, tag = "9")]
    tracestate: String,
}

/// Reports the stored frames that reads (history pages, replays) could not decode: each read
/// counts in `notify_unreadable_events_total`, and each position is logged (WARN) once while it
/// is among the last [`UNREADABLE_LOGGED`] positions logged, so a page read again and again
/// does not flood the log.
struct Unreadable {
    metrics: Arc<Metrics>,
    logged: Mutex<VecDeque<u64>>,
}

/// How many positions [`Unreadable`] remembers having logged.
const UNREADABLE_LOGGED: usize = 1024;

impl Unreadable {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            logged: Mutex::new(VecDeque::new()),
        }
    }

    fn report(&self, stored: &StoredEvent, error: &dyn std::fmt::Display) {
        self.metrics.unreadable_events.inc();
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if logged.contains(&stored.position) {
            return;
        }
        if logged.len() == UNREADABLE_LOGGED {
            logged.pop_front();
        }
        logged.push_back(stored.position);
        drop(logged);
        tracing::warn!(
            position = stored.position,
            event_type = %stored.event_type,
            user_id = %stored.user_id,
            %error,
            "a stored event does not decode: it is served without its payload"
        );
    }
}

/// One page of stored history ([`Hub::list`], [`Hub::list_newest`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The selected events, oldest first.
    pub events: Vec<pb::Event>,
    /// Where the page ended: the next page starts after it.
    pub next: Cursor,
    /// The page reached the newest stored event.
    pub end: bool,
    /// Set when `after` was below retention or from another journal (for
    /// [`Hub::list_newest`]: when `before` was from another journal).
    pub gap: Option<pb::Gap>,
    /// The head when the page was read: a subscription resuming after it misses nothing and
    /// repeats nothing the page could have held.
    pub head: Cursor,
}

/// The most stored events one [`Hub::list`] call examines, whatever it selects: bounds the cost
/// of a page for a user with few events in a busy journal (the page then ends early, and
/// `next` continues the scan).
const LIST_SCAN_LIMIT: usize = 10_000;

/// Bytes of events one history page holds at most (at least one event): a page must fit a
/// default gRPC client's 4 MiB receive limit, as every single stored event does.
const LIST_PAGE_BYTES: usize = 3 * 1024 * 1024;

impl Subscription {
    /// Why the server ended this subscription, once the stream has ended.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.subscriber.mailbox.end_reason()
    }

    /// The cursor of the last frame this stream yielded: everything up to it was delivered.
    pub fn last_cursor(&self) -> Cursor {
        self.hub.cursor(self.last_position)
    }

    /// Records how long an event took from entering the server to leaving for the wire.
    fn observe(&self, frame: &Frame) {
        if let Some(at) = frame.published_at {
            self.hub
                .metrics
                .delivery_latency
                .observe(at.elapsed().as_secs_f64());
        }
        if let Some(trace) = &frame.trace {
            trace.handed_off(self.subscriber.id, self.lag(frame), frame.published_at);
        }
    }

    /// How many events the hub has fanned out beyond `frame` (for a traced hand-off).
    fn lag(&self, frame: &Frame) -> u64 {
        self.hub
            .head
            .load(Ordering::Acquire)
            .saturating_sub(frame.position)
    }

    /// Starts reading the next batch of `replay` on the journal readers.
    fn start_read(&self, replay: Replay) -> PendingRead<Scan> {
        let hub = Arc::clone(&self.hub);
        let subscriber = Arc::clone(&self.subscriber);
        let limits = ScanLimits {
            until: replay.until,
            max_scanned: REPLAY_SCAN_LIMIT,
            max_selected: REPLAY_BATCH,
            max_bytes: REPLAY_BATCH_BYTES,
        };
        self.hub.reads.run(move || {
            let mut scan = hub.journal.scan(replay.read_after, limits, &|meta| {
                selects(&subscriber.filter, &subscriber.viewer, meta)
            })?;
            make_replayable(
                &mut scan.events,
                |position| hub.cursor(position),
                &hub.unreadable,
            );
            Ok(scan)
        })
    }

    /// Queues what one read of `replay` found: a `Gap` if retention removed events this
    /// subscriber had not seen, the selected events, and `CaughtUp` once the replay is done.
    fn apply_scan(&mut self, mut replay: Replay, scan: Scan) {
        if replay.read_after < scan.floor {
            // Retention removed what this subscriber has not seen: say so, go on from there.
            // Never past `until`: what follows it is in the mailbox, not lost, and the stream's
            // cursor must not move beyond what it will deliver next.
            let to = scan.floor.min(replay.until);
            let from = self.hub.cursor(replay.read_after);
            self.pending.push_back(gap_frame(
                from,
                self.hub.epoch,
                to,
                pb::GapReason::Retention,
            ));
            replay.read_after = to;
        }
        let tracing = &self.hub.tracing;
        for event in scan.events {
            // Tracing on: a sampled stored event's hand-off is recorded too, a bounded number
            // per stream (a resume may replay thousands).
            let trace = if tracing.is_on() && self.replay_spans_left > 0 {
                let delivery = if replay.caught_up {
                    Delivery::Resume
                } else {
                    Delivery::CatchUp
                };
                let trace = tracing.replayed(&event.frame, delivery);
                if trace.is_some() {
                    self.replay_spans_left -= 1;
                }
                trace
            } else {
                None
            };
            self.pending.push_back(Frame {
                bytes: event.frame,
                position: event.position,
                published_at: None,
                trace,
            });
        }
        replay.read_after = replay.read_after.max(scan.last);
        if replay.read_after >= replay.until {
            if replay.caught_up {
                self.pending
                    .push_back(caught_up_frame(self.hub.cursor(replay.until)));
            }
            self.replay = None;
            self.waiting = None;
        } else {
            self.replay = Some(replay);
        }
    }

    /// While a read is pending: the stream ends at once if the server shuts down (at the last
    /// cursor sent; the client resumes from there), and says it is alive with a heartbeat (at
    /// that same cursor) if the journal kept it waiting for `--heartbeat-interval`.
    fn while_reading(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if self.subscriber.mailbox.poll_ended(cx).is_ready() {
            self.reading = None;
            self.replay = None;
            self.pending.clear();
            return Poll::Ready(None);
        }
        let interval = self.hub.config.heartbeat_interval;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
        if waiting.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        waiting
            .as_mut()
            .reset(tokio::time::Instant::now() + interval);
        // Registers the timer's waker again for the next beat.
        let _ = waiting.as_mut().poll(cx);
        let cursor = self.hub.cursor(self.last_position);
        Poll::Ready(Some(control_frame(
            Kind::Heartbeat(pb::Heartbeat {
                cursor: cursor.to_string(),
            }),
            self.last_position,
        )))
    }

    fn journal_failed(&mut self, error: &StoreError) {
        tracing::warn!(%error, "replay failed: the journal cannot be read; ending the stream");
        self.replay = None;
        self.pending.clear();
        self.subscriber.mailbox.close(EndReason::JournalUnavailable);
    }
}

impl tokio_stream::Stream for Subscription {
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.pending.pop_front() {
                this.last_position = frame.position;
                if let Some(trace) = &frame.trace {
                    trace.handed_off(this.subscriber.id, this.lag(&frame), None);
                }
                return Poll::Ready(Some(frame));
            }
            // One bounded read's result per turn of this loop, and a new read runs on the
            // readers, never here: a poll does a bounded amount of work however little of the
            // journal this subscriber selects.
            if let Some(reading) = this.reading.as_mut() {
                let Poll::Ready(result) = reading.as_mut().poll(cx) else {
                    return this.while_reading(cx);
                };
                this.reading = None;
                let Some(replay) = this.replay.take() else {
                    continue;
                };
                match result {
                    Ok(scan) => this.apply_scan(replay, scan),
                    Err(error) => {
                        this.journal_failed(&error);
                        return Poll::Ready(None);
                    }
                }
                if !this.pending.is_empty() {
                    // Frames to send: the wait for the journal is over.
                    this.waiting = None;
                }
                if this.pending.is_empty() && this.replay.is_some() {
                    // Nothing selected in that stretch: yield before the next read, so one poll
                    // never applies more than one read's result.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                continue;
            }
            if let Some(replay) = this.replay {
                if this.subscriber.mailbox.end_reason().is_some() {
                    // Shut down mid-replay: end now, at the last cursor sent (the client resumes
                    // from there), rather than replay on while the server waits for this stream.
                    this.replay = None;
                    return Poll::Ready(None);
                }
                this.reading = Some(this.start_read(replay));
                continue;
            }
            match this.subscriber.mailbox.poll_pop(cx) {
                Poll::Ready(Some(Next::Frame(frame))) => {
                    this.last_position = frame.position;
                    this.observe(&frame);
                    return Poll::Ready(Some(frame));
                }
                Poll::Ready(Some(Next::Lagged)) => {
                    // Too slow for the live feed: continue from the journal after the last
                    // frame sent, up to the head at which the live feed takes over again.
                    let until = Hub::rejoin(&this.hub, &this.subscriber);
                    this.replay = Some(Replay {
                        read_after: this.last_position,
                        until,
                        caught_up: false,
                    });
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.hub.write().remove(self.subscriber.id) {
            self.hub.metrics.subscribers.dec();
        }
    }
}

#[cfg(test)]
mod tests;
