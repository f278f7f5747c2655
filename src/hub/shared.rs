//! What the hub and its subscriptions share: the hub's settings, the routing index behind its
//! lock, the journal and its readers, and the head of the fan-out. [`Hub`](super::Hub) writes
//! into it (registering, fanning out); a [`Subscription`](super::Subscription) reads from it
//! and rejoins the live fan-out through it. Kept apart from both so that neither imports the
//! other. Does not own the index's layout (`index`) or what a mailbox does (`mailbox`).

use std::sync::{
    Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    atomic::{AtomicU64, Ordering},
};

use super::{
    index::{Index, Subscriber},
    reads::Reads,
    unreadable::Unreadable,
};
use crate::{
    otel::Tracing,
    store::{Cursor, JournalReader},
    telemetry::Metrics,
};

/// Settings of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// Frames one subscriber may have queued before it counts as too slow (see `mailbox`).
    pub queue_len: usize,
    /// Replay reads that may run at once, each on a blocking thread; further reads wait their
    /// turn (`--replay-readers`). History pages have as many readers of their own.
    pub replay_readers: usize,
    /// A replaying stream that waited this long for the journal gets a heartbeat
    /// (`--heartbeat-interval`), so clients watching for silence do not give up on it.
    pub heartbeat_interval: std::time::Duration,
    /// On a `conflate` admin-feed stream, admin notices of one source type and cause within
    /// this long of the first become one notice (`--notice-coalesce-window`; zero: never).
    pub notice_coalesce_window: std::time::Duration,
}

pub(super) struct Shared {
    pub(super) config: HubSettings,
    pub(super) metrics: Arc<Metrics>,
    pub(super) epoch: u64,
    /// Position of the last event fanned out. Written under the index read lock after the
    /// event was pushed, read under the write lock by `subscribe`: see [`Hub::subscribe`].
    pub(super) head: AtomicU64,
    pub(super) next_id: AtomicU64,
    pub(super) index: RwLock<Index>,
    /// Where replays, lagging subscribers and history pages read.
    pub(super) journal: Arc<dyn JournalReader>,
    /// Where replay reads run.
    pub(super) reads: Reads,
    /// Where history (`ListEvents`) reads run: readers of their own, so a page is not queued
    /// behind a storm of replays.
    pub(super) history: Reads,
    /// Hand-off spans of sampled replayed events, when tracing is on.
    pub(super) tracing: Tracing,
    /// Where history reads report stored frames that do not decode.
    pub(super) unreadable: Unreadable,
}

impl Shared {
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets a lagged subscriber receive live events again: under the index write lock (no
    /// fan-out running) its mailbox is reopened and the head read, so every event after that
    /// head reaches the mailbox and every event up to it is in the journal.
    pub(super) fn rejoin(&self, subscriber: &Subscriber) -> u64 {
        let _index = self.write();
        subscriber.mailbox.rejoin();
        self.head.load(Ordering::Acquire)
    }

    pub(super) fn cursor(&self, position: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            position,
        }
    }
}
