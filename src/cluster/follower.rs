//! Every node's reader of the journal stream: it learns the stream's epoch, keeps the node's
//! replica (a redb journal) up to date, and fans each new event out through the node's hub, in
//! stream order.
//!
//! Owns: the stream consumer and its reconnects, the replica's writes, the hand-off to the hub,
//! and telling waiting writers and `Publish` calls where their events landed ([`Waiters`]).
//! Does not own: writing to the stream (`writer`), routing (`hub`), or the replica's format
//! (`store`).
//!
//! The replica is what replays, lagging subscribers and `ListEvents` read, exactly as on a
//! single node, and its id index is the writer's dedupe state. It is a cache of the stream, so it
//! commits without waiting for the disk: a crash loses only what is read again from the stream.
//!
//! A little over 600 lines: learning the epoch and following the stream share the consumer,
//! the backoff and the replica's hand-back; the broker helpers they use are `broker`'s.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicCancelOptions},
    types::{AMQPValue, LongString},
};
use tokio::sync::{oneshot, watch};
use tokio_stream::{Stream as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    ClusterError,
    broker::{close, connect, consume_from, is_precondition_failed},
    inspect::{self, JoinedStream},
    stream::{self, Entry, Kind, QueueCounts, StreamSettings},
};
use crate::{
    backoff::{self, Backoff},
    hub::Hub,
    inbox::Applied,
    sequencer::{Stored, fan_out_stored},
    store::{Journal as _, JournalHealth, RedbJournal, ReplicaInbox, Replicated},
    telemetry::{Chain, Metrics},
};

/// Messages read, replicated and fanned out together (one replica commit).
const MAX_BATCH: usize = 512;
/// How long an empty-looking stream is waited on before this node proposes its epoch.
const BOOTSTRAP_AFTER: Duration = Duration::from_secs(1);
/// How long a replica's check of the stream's first message may take before the replica is
/// rebuilt from the stream (which is always correct, only slower).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(5);
/// The longest pause between reconnections, from `crate::backoff::FIRST`: the replica falls
/// behind while the node waits (the policy and its reasons: `crate::backoff`).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after a node starts a broker's refusal to consume the stream is taken for the
/// moment after another node created it (logged as INFO, not as a warning).
const STREAM_SETTLING: Duration = Duration::from_secs(3);
/// Where an event landed in the stream, as its writer or `Publish` caller learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// Its position (the first one, if it was a duplicate).
    pub position: u64,
    /// It was in the stream already; this copy is not delivered.
    pub duplicate: bool,
}

/// Those waiting for an event id or a barrier to come back from the stream. Bounded by what is
/// in flight: the writer registers only what it has appended and not yet seen.
#[derive(Clone, Default)]
pub struct Waiters(Arc<Mutex<HashMap<String, Vec<oneshot::Sender<Landed>>>>>);

impl Waiters {
    /// Resolves when the event (or barrier) with this id is read from the stream.
    pub fn wait(&self, id: &str) -> oneshot::Receiver<Landed> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(id.to_owned()).or_default().push(tx);
        rx
    }

    /// Forgets a wait that will not be needed (its append failed).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Landed>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resolve(&self, landed: impl IntoIterator<Item = (String, Landed)>) {
        let mut waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for (id, landed) in landed {
            for waiter in waiting.remove(&id).into_iter().flatten() {
                let _ = waiter.send(landed);
            }
        }
    }
}

/// `Publish`-like calls of this node waiting for their inbox command to be applied here: the
/// outcome (counts after a mark, the preferences stored) is what this node's replica derived
/// when it read the command from the stream, so the caller reads its own write on this node.
/// Bounded by what is in flight (each call registers one and forgets it if it gives up).
#[derive(Clone, Default)]
pub struct InboxWaiters(Arc<Mutex<HashMap<String, oneshot::Sender<Applied>>>>);

impl InboxWaiters {
    /// Resolves when the command named `id` is applied to this node's replica.
    pub fn wait(&self, id: &str) -> oneshot::Receiver<Applied> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_owned(), tx);
        rx
    }

    /// Forgets a wait that will not be needed.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Applied>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resolve(&self, applied: impl IntoIterator<Item = (String, Applied)>) {
        let mut waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for (id, applied) in applied {
            if let Some(waiter) = waiting.remove(&id) {
                let _ = waiter.send(applied);
            }
        }
    }
}

/// Whether the node reads the stream (readiness and gRPC health report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowState {
    /// Connecting, reconnecting after a failure, or catching up on what the stream holds.
    Connecting,
    /// Reading the stream, caught up with it.
    Following,
    /// Stopped (shutdown).
    Stopped,
}

/// Whether a broker's refusal is one it gives for a moment after another node declared the
/// stream: a consumer on a stream whose replica is not up yet is refused (`PRECONDITION_FAILED`,
/// "does not have a replica on the local node"), or its channel crashes in the broker, which
/// closes the connection (`INTERNAL_ERROR`).
fn is_stream_settling(error: &ClusterError) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError};
    let ClusterError::Broker(error) = error else {
        return false;
    };
    is_precondition_failed(error)
        || matches!(error.kind(), lapin::ErrorKind::ProtocolError(error)
            if error.kind() == &AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR))
}

/// The stream's epoch, learned before the node serves anything (with the stream's first and last
/// offsets and the broker's count of its messages, for the start log), and whether the replica
/// must be emptied first (it belongs to another epoch: the stream was deleted and re-created).
///
/// A replica that holds events checks the stream's first message: same epoch, and the replica
/// goes on from its head. Otherwise (and for an empty replica) the epoch is read off the first
/// message that states it; a stream that stays empty gets a bootstrap message from this node
/// proposing one (only the message that lands first, at offset 0, decides).
pub async fn discover_epoch(
    url: &str,
    node_id: &str,
    settings: &StreamSettings,
    replica: &RedbJournal,
    shutdown: &CancellationToken,
) -> Result<JoinedStream, ClusterError> {
    let mut backoff = Backoff::new(backoff::FIRST, MAX_BACKOFF);
    let started = Instant::now();
    loop {
        let attempt = async {
            let connection = connect(url, format!("notify-backbone {node_id} epoch"))
                .await
                .map_err(ClusterError::Connect)?;
            // A channel the declaration failed on was closed by the broker.
            let (channel, counts) = match declared_channel(&connection, settings).await {
                Ok(declared) => declared,
                Err(error) => {
                    close(&connection, None, "no stream").await;
                    return Err(error);
                }
            };
            let result = discover_on(&channel, counts, settings, replica, shutdown).await;
            close(&connection, Some(&channel), "epoch known").await;
            result
        };
        match attempt.await {
            Ok(epoch) => return Ok(epoch),
            Err(
                error @ (ClusterError::ShuttingDown
                | ClusterError::Foreign(_)
                | ClusterError::StreamConflict { .. }),
            ) => {
                return Err(error);
            }
            // The broker unreachable, or a stream not consumable yet: again, later.
            Err(error) => {
                let pause = backoff.next_pause();
                if is_stream_settling(&error) && started.elapsed() < STREAM_SETTLING {
                    // Expected when nodes start together: not a warning unless it lasts.
                    info!(
                        error = %Chain(&error),
                        retry_in = ?pause,
                        "journal stream: not consumable yet (just created by another node?); \
                         retrying"
                    );
                } else {
                    warn!(error = %Chain(&error), retry_in = ?pause, "journal stream: cannot read its epoch yet");
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return Err(ClusterError::ShuttingDown),
                }
            }
        }
    }
}

async fn discover_on(
    channel: &Channel,
    counts: QueueCounts,
    settings: &StreamSettings,
    replica: &RedbJournal,
    shutdown: &CancellationToken,
) -> Result<JoinedStream, ClusterError> {
    let first = AMQPValue::LongString(LongString::from("first"));
    let mut consumer = consume_from(channel, &settings.name, first, "epoch")
        .await
        .map_err(ClusterError::Broker)?;
    // A replica with events waits longer before it concludes the stream is empty (deleted and
    // re-created meanwhile) and proposes an epoch like a new node would.
    let mut patient = replica.head().position > 0;
    let mut proposed = false;
    let started = Instant::now();
    let mut first_offset = None;
    let epoch = loop {
        let wait = if patient {
            FIRST_MESSAGE_WAIT.saturating_sub(started.elapsed())
        } else {
            BOOTSTRAP_AFTER
        };
        let next = tokio::select! {
            next = tokio::time::timeout(wait, consumer.next()) => next,
            () = shutdown.cancelled() => return Err(ClusterError::ShuttingDown),
        };
        match next {
            Ok(Some(Ok(delivery))) => {
                let entry = stream::parse(&delivery).map_err(ClusterError::Foreign)?;
                let _ = channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await;
                first_offset.get_or_insert(entry.offset);
                if let Some(epoch) = entry.stream_epoch() {
                    break epoch;
                }
            }
            Ok(Some(Err(error))) => return Err(ClusterError::Broker(error)),
            Ok(None) => return Err(ClusterError::StreamGone),
            Err(_) if patient => {
                // Nothing in time: an empty stream (re-created), or a slow broker. Either way
                // the epoch is the one its first message states, as for a new node; the caller
                // empties the replica if that is not the replica's.
                warn!(
                    "the journal stream's first message did not come within \
                     {FIRST_MESSAGE_WAIT:?}: proposing an epoch as for an empty stream"
                );
                patient = false;
            }
            Err(_) if !proposed => {
                proposed = true;
                let epoch: u64 = rand::random::<u64>() | 1;
                info!(epoch = %format!("{epoch:016x}"), "the journal stream is empty: proposing its epoch");
                stream::append(channel, &settings.name, epoch, Kind::Bootstrap, "", &[])
                    .await
                    .map_err(ClusterError::Broker)?;
            }
            Err(_) => info!("waiting for the journal stream's first message"),
        }
    };
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let first_offset = first_offset.unwrap_or_default();
    let last_offset = inspect::last_offset(channel, &settings.name)
        .await?
        .unwrap_or(first_offset);
    Ok(JoinedStream {
        epoch,
        first_offset,
        last_offset,
        messages: counts.messages,
        was_empty: proposed,
    })
}

/// The follower's running task and what it shares.
pub struct Follower {
    /// Whether it reads the stream.
    pub state: watch::Receiver<FollowState>,
    /// Where writers and `Publish` calls wait for their events.
    pub waiters: Waiters,
    /// Where inbox calls wait for their commands' outcomes.
    pub inbox_waiters: InboxWaiters,
    /// The task; ends at shutdown, or with an error the node cannot go on with.
    pub task: tokio::task::JoinHandle<Result<(), ClusterError>>,
}

/// What the follower needs.
pub struct FollowerParts {
    /// The broker.
    pub url: String,
    /// This node's id (connection names).
    pub node_id: String,
    /// The stream.
    pub settings: StreamSettings,
    /// The node's replica, at the stream's epoch.
    pub replica: RedbJournal,
    /// The node's hub, built on the replica's head.
    pub hub: Hub,
    /// Where fan-outs are counted.
    pub metrics: Arc<Metrics>,
}

impl Follower {
    /// Starts following the stream from the replica's head.
    pub fn spawn(parts: FollowerParts, shutdown: CancellationToken) -> Self {
        let (state_tx, state) = watch::channel(FollowState::Connecting);
        let waiters = Waiters::default();
        let inbox_waiters = InboxWaiters::default();
        let task = tokio::spawn(run(
            parts,
            (waiters.clone(), inbox_waiters.clone()),
            state_tx,
            shutdown,
        ));
        Self {
            state,
            waiters,
            inbox_waiters,
            task,
        }
    }
}

async fn run(
    parts: FollowerParts,
    (waiters, inbox_waiters): (Waiters, InboxWaiters),
    state: watch::Sender<FollowState>,
    shutdown: CancellationToken,
) -> Result<(), ClusterError> {
    let FollowerParts {
        url,
        node_id,
        settings,
        replica,
        hub,
        metrics,
    } = parts;
    let mut follow = Follow {
        replica,
        hub,
        metrics,
        waiters,
        inbox_waiters,
        epoch: 0,
    };
    follow.epoch = follow.replica().epoch();
    let mut backoff = Backoff::new(backoff::FIRST, MAX_BACKOFF);
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let began = Instant::now();
        let session = follow.session(&url, &node_id, &settings, &state, &shutdown);
        match session.await {
            Ok(()) => break Ok(()),
            Err(
                fatal @ (ClusterError::StreamGone
                | ClusterError::EpochChanged { .. }
                | ClusterError::StreamConflict { .. }),
            ) => {
                break Err(fatal);
            }
            Err(ClusterError::ReplicaRefused(error)) => {
                // The journal's health reports the refusal (once); read on when it is over.
                let _ = state.send(FollowState::Connecting);
                debug!(error = %Chain(&error), "journal stream: the replica refuses writes; waiting");
                let mut health = follow.replica().health();
                let writable = health.wait_for(|health| *health == JournalHealth::Writable);
                tokio::select! {
                    _ = writable => {}
                    () = shutdown.cancelled() => break Ok(()),
                }
            }
            Err(error) => {
                let _ = state.send(FollowState::Connecting);
                // A session that read for a while was a success that ended: start over.
                let pause = backoff.pause_after(began.elapsed());
                warn!(error = %Chain(&error), retry_in = ?pause, "journal stream: reading failed; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => break Ok(()),
                }
            }
        }
    };
    let _ = state.send(FollowState::Stopped);
    result
}

/// The follower's state across sessions.
struct Follow {
    replica: RedbJournal,
    hub: Hub,
    metrics: Arc<Metrics>,
    waiters: Waiters,
    inbox_waiters: InboxWaiters,
    epoch: u64,
}

impl Follow {
    fn replica(&self) -> &RedbJournal {
        &self.replica
    }

    /// One connection: consume from the replica's head until shutdown or a failure.
    async fn session(
        &mut self,
        url: &str,
        node_id: &str,
        settings: &StreamSettings,
        state: &watch::Sender<FollowState>,
        shutdown: &CancellationToken,
    ) -> Result<(), ClusterError> {
        let connection = connect(url, format!("notify-backbone {node_id} follower"))
            .await
            .map_err(ClusterError::Connect)?;
        let channel = match declared_channel(&connection, settings).await {
            Ok((channel, _)) => channel,
            Err(error) => {
                close(&connection, None, "no stream").await;
                return Err(error);
            }
        };
        let result = self
            .consume(&channel, node_id, settings, state, shutdown)
            .await;
        close(&connection, Some(&channel), "follower stopping").await;
        result
    }

    async fn consume(
        &mut self,
        channel: &Channel,
        node_id: &str,
        settings: &StreamSettings,
        state: &watch::Sender<FollowState>,
        shutdown: &CancellationToken,
    ) -> Result<(), ClusterError> {
        // Position p is offset p - 1: the next offset to read is the head's position.
        let head = self.replica().head().position;
        let from = AMQPValue::LongLongInt(i64::try_from(head).unwrap_or(i64::MAX));
        let mut consumer = consume_from(channel, &settings.name, from, "follower")
            .await
            .map_err(ClusterError::Broker)?;
        // Caught up once a mark appended now comes back: everything before it was read. Until
        // then the node is not ready, so no client subscribes "from now" to a node that is
        // still minutes behind.
        let mark = format!("caught-up-{node_id}-{:016x}", rand::random::<u64>());
        let mut caught_up = Some(self.waiters.wait(&mark));
        stream::append(
            channel,
            &settings.name,
            self.epoch,
            Kind::Barrier,
            &mark,
            &[],
        )
        .await
        .map_err(ClusterError::Broker)?;
        info!(stream = %settings.name, from_position = head, "journal stream: catching up");
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = tokio::select! {
                next = consumer.next() => next,
                () = shutdown.cancelled() => return Ok(()),
            };
            let delivery = match first {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(ClusterError::Broker(error)),
                // Cancelled by the broker without a connection error: the stream was deleted.
                None => return Err(ClusterError::StreamGone),
            };
            batch.push(delivery);
            // Whatever else is ready now joins the batch, without waiting for more.
            while batch.len() < MAX_BATCH {
                let ready = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(std::pin::Pin::new(&mut consumer).poll_next(cx))
                })
                .await;
                match ready {
                    std::task::Poll::Ready(Some(Ok(delivery))) => batch.push(delivery),
                    std::task::Poll::Ready(Some(Err(error))) => {
                        return Err(ClusterError::Broker(error));
                    }
                    std::task::Poll::Ready(None) => return Err(ClusterError::StreamGone),
                    std::task::Poll::Pending => break,
                }
            }
            let last_tag = batch.last().map(|d| d.delivery_tag);
            let entries = batch
                .drain(..)
                .map(|delivery| stream::parse(&delivery))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ClusterError::Foreign)?;
            self.apply(entries).await?;
            if let Some(mark) = caught_up.as_mut()
                && mark.try_recv().is_ok()
            {
                caught_up = None;
                let _ = state.send(FollowState::Following);
                info!(
                    stream = %settings.name,
                    head = self.replica().head().position,
                    "journal stream: caught up; following"
                );
            }
            if let Some(tag) = last_tag {
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
                    .map_err(ClusterError::Broker)?;
            }
        }
    }

    /// Replicates a batch read from the stream, fans out its new events, and tells the waiters.
    async fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ClusterError> {
        let received_at = Instant::now();
        let head = self.replica().head().position;
        // A first offset past the head: retention removed what lay between.
        let skip_to = entries
            .first()
            .map(|first| first.offset)
            .filter(|&offset| offset > head);
        let mut events = Vec::with_capacity(entries.len());
        let mut barriers = Vec::new();
        let mut commands = Vec::new();
        let mut command_ids = Vec::new();
        for entry in entries {
            if matches!(entry.kind, Kind::Event | Kind::Inbox)
                && let Some(epoch) = entry.stream_epoch()
                && epoch != self.epoch
            {
                return Err(ClusterError::EpochChanged {
                    ours: self.epoch,
                    stream: epoch,
                });
            }
            let position = entry.position();
            match (entry.event, entry.command) {
                (Some(event), _) => events.push((position, event)),
                (None, Some(command)) => {
                    commands.push((position, command));
                    command_ids.push(entry.id);
                }
                (None, None) => barriers.push((entry.id, position)),
            }
        }
        let replica = &mut self.replica;
        let last_position = barriers
            .iter()
            .map(|(_, position)| *position)
            .chain(events.last().map(|(position, _)| *position))
            .chain(commands.last().map(|(position, _)| *position))
            .max();
        // A plain call: the follower runs on the pipeline's thread, which has nothing else to
        // do while the replica waits for the disk. A refused batch is read again from the
        // stream once the replica takes writes.
        let written = (|| {
            if let Some(offset) = skip_to {
                replica.skip_to(offset)?;
            }
            // Barriers and commands carry no event: the head still moves past them.
            replica.replicate_with_inbox(&mut events, &commands, last_position.unwrap_or(0))
        })()
        .map(|outcomes| (events, outcomes));
        let (events, (outcomes, inbox)) = written.map_err(|error| {
            if error.is_health_refusal() {
                ClusterError::ReplicaRefused(error)
            } else {
                ClusterError::Replica(error)
            }
        })?;
        // The streams pushed to are woken once, together, after the batch's fan-out (see
        // `hub::with_batched_wakes`).
        crate::hub::with_batched_wakes(|| {
            self.deliver_replicated(&events, outcomes, barriers, received_at, inbox, command_ids)
        });
        Ok(())
    }

    /// Fans a replicated batch out and resolves its waiters.
    fn deliver_replicated(
        &mut self,
        events: &[(u64, crate::pb::Event)],
        outcomes: Vec<Replicated>,
        barriers: Vec<(String, u64)>,
        received_at: Instant,
        inbox: ReplicaInbox,
        command_ids: Vec<String>,
    ) {
        let mut landed = Vec::with_capacity(events.len() + barriers.len());
        for ((position, event), outcome) in events.iter().zip(outcomes) {
            match outcome {
                Replicated::Stored(frame) => {
                    // Cluster mode records no spans past the writer's ingest (yet).
                    fan_out_stored(
                        &self.hub,
                        &self.metrics,
                        event,
                        Stored {
                            frame,
                            position: *position,
                            muted: inbox.muted.contains(position),
                        },
                        received_at,
                        None,
                    );
                    landed.push((
                        event.id.clone(),
                        Landed {
                            position: *position,
                            duplicate: false,
                        },
                    ));
                }
                Replicated::Duplicate(first) => {
                    self.metrics.duplicates.inc();
                    landed.push((
                        event.id.clone(),
                        Landed {
                            position: first,
                            duplicate: true,
                        },
                    ));
                }
                Replicated::AlreadyHave => {}
            }
        }
        for (id, position) in barriers {
            if !id.is_empty() {
                landed.push((
                    id,
                    Landed {
                        position,
                        duplicate: false,
                    },
                ));
            }
        }
        self.waiters.resolve(landed);
        // After the batch's events, as on a single node: an update about a new item follows
        // the item on the owner's streams.
        for update in &inbox.updates {
            self.hub.inbox_update(update);
        }
        self.inbox_waiters.resolve(
            command_ids
                .into_iter()
                .zip(inbox.applied)
                .filter_map(|(id, applied)| Some((id, applied?))),
        );
    }
}

/// A channel on `connection` with the stream declared (a no-op when it exists as configured).
async fn declared_channel(
    connection: &lapin::Connection,
    settings: &StreamSettings,
) -> Result<(lapin::Channel, QueueCounts), ClusterError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(ClusterError::Broker)?;
    let counts = settings.declare(&channel).await.map_err(|source| {
        if is_precondition_failed(&source) {
            ClusterError::StreamConflict {
                stream: settings.name.clone(),
                source,
            }
        } else {
            ClusterError::Declare {
                what: format!("stream {}", settings.name),
                source,
            }
        }
    })?;
    Ok((channel, counts))
}
