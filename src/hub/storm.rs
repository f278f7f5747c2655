//! Storm control of one stream (`SubscribeRequest.conflate`, `max_events_per_second`): between
//! what the stream has to send (replayed and live frames, in journal order) and the wire, a
//! bounded buffer where a state event superseded by a later one of the same key is skipped, a
//! burst of admin notices of one kind becomes one notice, and events wait for the stream's rate.
//!
//! Owns: that buffer, when it releases a frame, the `Conflated` reports and coalesced notices.
//! Does not own which events are state or which notices form a burst (`schema::conflation`),
//! or where the frames come from (`subscription`). A stream without the options has no storm
//! layer at all: its frames go to the wire exactly as before.
//!
//! **Cursors stay exact.** Frames leave in journal order. A skipped event is reported by a
//! `Conflated { skipped, up_to_cursor }` sent only once every frame before `up_to_cursor` has
//! left, so that cursor is a valid `resume_after`: everything up to it was delivered or is
//! superseded by a later event, which a resumed stream reads from the journal. A coalesced
//! notice leaves where the burst's first notice stood and stops everything behind it until the
//! burst is over, so no cursor inside a burst reaches the client before the burst's notice
//! (a stream resumed inside a burst counts that burst's later notices again: at least once,
//! never lost). When the stream ends, what the buffer held is dropped: the client resumes from
//! the last cursor it got, and reads the rest from the journal.
//!
//! **A held stream still beats.** While the buffer holds frames back, the source's heartbeats
//! cannot pass (their cursor is ahead of what is held); the buffer sends its own every
//! `--heartbeat-interval`, at the last cursor that left, so a long conflating catch-up is not
//! taken for a dead connection.
//!
//! **Memory is bounded** by [`HOLD_MAX`] frames and [`HOLD_MAX_BYTES`]: a full buffer stops
//! taking frames, the stream's mailbox fills, and the stream continues from the journal when it
//! has room again (the mailbox's overflow policy; nothing is lost).

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use tokio::time::{Instant, Sleep};

use super::{
    Frame,
    frames::{NO_POSITION, control_frame},
};
use crate::{
    pb::{self, subscribe_response::Kind},
    schema::{self, ConflationKey, NoticeKind},
    store::Cursor,
    telemetry::Metrics,
};

/// The most frames a stream's storm buffer holds.
pub(super) const HOLD_MAX: usize = 4096;

/// The most bytes of frames a stream's storm buffer holds (at least one frame, however large).
pub(super) const HOLD_MAX_BYTES: usize = 4 * 1024 * 1024;

/// A stream's storm-control options, as `SubscribeRequest` asks for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StormControl {
    /// Skip superseded state events while the stream is behind; coalesce admin notice bursts.
    pub conflate: bool,
    /// Events a second at most; 0: unpaced.
    pub max_events_per_second: u32,
}

impl StormControl {
    /// Whether the stream asked for none of it (it then has no storm layer).
    pub fn is_off(&self) -> bool {
        !self.conflate && self.max_events_per_second == 0
    }
}

/// A frame the buffer holds, as it will leave.
enum Held {
    /// An event (counts against the rate) or a control frame, as it came, with its
    /// conflation key if it has one.
    Frame {
        frame: Frame,
        event: bool,
        key: Option<ConflationKey>,
    },
    /// An open or closed burst of admin notices, where its first notice stood.
    Burst(Box<Burst>),
}

struct Burst {
    /// The first notice, decoded, and its frame (sent as it is if the burst stays single).
    first: pb::Event,
    first_frame: Frame,
    count: u32,
    sample_ids: Vec<String>,
    /// The first notice's `received_at`, for a replayed burst: a later frame received more
    /// than a window after it proves the burst is over.
    first_received: Option<SystemTime>,
    /// A live burst: when its window ends.
    deadline: Option<Instant>,
    closed: bool,
}

impl Held {
    /// The bytes it holds, as `HOLD_MAX_BYTES` counts them: a burst keeps its first notice
    /// encoded and decoded, about twice its size.
    fn size(&self) -> usize {
        match self {
            Held::Frame { frame, .. } => frame.bytes.len(),
            Held::Burst(burst) => 2 * burst.first_frame.bytes.len(),
        }
    }
}

impl Burst {
    fn into_frame(self) -> Frame {
        if self.count < 2 {
            return self.first_frame;
        }
        let event = schema::coalesced_notice(&self.first, self.count, self.sample_ids);
        Frame {
            bytes: pb::SubscribeResponse {
                kind: Some(Kind::Event(event)),
            }
            .encode_to_vec()
            .into(),
            position: self.first_frame.position,
            published_at: self.first_frame.published_at,
            trace: None,
        }
    }
}

/// One stream's storm buffer and pacing.
pub(super) struct Storm {
    conflate: bool,
    /// The least time between two events (`1 / max_events_per_second`).
    interval: Option<Duration>,
    /// The coalescing window of admin notices (`conflate` on an admin-feed stream).
    window: Option<Duration>,
    /// In arrival order, which is journal order; keyed by arrival.
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    next_seq: u64,
    /// The held event of each conflation key.
    latest: HashMap<ConflationKey, u64>,
    /// The open burst of each notice kind.
    bursts: HashMap<NoticeKind, u64>,
    /// Skips not reported yet: how many, and the position of the last.
    unreported: u64,
    unreported_max: u64,
    /// When the next event may leave (pacing).
    next_send: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The position of the last frame that left.
    pub(super) sent_position: u64,
    /// When the last frame left, and how long the stream may stay silent: while the buffer
    /// holds frames back (a catch-up, a burst), the source's heartbeats cannot pass (their
    /// cursor is ahead of what is held), so the buffer sends its own, at `sent_position`.
    last_out: Instant,
    heartbeat_interval: Duration,
    /// `notify_conflated_total`, `notify_coalesced_notices_total`.
    metrics: Arc<Metrics>,
}

/// What [`Storm::release`] found.
pub(super) enum Release {
    /// A frame to send now.
    Frame(Frame),
    /// Nothing can leave yet; the waker is registered (a timer) or the caller's source has
    /// more to give first.
    Wait,
}

impl Storm {
    /// A storm layer for `options`, or `None` when the stream asked for none.
    pub(super) fn new(
        options: StormControl,
        admin_feed: bool,
        (window, heartbeat_interval): (Duration, Duration),
        start: u64,
        metrics: &Arc<Metrics>,
    ) -> Option<Box<Self>> {
        if options.is_off() {
            return None;
        }
        // Rounded up, so that no second ever holds more than the rate.
        let interval = (options.max_events_per_second > 0).then(|| {
            Duration::from_nanos(
                1_000_000_000_u64.div_ceil(u64::from(options.max_events_per_second)),
            )
        });
        let window = (options.conflate && admin_feed && !window.is_zero()).then_some(window);
        Some(Box::new(Self {
            conflate: options.conflate,
            interval,
            window,
            held: BTreeMap::new(),
            held_bytes: 0,
            next_seq: 0,
            latest: HashMap::new(),
            bursts: HashMap::new(),
            unreported: 0,
            unreported_max: 0,
            next_send: None,
            timer: None,
            sent_position: start,
            last_out: Instant::now(),
            heartbeat_interval,
            metrics: Arc::clone(metrics),
        }))
    }

    /// Whether the buffer can take another frame.
    pub(super) fn has_room(&self) -> bool {
        self.held.len() < HOLD_MAX && (self.held.is_empty() || self.held_bytes < HOLD_MAX_BYTES)
    }

    fn push(&mut self, held: Held) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.held_bytes += held.size();
        self.held.insert(seq, held);
        seq
    }

    /// Takes the next frame of the stream, in journal order.
    pub(super) fn take(&mut self, frame: Frame) {
        let response = pb::SubscribeResponse::decode(frame.bytes.clone()).ok();
        let event = match response.and_then(|r| r.kind) {
            Some(Kind::Event(event)) => event,
            Some(Kind::Heartbeat(_)) => {
                // A heartbeat's cursor is the head: behind held frames it would promise what
                // has not left. The stream is not idle anyway while it holds frames.
                if self.held.is_empty() && self.unreported == 0 {
                    self.push(Held::Frame {
                        frame,
                        event: false,
                        key: None,
                    });
                }
                return;
            }
            // CaughtUp, Gap, inbox updates and frames that do not decode keep their place.
            _ => {
                self.push(Held::Frame {
                    frame,
                    event: false,
                    key: None,
                });
                return;
            }
        };
        let received = event.received_at.and_then(|at| {
            let at = Duration::new(
                u64::try_from(at.seconds).ok()?,
                u32::try_from(at.nanos).ok()?,
            );
            SystemTime::UNIX_EPOCH.checked_add(at)
        });
        self.close_proven_bursts(received);
        if let Some(window) = self.window
            && let Some(kind) = schema::notice_kind(&event)
        {
            self.add_notice(kind, event, frame, received, window);
            return;
        }
        // Every stream with storm control conflates what waits in its buffer: with
        // `conflate`, what a catch-up or a deep mailbox puts there; paced, what waits for the
        // rate (a stream with neither has no storm layer).
        let key = schema::conflation_key(&event);
        let seq = self.push(Held::Frame {
            frame,
            event: true,
            key: key.clone(),
        });
        if let Some(key) = key
            && let Some(old) = self.latest.insert(key, seq)
            && let Some(Held::Frame { frame: old, .. }) = self.held.remove(&old)
        {
            self.held_bytes -= old.bytes.len();
            self.unreported += 1;
            self.unreported_max = self.unreported_max.max(old.position);
            self.metrics.conflated.inc();
        }
    }

    fn add_notice(
        &mut self,
        kind: NoticeKind,
        event: pb::Event,
        frame: Frame,
        received: Option<SystemTime>,
        window: Duration,
    ) {
        if let Some(seq) = self.bursts.get(&kind)
            && let Some(Held::Burst(burst)) = self.held.get_mut(seq)
        {
            burst.count += 1;
            if burst.sample_ids.len() < schema::NOTICE_SAMPLE_IDS {
                burst.sample_ids.push(source_id(&event));
            }
            self.metrics.coalesced_notices.inc();
            return;
        }
        let live = frame.published_at.is_some();
        let burst = Burst {
            sample_ids: vec![source_id(&event)],
            first: event,
            first_frame: frame,
            count: 1,
            first_received: received,
            // An absurd window (`--notice-coalesce-window 100y`) is as good as none ending:
            // the burst then ends when the buffer is full.
            deadline: live.then(|| Instant::now().checked_add(window)).flatten(),
            closed: false,
        };
        let seq = self.push(Held::Burst(Box::new(burst)));
        self.bursts.insert(kind, seq);
    }

    /// Closes the replayed bursts a frame received at `received` proves over.
    fn close_proven_bursts(&mut self, received: Option<SystemTime>) {
        let (Some(window), Some(received)) = (self.window, received) else {
            return;
        };
        let held = &mut self.held;
        self.bursts.retain(|_, seq| match held.get_mut(seq) {
            Some(Held::Burst(burst)) => {
                let over = burst
                    .first_received
                    .and_then(|first| first.checked_add(window))
                    .is_some_and(|end| received > end);
                if over {
                    burst.closed = true;
                }
                !over
            }
            _ => false,
        });
    }

    /// Closes the open bursts that are over: the live ones whose window `now` reached, the
    /// replayed ones when the replay ended (a replayed burst's window is taken as over) or the
    /// buffer is full (nothing more can prove it over).
    fn close_bursts(&mut self, replay_done: bool, now: Instant) {
        let held = &mut self.held;
        self.bursts.retain(|_, seq| match held.get_mut(seq) {
            Some(Held::Burst(burst)) => {
                let over = match burst.deadline {
                    Some(deadline) => deadline <= now,
                    None => replay_done,
                };
                if over {
                    burst.closed = true;
                }
                !over
            }
            _ => false,
        });
    }

    /// The next frame that may leave now. `catching_up`: the stream's source is still
    /// replaying from the journal (a `conflate` stream then holds what it took until the
    /// replay is done or the buffer is full, so that only the latest of each key leaves).
    pub(super) fn release(
        &mut self,
        cx: &mut Context<'_>,
        catching_up: bool,
        hub_cursor: impl Fn(u64) -> Cursor,
    ) -> Release {
        let now = Instant::now();
        self.close_bursts(!catching_up || !self.has_room(), now);
        let Some((&seq, front)) = self.held.first_key_value() else {
            if self.unreported > 0 {
                return Release::Frame(self.report(&hub_cursor));
            }
            return Release::Wait;
        };
        let (position, event) = match front {
            Held::Frame { frame, event, .. } => (frame.position, *event),
            Held::Burst(burst) => {
                if !burst.closed {
                    // A live burst's window ends at its deadline; a replayed one when the
                    // replay proves it over or ends.
                    return self.hold(cx, now, burst.deadline, &hub_cursor);
                }
                (burst.first_frame.position, true)
            }
        };
        // `<=`: a control frame at a skipped event's position (`CaughtUp` at the replay's end)
        // comes after the report, so a client counting skips up to `CaughtUp` has them all.
        if self.unreported > 0 && position != NO_POSITION && self.unreported_max <= position {
            return Release::Frame(self.report(&hub_cursor));
        }
        if event {
            if self.conflate && catching_up && self.has_room() {
                return self.hold(cx, now, None, &hub_cursor);
            }
            if let Some(next) = self.next_send
                && now < next
            {
                return self.hold(cx, now, Some(next), &hub_cursor);
            }
            self.next_send = self.interval.map(|interval| now + interval);
        }
        let frame = match self.held.remove(&seq) {
            Some(Held::Frame { frame, key, .. }) => {
                self.held_bytes -= frame.bytes.len();
                self.last_out = now;
                if let Some(key) = key
                    && self.latest.get(&key) == Some(&seq)
                {
                    self.latest.remove(&key);
                }
                frame
            }
            Some(Held::Burst(burst)) => {
                self.held_bytes -= 2 * burst.first_frame.bytes.len();
                self.last_out = now;
                burst.into_frame()
            }
            None => return Release::Wait,
        };
        if frame.position != NO_POSITION {
            self.sent_position = frame.position;
        }
        Release::Frame(frame)
    }

    /// The front is held back until `until` (pacing, a live burst's window) or until the
    /// source has more (`None`: a catch-up, a replayed burst). Meanwhile the stream says it is
    /// alive every `heartbeat_interval`, at the last cursor it sent.
    fn hold(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        until: Option<Instant>,
        hub_cursor: &impl Fn(u64) -> Cursor,
    ) -> Release {
        let beat = self
            .last_out
            .checked_add(self.heartbeat_interval)
            .unwrap_or(now);
        if now >= beat {
            self.last_out = now;
            let position = self.sent_position;
            return Release::Frame(control_frame(
                Kind::Heartbeat(pb::Heartbeat {
                    cursor: hub_cursor(position).to_string(),
                }),
                position,
            ));
        }
        self.wait_until(cx, until.map_or(beat, |until| until.min(beat)))
    }

    fn report(&mut self, hub_cursor: &impl Fn(u64) -> Cursor) -> Frame {
        let position = self.unreported_max;
        let frame = control_frame(
            Kind::Conflated(pb::Conflated {
                skipped: self.unreported,
                up_to_cursor: hub_cursor(position).to_string(),
            }),
            position,
        );
        self.unreported = 0;
        self.sent_position = self.sent_position.max(position);
        self.last_out = Instant::now();
        frame
    }

    fn wait_until(&mut self, cx: &mut Context<'_>, at: Instant) -> Release {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        match timer.as_mut().poll(cx) {
            // Due already: the caller asks again at once.
            Poll::Ready(()) => {
                cx.waker().wake_by_ref();
                Release::Wait
            }
            Poll::Pending => Release::Wait,
        }
    }
}

/// The source event's id a notice names (its own id when it names none).
fn source_id(event: &pb::Event) -> String {
    match &event.payload {
        Some(pb::event::Payload::AdminNotice(notice)) if !notice.source_event_id.is_empty() => {
            notice.source_event_id.clone()
        }
        _ => event.id.clone(),
    }
}
