//! A subscriber's bounded queue of encoded frames.
//!
//! The hub pushes without ever waiting; the subscriber's stream pops at the pace of its
//! connection. When the queue is full the mailbox becomes *lagged*: it keeps what it queued (a
//! contiguous run of frames), takes nothing more, and once the reader has popped the run it
//! tells the reader [`Next::Lagged`]. The reader then continues from the journal at its own
//! pace and rejoins (see `Subscription`). Waiting for a slow subscriber would slow every other
//! one; dropping its events would lose them; this does neither, and memory stays bounded.
//!
//! A plain mutex around a `VecDeque` is enough: the critical sections are a push or a pop, and an
//! idle mailbox allocates nothing (which keeps idle streams cheap).
//!
//! Also here: [`with_batched_wakes`], which holds the readers' wake-ups during a batch's fan-out
//! and wakes each once at its end. Does not own: who pushes (`fan_out`) or what a reader does
//! with a frame (`subscription`).

use std::{
    cell::RefCell,
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::Bytes;

use crate::otel::FrameTrace;

thread_local! {
    /// Inside [`with_batched_wakes`] on this thread: the readers its pushes woke, to be woken
    /// when it ends.
    static HELD_WAKES: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Runs `fan_out` with the wake-ups of the readers it pushes to held back until it returns,
/// then wakes them all. A batch's fan-out runs on the pipeline's thread and its readers on the
/// main runtime's workers: woken push by push, a worker starts on the first streams while the
/// fan-out is still pushing to the next, runs out of work, parks, and is woken again. Woken
/// together, each stream is woken once per batch: a sixth fewer context switches on the
/// firehose (BENCHMARKS.md §16; the write calls did not change measurably). The wakes are held
/// for the fan-out's own work only, microseconds per subscriber; nested calls share the outer
/// one's. What is held is bounded by the subscribers: a push takes its mailbox's waker, so a
/// mailbox adds at most one until its reader has run again.
pub(crate) fn with_batched_wakes<T>(fan_out: impl FnOnce() -> T) -> T {
    /// Wakes what was held, also when `fan_out` unwinds: no reader is left asleep.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            if let Some(wakers) = HELD_WAKES.with(|held| held.borrow_mut().take()) {
                for waker in wakers {
                    waker.wake();
                }
            }
        }
    }
    if HELD_WAKES.with(|held| held.borrow().is_some()) {
        return fan_out();
    }
    HELD_WAKES.with(|held| *held.borrow_mut() = Some(Vec::new()));
    let _release = Release;
    fan_out()
}

/// Wakes a reader now, or at the end of the [`with_batched_wakes`] this thread is in.
fn wake(waker: Waker) {
    let now = HELD_WAKES.with(|held| match held.borrow_mut().as_mut() {
        Some(wakers) => {
            wakers.push(waker);
            None
        }
        None => Some(waker),
    });
    if let Some(waker) = now {
        waker.wake();
    }
}

/// One encoded `SubscribeResponse`, ready to be written to the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The encoded message.
    pub bytes: Bytes,
    /// The journal position this frame brings the subscriber to (its cursor's position).
    pub(super) position: u64,
    /// When the event entered the server, for the publish→send latency metric; `None` for
    /// control frames (caught-up, gap, heartbeat).
    pub(super) published_at: Option<Instant>,
    /// A sampled event's trace (tracing on): its hand-off is recorded when the stream takes it.
    pub trace: Option<Arc<FrameTrace>>,
}

/// Why a subscription ended (when the server ended it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The server is shutting down.
    ShuttingDown,
    /// The journal could not be read to catch the subscriber up.
    JournalUnavailable,
}

/// The outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Push {
    /// Queued for the reader.
    Queued,
    /// The queue was full: the mailbox is now lagged (the reader will catch up from the
    /// journal).
    Overflowed,
    /// The mailbox is lagged already; the frame was not queued (the journal has it).
    Lagging,
    /// The mailbox is closed; the frame was dropped.
    Closed,
}

/// What the reader gets next.
#[derive(Debug, Clone)]
pub(super) enum Next {
    /// A queued frame.
    Frame(Frame),
    /// The queue overflowed and everything queued before was popped: what follows must be read
    /// from the journal, after the last frame popped.
    Lagged,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    /// The latest inbox update of each of the stream's inboxes (user, admin) that found the
    /// queue lagged: updates are state (absolute counts), so the latest is all a stream that
    /// fell behind needs; it gets it once it has caught up.
    inbox_slots: [Option<Frame>; 2],
    lagged: bool,
    ended: Option<EndReason>,
    waker: Option<Waker>,
}

/// A bounded queue of frames with one reader.
#[derive(Debug)]
pub(super) struct Mailbox {
    capacity: usize,
    state: Mutex<State>,
    /// Set by every push, cleared by the heartbeat ticker: "was anything sent since last tick".
    busy: AtomicBool,
}

impl Mailbox {
    /// A mailbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            busy: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `frame` unless the mailbox is full, lagged or closed. Never waits.
    pub fn push(&self, frame: Frame) -> Push {
        let mut state = self.lock();
        if state.ended.is_some() {
            return Push::Closed;
        }
        if state.lagged {
            return Push::Lagging;
        }
        let outcome = if state.queue.len() >= self.capacity {
            state.lagged = true;
            Push::Overflowed
        } else {
            state.queue.push_back(frame);
            Push::Queued
        };
        let waker = state.waker.take();
        drop(state);
        self.busy.store(true, Ordering::Relaxed);
        if let Some(waker) = waker {
            wake(waker);
        }
        outcome
    }

    /// Queues an inbox update like [`Mailbox::push`]; one that finds the queue full or lagged
    /// is kept in the slot of its inbox (`slot`: 0 user, 1 admin), replacing the one there,
    /// for [`Mailbox::take_inbox_slots`]. A full queue lags, as with any frame.
    pub fn push_inbox(&self, frame: Frame, slot: usize) -> Push {
        let mut state = self.lock();
        if state.ended.is_some() {
            return Push::Closed;
        }
        let outcome = if state.lagged {
            Push::Lagging
        } else if state.queue.len() >= self.capacity {
            state.lagged = true;
            Push::Overflowed
        } else {
            state.queue.push_back(frame.clone());
            Push::Queued
        };
        if outcome != Push::Queued
            && let Some(kept) = state.inbox_slots.get_mut(slot)
        {
            *kept = Some(frame);
        }
        let waker = state.waker.take();
        drop(state);
        self.busy.store(true, Ordering::Relaxed);
        if let Some(waker) = waker {
            wake(waker);
        }
        outcome
    }

    /// The inbox updates kept while the queue lagged, once it no longer does (the reader has
    /// caught up from the journal and rejoined): sent before anything queued after them. Empty
    /// while the queue still lags (the next catch-up takes them).
    pub fn take_inbox_slots(&self) -> Vec<Frame> {
        let mut state = self.lock();
        if state.lagged {
            return Vec::new();
        }
        state
            .inbox_slots
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    }

    /// Ends the mailbox: the reader gets what is queued, then the end.
    pub fn close(&self, reason: EndReason) {
        let mut state = self.lock();
        if state.ended.is_none() {
            state.ended = Some(reason);
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes the lag away so pushes queue again. The caller must hold the hub's index write
    /// lock (no fan-out running) and continue from the journal up to the head it read there.
    pub fn rejoin(&self) {
        let mut state = self.lock();
        state.lagged = false;
        state.queue.clear();
    }

    /// Counts as activity for the heartbeat ticker (the stream sent something not pushed here,
    /// such as its opening `CaughtUp` or a replay).
    pub fn touch(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }

    /// Returns and clears the "pushed since last asked" flag.
    pub fn take_busy(&self) -> bool {
        self.busy.swap(false, Ordering::Relaxed)
    }

    /// The next frame, the lag, the end (`None`), or `Pending` with the waker registered.
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Next>> {
        let mut state = self.lock();
        if let Some(frame) = state.queue.pop_front() {
            if state.queue.is_empty() && state.queue.capacity() > 64 {
                state.queue.shrink_to(8);
            }
            return Poll::Ready(Some(Next::Frame(frame)));
        }
        if state.ended.is_some() {
            return Poll::Ready(None);
        }
        if state.lagged {
            return Poll::Ready(Some(Next::Lagged));
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Why the mailbox ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.lock().ended
    }

    /// For a reader busy elsewhere (replaying from the journal): whether the mailbox has been
    /// closed, with the waker registered so a close (or a push) wakes the reader.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<EndReason> {
        let mut state = self.lock();
        if let Some(reason) = state.ended {
            return Poll::Ready(reason);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, task::Poll};

    use super::*;

    fn frame(position: u64) -> Frame {
        Frame {
            bytes: Bytes::from_static(b"x"),
            position,
            published_at: None,
            trace: None,
        }
    }

    fn pop(mailbox: &Mailbox) -> Option<Next> {
        let mut cx = Context::from_waker(Waker::noop());
        match mailbox.poll_pop(&mut cx) {
            Poll::Ready(next) => next,
            Poll::Pending => panic!("nothing ready"),
        }
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counting {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A mailbox whose reader waits, with a waker that counts.
    fn waiting_reader() -> (Mailbox, Arc<Counting>) {
        let mailbox = Mailbox::new(8);
        let counting = Arc::new(Counting::default());
        let waker = Waker::from(Arc::clone(&counting));
        assert!(
            mailbox
                .poll_pop(&mut Context::from_waker(&waker))
                .is_pending()
        );
        (mailbox, counting)
    }

    #[test]
    fn inside_a_batch_readers_are_woken_once_when_it_ends() {
        let (first, first_woken) = waiting_reader();
        let (second, second_woken) = waiting_reader();
        with_batched_wakes(|| {
            first.push(frame(1));
            second.push(frame(1));
            first.push(frame(2));
            // Nested: still held, until the outermost ends.
            with_batched_wakes(|| second.push(frame(2)));
            assert_eq!((first_woken.count(), second_woken.count()), (0, 0));
        });
        assert_eq!((first_woken.count(), second_woken.count()), (1, 1));
        // Outside a batch a push wakes at once.
        let (third, third_woken) = waiting_reader();
        third.push(frame(1));
        assert_eq!(third_woken.count(), 1);
    }

    #[test]
    fn a_batch_that_panics_still_wakes_its_readers() {
        let (mailbox, woken) = waiting_reader();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_batched_wakes(|| {
                mailbox.push(frame(1));
                panic!("fan-out failed");
            })
        }));
        assert!(outcome.is_err());
        assert_eq!(woken.count(), 1);
        // And the next push, outside any batch, wakes at once again.
        let (other, other_woken) = waiting_reader();
        other.push(frame(1));
        assert_eq!(other_woken.count(), 1);
    }

    #[test]
    fn overflow_lags_keeps_what_was_queued_and_rejoins() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.push(frame(1)), Push::Queued);
        assert_eq!(mailbox.push(frame(2)), Push::Queued);
        assert_eq!(mailbox.push(frame(3)), Push::Overflowed);
        assert_eq!(mailbox.push(frame(4)), Push::Lagging);
        assert!(matches!(pop(&mailbox), Some(Next::Frame(f)) if f.position == 1));
        assert!(matches!(pop(&mailbox), Some(Next::Frame(f)) if f.position == 2));
        // Lagged until the reader rejoins; never ended.
        assert!(matches!(pop(&mailbox), Some(Next::Lagged)));
        assert!(matches!(pop(&mailbox), Some(Next::Lagged)));
        assert_eq!(mailbox.end_reason(), None);
        mailbox.rejoin();
        assert_eq!(mailbox.push(frame(5)), Push::Queued);
        assert!(matches!(pop(&mailbox), Some(Next::Frame(f)) if f.position == 5));
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_reader() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4));
        let reader = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                match poll_fn(|cx| mailbox.poll_pop(cx)).await {
                    Some(Next::Frame(f)) => Some(f.position),
                    _ => None,
                }
            })
        };
        tokio::task::yield_now().await;
        mailbox.push(frame(9));
        assert_eq!(reader.await.expect("reader"), Some(9));
    }

    #[test]
    fn close_ends_an_empty_mailbox() {
        let mailbox = Mailbox::new(1);
        mailbox.close(EndReason::ShuttingDown);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(mailbox.poll_pop(&mut cx), Poll::Ready(None)));
        assert_eq!(mailbox.end_reason(), Some(EndReason::ShuttingDown));
    }

    #[tokio::test]
    async fn a_close_wakes_a_reader_busy_elsewhere() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4));
        let reader = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { poll_fn(|cx| mailbox.poll_ended(cx)).await })
        };
        tokio::task::yield_now().await;
        mailbox.close(EndReason::ShuttingDown);
        assert_eq!(reader.await.expect("reader"), EndReason::ShuttingDown);
    }

    #[test]
    fn busy_flag_tracks_pushes_between_ticks() {
        let mailbox = Mailbox::new(4);
        assert!(!mailbox.take_busy());
        mailbox.push(frame(1));
        assert!(mailbox.take_busy());
        assert!(!mailbox.take_busy());
    }
}
