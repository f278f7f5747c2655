//! Fan-out: which subscribers get an event, and handing it to them without ever waiting.
//!
//! Owns: the routing index (user id → subscribers, the firehose, the admin feed), filters, each
//! subscriber's bounded [`Mailbox`] and its overflow policy (continue from the journal), replay
//! on resume and the hand-off to live events, heartbeats, and ending every stream on shutdown. Does not own: decoding (`schema`), positions (`store`), the order of events (the
//! `sequencer` calls [`Hub::fan_out`] in journal order, one event at a time), or transport
//! (`grpc` turns a [`Subscription`] into a gRPC stream).
//!
//! Each event is encoded once into a `SubscribeResponse`; all its recipients share those bytes.

mod filter;
mod mailbox;

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use prost::Message;

pub use filter::{
    Audience, Filter, FilterError, FilterLimits, MAX_PATTERN_LEN, MAX_TYPE_PATTERNS, Users,
};
pub use mailbox::{EndReason, Frame, Mailbox, Next, Push};

use crate::{
    auth::Viewer,
    pb::{self, subscribe_response::Kind},
    store::{Cursor, JournalReader, StoredEvent},
    telemetry::Metrics,
};

/// Settings of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Frames one subscriber may have queued before it counts as too slow (see [`Mailbox`]).
    pub queue_len: usize,
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
    /// Where replays and lagging subscribers read.
    journal: Arc<dyn JournalReader>,
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
}

impl Hub {
    /// A hub with no subscribers whose head is `head` (the journal's head at start-up).
    pub fn new(
        config: HubConfig,
        head: Cursor,
        metrics: Arc<Metrics>,
        journal: Arc<dyn JournalReader>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                metrics,
                epoch: head.epoch,
                head: AtomicU64::new(head.position),
                next_id: AtomicU64::new(1),
                index: RwLock::new(Index::default()),
                journal,
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
    /// waits: a subscriber whose mailbox is full is ended (see [`Mailbox`]). Must be called in
    /// journal order, by one caller at a time (the sequencer).
    pub fn fan_out(&self, routed: Routed<'_>) {
        let event = routed.event;
        let frame = Frame {
            bytes: routed.frame,
            position: routed.position,
            published_at: Some(routed.published_at),
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
        })
    }

    /// Reads up to `limit` stored events after `after` (from the oldest retained without it)
    /// that a subscription with `filter` seen by `viewer` would get, oldest first.
    ///
    /// # Errors
    ///
    /// [`HubError::CursorAhead`] for a cursor beyond the head; [`HubError::Journal`] when the
    /// journal cannot be read.
    pub fn list(
        &self,
        filter: &Filter,
        viewer: &Viewer,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, HubError> {
        let shared = &*self.shared;
        let journal = &shared.journal;
        let head = shared.head.load(Ordering::Acquire);
        let floor = journal
            .floor()
            .map_err(|e| HubError::Journal(e.to_string()))?;
        let mut gap = None;
        let mut position = match after {
            Some(after) if after.epoch != shared.epoch => {
                gap = Some((after, pb::GapReason::EpochChanged));
                floor
            }
            Some(after) if after.position > head => {
                return Err(HubError::CursorAhead(after.to_string()));
            }
            Some(after) if after.position < floor => {
                gap = Some((after, pb::GapReason::Retention));
                floor
            }
            Some(after) => after.position,
            None => floor,
        };
        let mut events = Vec::new();
        let mut scanned = 0;
        while events.len() < limit && scanned < LIST_SCAN_LIMIT && position < head {
            let batch = journal
                .read_after(position, REPLAY_BATCH.min(LIST_SCAN_LIMIT - scanned))
                .map_err(|e| HubError::Journal(e.to_string()))?;
            if batch.is_empty() {
                break;
            }
            for stored in batch {
                if stored.position > head || events.len() >= limit {
                    break;
                }
                scanned += 1;
                position = stored.position;
                if selects(filter, viewer, &stored)
                    && let Ok(pb::SubscribeResponse {
                        kind: Some(Kind::Event(event)),
                    }) = pb::SubscribeResponse::decode(stored.frame)
                {
                    events.push(event);
                }
            }
        }
        Ok(Page {
            events,
            next: shared.cursor(position),
            end: position >= head,
            gap: gap.map(|(from, reason)| pb::Gap {
                from_cursor: from.to_string(),
                to_cursor: shared.cursor(floor).to_string(),
                reason: reason.into(),
            }),
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

/// Events read from the journal per read: bounds a replaying stream's memory and how long one
/// poll holds the worker.
const REPLAY_BATCH: usize = 256;

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
}

impl Subscriber {
    /// Whether this subscriber gets the stored event (see [`selects`]).
    fn selects(&self, event: &StoredEvent) -> bool {
        selects(&self.filter, &self.viewer, event)
    }
}

/// Whether a subscription with `filter`, seen by `viewer`, gets the stored event: the routing of
/// [`Hub::fan_out`] (its user, the firehose, the admin feed), the filters and the viewer,
/// decided from stored facts.
fn selects(filter: &Filter, viewer: &Viewer, event: &StoredEvent) -> bool {
    let audience = Audience::of(&event.event_type);
    let routed = match audience {
        Audience::AdminOnly => filter.admin_feed,
        Audience::Users { admin_too } => {
            filter.selects_user(&event.user_id) || (admin_too && filter.admin_feed)
        }
    };
    routed
        && filter.passes(&event.event_type, &event.device_id)
        && viewer.may_see(&event.user_id, audience == Audience::AdminOnly)
}

/// One page of stored history ([`Hub::list`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The selected events, oldest first.
    pub events: Vec<pb::Event>,
    /// Where the page ended: the next page starts after it.
    pub next: Cursor,
    /// The page reached the newest stored event.
    pub end: bool,
    /// Set when `after` was below retention or from another journal.
    pub gap: Option<pb::Gap>,
}

/// The most stored events one [`Hub::list`] call reads, whatever it selects: bounds the cost of
/// a page for a user with few events in a busy journal (the page then ends early, and
/// `next` continues the scan).
const LIST_SCAN_LIMIT: usize = 10_000;

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
    }

    /// Reads the next batch of `replay` into `pending`; `false` if the journal failed (the
    /// stream is then ended).
    fn read_replay(&mut self, mut replay: Replay) -> bool {
        let journal = &self.hub.journal;
        let floor = match journal.floor() {
            Ok(floor) => floor,
            Err(error) => return self.journal_failed(&error),
        };
        if replay.read_after < floor {
            // Retention removed what this subscriber has not seen: say so, go on from there.
            let from = self.hub.cursor(replay.read_after);
            self.pending.push_back(gap_frame(
                from,
                self.hub.epoch,
                floor,
                pb::GapReason::Retention,
            ));
            replay.read_after = floor;
        }
        let limit = usize::try_from(replay.until - replay.read_after)
            .unwrap_or(REPLAY_BATCH)
            .min(REPLAY_BATCH);
        let events = match journal.read_after(replay.read_after, limit) {
            Ok(events) => events,
            Err(error) => return self.journal_failed(&error),
        };
        for event in &events {
            if event.position > replay.until {
                break;
            }
            replay.read_after = event.position;
            if self.subscriber.selects(event) {
                self.pending.push_back(Frame {
                    bytes: event.frame.clone(),
                    position: event.position,
                    published_at: None,
                });
            }
        }
        if events.is_empty() {
            // Nothing more stored up to `until` (the head moves only after a commit).
            replay.read_after = replay.until;
        }
        if replay.read_after >= replay.until {
            if replay.caught_up {
                self.pending
                    .push_back(caught_up_frame(self.hub.cursor(replay.until)));
            }
            self.replay = None;
        } else {
            self.replay = Some(replay);
        }
        true
    }

    fn journal_failed(&mut self, error: &crate::store::StoreError) -> bool {
        tracing::warn!(%error, "replay failed: the journal cannot be read; ending the stream");
        self.replay = None;
        self.pending.clear();
        self.subscriber.mailbox.close(EndReason::JournalUnavailable);
        false
    }
}

impl tokio_stream::Stream for Subscription {
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.pending.pop_front() {
                this.last_position = frame.position;
                return Poll::Ready(Some(frame));
            }
            if let Some(replay) = this.replay {
                if !this.read_replay(replay) {
                    return Poll::Ready(None);
                }
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
