//! A subscriber's bounded queue of encoded frames.
//!
//! The hub pushes without ever waiting; the subscriber's stream pops at the pace of its
//! connection. When the queue is full the push fails and the mailbox closes with
//! [`EndReason::Overflow`]: the subscriber is too slow, and waiting for it would slow every other
//! subscriber. Frames already queued are still delivered before the stream ends, so the client
//! knows exactly up to which cursor it got everything.
//!
//! A plain mutex around a `VecDeque` is enough: the critical sections are a push or a pop, and an
//! idle mailbox allocates nothing (which keeps idle streams cheap).

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::Bytes;

/// One encoded `SubscribeResponse`, ready to be written to the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The encoded message.
    pub bytes: Bytes,
    /// The journal position this frame brings the subscriber to (its cursor's position).
    pub position: u64,
    /// When the event entered the server, for the publish→send latency metric; `None` for
    /// control frames (caught-up, gap, heartbeat).
    pub published_at: Option<Instant>,
}

/// Why a subscription ended (when the server ended it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The queue was full: the subscriber fell `capacity` frames behind.
    Overflow {
        /// The queue capacity that was exceeded.
        capacity: usize,
    },
    /// The server is shutting down.
    ShuttingDown,
}

/// The outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The queue was full; the mailbox is now closed with `EndReason::Overflow`.
    Overflowed,
    /// The mailbox was already closed; nothing was queued.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    ended: Option<EndReason>,
    waker: Option<Waker>,
}

/// A bounded single-consumer queue; see the module docs for the overflow policy.
#[derive(Debug)]
pub struct Mailbox {
    capacity: usize,
    state: Mutex<State>,
    /// Set by every push, cleared by the heartbeat tick: an idle stream gets a heartbeat.
    busy: AtomicBool,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` frames (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            busy: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only a queue of frames behind; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame without waiting; see [`Push`].
    pub fn push(&self, frame: Frame) -> Push {
        let mut state = self.lock();
        if state.ended.is_some() {
            return Push::Closed;
        }
        let outcome = if state.queue.len() >= self.capacity {
            state.ended = Some(EndReason::Overflow {
                capacity: self.capacity,
            });
            Push::Overflowed
        } else {
            state.queue.push_back(frame);
            Push::Queued
        };
        let waker = state.waker.take();
        drop(state);
        self.busy.store(true, Ordering::Relaxed);
        if let Some(waker) = waker {
            waker.wake();
        }
        outcome
    }

    /// Ends the mailbox: frames already queued are still delivered, then the stream ends.
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

    /// Whether the mailbox no longer accepts frames.
    pub fn is_closed(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Takes the "a frame was pushed since the last call" flag.
    pub fn take_busy(&self) -> bool {
        self.busy.swap(false, Ordering::Relaxed)
    }

    /// The next frame; `Ready(None)` once closed and drained.
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let mut state = self.lock();
        if let Some(frame) = state.queue.pop_front() {
            if state.queue.is_empty() && state.queue.capacity() > 64 {
                // Give back what a burst made the queue grow to; idle streams stay small.
                state.queue.shrink_to(8);
            }
            return Poll::Ready(Some(frame));
        }
        if state.ended.is_some() {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Why the mailbox ended, if it did.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.lock().ended
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
        }
    }

    #[tokio::test]
    async fn overflow_closes_but_keeps_what_was_queued() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.push(frame(1)), Push::Queued);
        assert_eq!(mailbox.push(frame(2)), Push::Queued);
        assert_eq!(mailbox.push(frame(3)), Push::Overflowed);
        assert_eq!(mailbox.push(frame(4)), Push::Closed);
        let mut got = Vec::new();
        while let Some(f) = poll_fn(|cx| mailbox.poll_pop(cx)).await {
            got.push(f.position);
        }
        assert_eq!(got, vec![1, 2]);
        assert_eq!(
            mailbox.end_reason(),
            Some(EndReason::Overflow { capacity: 2 })
        );
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_reader() {
        let mailbox = std::sync::Arc::new(Mailbox::new(4));
        let reader = {
            let mailbox = mailbox.clone();
            tokio::spawn(
                async move { poll_fn(|cx| mailbox.poll_pop(cx)).await.map(|f| f.position) },
            )
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

    #[test]
    fn busy_flag_tracks_pushes_between_ticks() {
        let mailbox = Mailbox::new(4);
        assert!(!mailbox.take_busy());
        mailbox.push(frame(1));
        assert!(mailbox.take_busy());
        assert!(!mailbox.take_busy());
    }
}
