//! [`Hub`]: registering subscribers (a subscription's start, with its replay decided under the
//! index write lock), handing each event to the subscribers that select it without ever
//! waiting, heartbeats and shutdown. Does not own the stream a subscriber reads
//! (`subscription`), the index's layout (`index`) or history pages (`history`).

use std::{
    collections::VecDeque,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{
    Audience, EndReason, Filter, Frame, HubError, Mailbox, Push, Subscription, Users,
    frames::{caught_up_frame, control_frame, gap_frame, inbox_frame},
    index::{Inboxes, Index, Subscriber},
    reads::Reads,
    shared::{HubSettings, Shared},
    storm::{Storm, StormControl},
    subscription::Replay,
    unreadable::Unreadable,
};
use crate::{
    auth::Viewer,
    inbox::{self, InboxKey, Update, state_update},
    otel::{EventTrace, FrameTrace, MAX_HANDOFF_SPANS, Tracing},
    pb::{self, subscribe_response::Kind},
    store::{Cursor, JournalReader},
    telemetry::Metrics,
};

/// The fan-out hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(super) shared: Arc<Shared>,
}

/// What a stream gets besides its events, and how they are paced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Whose inbox updates it carries.
    pub inboxes: Inboxes,
    /// Conflation and a rate (see `storm`); off by default.
    pub storm: StormControl,
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
    /// The user it is about disabled its type: not pushed on that user's own streams.
    pub muted: bool,
}

impl Hub {
    /// A hub with no subscribers whose head is `head` (the journal's head at start-up).
    /// `tracing` records the hand-offs of sampled replayed events.
    pub fn new(
        config: HubSettings,
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

    pub(super) fn with_reads(
        config: HubSettings,
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

    /// The journal's reader (the inboxes' state is read through it).
    pub fn journal(&self) -> Arc<dyn JournalReader> {
        Arc::clone(&self.shared.journal)
    }

    /// The number of open subscriptions.
    #[cfg(test)]
    pub fn subscriber_count(&self) -> usize {
        self.shared.read().all.len()
    }

    /// Hands one event to every subscriber that selects it and whose filters pass it. Never
    /// waits: a subscriber whose mailbox is full lags, and continues from the journal (see
    /// `mailbox`). Must be called in journal order, by one caller at a time (the sequencer).
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
        let muted = routed.muted;
        let mut deliver = |subscriber: &Subscriber| {
            if (muted && subscriber.inboxes.user)
                || !subscriber.filter.passes(&event.r#type, &event.device_id)
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

    /// Tells the open streams of an inbox's owner that it changed: the update is queued
    /// behind what they were sent before (the new item itself, for new items), never waits,
    /// and a stream too far behind gets the latest once it has caught up.
    pub fn inbox_update(&self, update: &Update) {
        let shared = &*self.shared;
        let message = update.to_pb(|position| shared.cursor(position).to_string());
        let frame = inbox_frame(message);
        let index = shared.read();
        let push = |subscriber: &Subscriber, slot: usize| {
            if subscriber.mailbox.push_inbox(frame.clone(), slot) == Push::Overflowed {
                shared.metrics.queue_overflows.inc();
            }
        };
        match update.inbox.kind {
            inbox::Kind::User => {
                if let Some(list) = index.by_user.get(update.inbox.owner.as_str()) {
                    list.iter()
                        .filter(|s| s.inboxes.user)
                        .for_each(|s| push(s, 0));
                }
            }
            inbox::Kind::Admin => index
                .admin
                .iter()
                .filter(|s| s.inboxes.admin.as_deref() == Some(update.inbox.owner.as_str()))
                .for_each(|s| push(s, 1)),
        }
    }

    /// Opens a subscription (see [`Hub::subscribe_with`]) that gets no inbox updates and no
    /// storm control.
    pub fn subscribe(
        &self,
        filter: Filter,
        viewer: Viewer,
        resume_after: Option<Cursor>,
    ) -> Result<Subscription, HubError> {
        self.subscribe_with(filter, viewer, resume_after, StreamOptions::default())
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
    ///
    /// With `inboxes`, the stream gets those inboxes' updates in-band: right after `CaughtUp`
    /// their state as of now (read once the subscriber is in the index, so every later change
    /// reaches its mailbox too: the stream may see a count twice, never a stale one last), then
    /// every change.
    ///
    /// With `options.storm`, what the stream sends passes its storm layer (`storm`): skipped
    /// state events, coalesced admin notices and a rate, each reported in-band.
    pub fn subscribe_with(
        &self,
        filter: Filter,
        viewer: Viewer,
        resume_after: Option<Cursor>,
        options: StreamOptions,
    ) -> Result<Subscription, HubError> {
        let StreamOptions { inboxes, storm } = options;
        let shared = &*self.shared;
        let admin_feed = filter.admin_feed;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let owner = match &filter.users {
            Users::One(user) if inboxes.user => Some(user.to_string()),
            _ => None,
        };
        let subscriber = Arc::new(Subscriber {
            id,
            filter,
            viewer,
            mailbox: Mailbox::new(shared.config.queue_len),
            inboxes,
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
        let mut inbox_state = Vec::new();
        if let Some(reader) = shared.journal.inbox() {
            let keys = owner
                .map(InboxKey::user)
                .into_iter()
                .chain(subscriber.inboxes.admin.as_deref().map(InboxKey::admin));
            for key in keys {
                match reader.counts(&key) {
                    Ok(counts) => inbox_state.push(inbox_frame(state_update(key, counts))),
                    // The stream goes on; its next update carries the counts.
                    Err(error) => tracing::warn!(%error, "an inbox's counts cannot be read"),
                }
            }
        }
        if replay.is_none() {
            pending.extend(inbox_state.drain(..));
        }
        let last_position = replay.map_or(head.position, |r: Replay| r.read_after);
        Ok(Subscription {
            hub: self.shared.clone(),
            subscriber,
            last_position,
            pending,
            replay,
            reading: None,
            waiting: None,
            replay_spans_left: MAX_HANDOFF_SPANS,
            inbox_state,
            storm: Storm::new(
                storm,
                admin_feed,
                (
                    shared.config.notice_coalesce_window,
                    shared.config.heartbeat_interval,
                ),
                last_position,
                &shared.metrics,
            ),
        })
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
        // Every idle stream at once: woken together at the end, like a batch's fan-out.
        super::with_batched_wakes(|| {
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
        });
    }

    /// Ends every subscription (queued frames are still delivered, except what a stream's
    /// storm buffer holds back: see `storm`) and refuses new ones.
    pub fn shut_down(&self) {
        let mut index = self.shared.write();
        index.closed = true;
        for subscriber in index.all.values() {
            subscriber.mailbox.close(EndReason::ShuttingDown);
        }
    }
}
