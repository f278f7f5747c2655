//! [`Subscription`]: one subscriber's stream. It yields the opening frames, then replays what
//! the journal holds that the subscriber missed (after `resume_after`, or after it lagged),
//! then the frames of its mailbox, and hands off between them with no gap and no duplicate.
//! Does not own who is subscribed (`fan_out`, `index`), where the journal is read (`reads`), or
//! the transport (`grpc` turns this stream into a gRPC response).

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use super::{
    EndReason, Frame, Next, Users,
    frames::{NO_POSITION, caught_up_frame, control_frame, gap_frame},
    index::{Subscriber, selects},
    reads::{PendingRead, ReadError},
    shared::Shared,
    storm::{Release, Storm},
    unreadable::make_replayable,
};
use crate::{
    otel::Delivery,
    pb::{self, subscribe_response::Kind},
    store::{Cursor, Scan, ScanLimits},
    telemetry::Chain,
};

/// Events to read from the journal before the mailbox: after a resume, or after lagging.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replay {
    /// Read events after this position...
    pub(super) read_after: u64,
    /// ...up to this one (the hub's head when the subscriber joined or rejoined the live feed).
    pub(super) until: u64,
    /// Say `CaughtUp` at `until` when done (after a resume; a lagging subscriber's catch-up is
    /// silent).
    pub(super) caught_up: bool,
}

/// Selected events one replay read returns at most: bounds a replaying stream's memory.
const REPLAY_BATCH: usize = 256;

/// Bytes of selected events one replay read returns at most (at least one event, however large):
/// with large events, the count alone would let one batch hold tens of MiB.
const REPLAY_BATCH_BYTES: usize = 1024 * 1024;

/// Stored events one replay read examines at most, selected or not: bounds how long one read
/// holds a reader when the subscriber selects few of them (a user resuming over a busy journal).
pub(super) const REPLAY_SCAN_LIMIT: usize = 4096;

/// One subscriber's stream of encoded frames. Dropping it unsubscribes.
pub struct Subscription {
    pub(super) hub: Arc<Shared>,
    pub(super) subscriber: Arc<Subscriber>,
    /// The position of the last frame yielded.
    pub(super) last_position: u64,
    /// Frames to yield before anything else (a gap, replayed events, `CaughtUp`).
    pub(super) pending: VecDeque<Frame>,
    /// Journal reading still to do before the mailbox.
    pub(super) replay: Option<Replay>,
    /// The read of `replay`'s next batch, while it runs.
    pub(super) reading: Option<PendingRead<Scan>>,
    /// While reads keep the stream waiting with nothing to send: when it gets a heartbeat.
    pub(super) waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Hand-off spans this stream may still record for replayed events (tracing on).
    pub(super) replay_spans_left: u32,
    /// The state of the stream's inboxes as of its opening, sent right after the replay's
    /// `CaughtUp`.
    pub(super) inbox_state: Vec<Frame>,
    /// Storm control (`conflate`, `max_events_per_second`), when the stream asked for it.
    pub(super) storm: Option<Box<Storm>>,
}

impl Subscription {
    /// Why the server ended this subscription, once the stream has ended.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.subscriber.mailbox.end_reason()
    }

    /// The cursor of the last frame this stream yielded: everything up to it was delivered.
    pub fn last_cursor(&self) -> Cursor {
        match &self.storm {
            Some(storm) => self.hub.cursor(storm.sent_position),
            None => self.hub.cursor(self.last_position),
        }
    }

    /// Whether the stream is still reading from the journal what it missed.
    fn catching_up(&self) -> bool {
        self.replay.is_some() || self.reading.is_some() || !self.pending.is_empty()
    }

    /// The stream through its storm layer: takes what the source has ready while the buffer
    /// has room, then lets out what may leave now.
    fn poll_storm(&mut self, storm: &mut Storm, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        while storm.has_room() {
            match self.poll_source(cx, false) {
                Poll::Ready(Some(frame)) => storm.take(frame),
                // Ended: what the buffer holds is dropped; the client resumes from the last
                // cursor it got (see `storm`).
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        let hub = &self.hub;
        match storm.release(cx, self.catching_up(), |position| hub.cursor(position)) {
            Release::Frame(frame) => {
                // Live frames only (replayed ones carry no `published_at`): the latency
                // includes the time the buffer held the frame.
                if frame.published_at.is_some() {
                    self.observe(&frame);
                }
                Poll::Ready(Some(frame))
            }
            Release::Wait => Poll::Pending,
        }
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
            // A stream of the notification centre leaves out the types its owner disabled,
            // replayed as live (read once per read: preferences change rarely).
            let muted = match (&subscriber.filter.users, subscriber.inboxes.user) {
                (Users::One(owner), true) => hub
                    .journal
                    .inbox()
                    .map(|inbox| inbox.preferences(owner))
                    .transpose()?
                    .flatten()
                    .map(|preferences| (owner.clone(), preferences)),
                _ => None,
            };
            let mut scan = hub.journal.scan(replay.read_after, limits, &|meta| {
                selects(&subscriber.filter, &subscriber.viewer, meta)
                    && muted.as_ref().is_none_or(|(owner, preferences)| {
                        meta.user_id != &**owner || preferences.enabled(meta.event_type)
                    })
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
                self.pending.extend(self.inbox_state.drain(..));
            }
            // Inbox updates that found the mailbox lagged: the latest of each, before what the
            // mailbox queued since it rejoined.
            self.pending
                .extend(self.subscriber.mailbox.take_inbox_slots());
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

    fn journal_failed(&mut self, error: &ReadError) {
        tracing::warn!(
            error = %Chain(error),
            "replay failed: the journal cannot be read; ending the stream"
        );
        self.replay = None;
        self.pending.clear();
        self.subscriber.mailbox.close(EndReason::JournalUnavailable);
    }
}

impl tokio_stream::Stream for Subscription {
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let this = self.get_mut();
        let Some(mut storm) = this.storm.take() else {
            return this.poll_source(cx, true);
        };
        let next = this.poll_storm(&mut storm, cx);
        this.storm = Some(storm);
        next
    }
}

impl Subscription {
    /// The stream's frames in order, before storm control: the opening frames, the replay,
    /// then the mailbox.
    /// `observe`: record a live frame's latency and hand-off as it is taken (a stream with
    /// storm control records them when the frame leaves its buffer instead).
    fn poll_source(&mut self, cx: &mut Context<'_>, observe: bool) -> Poll<Option<Frame>> {
        let this = self;
        loop {
            if let Some(frame) = this.pending.pop_front() {
                if frame.position != NO_POSITION {
                    this.last_position = frame.position;
                }
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
                    if frame.position != NO_POSITION {
                        this.last_position = frame.position;
                    }
                    if observe {
                        this.observe(&frame);
                    }
                    return Poll::Ready(Some(frame));
                }
                Poll::Ready(Some(Next::Lagged)) => {
                    // Too slow for the live feed: continue from the journal after the last
                    // frame sent, up to the head at which the live feed takes over again.
                    let until = this.hub.rejoin(&this.subscriber);
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
