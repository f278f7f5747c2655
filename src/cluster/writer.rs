//! Cluster mode's single writer: the `write::Writer` of the ingest on the shared queue. Only the
//! queue's active consumer receives anything, so only one node writes the stream at a time.
//!
//! Owns: synchronising with the stream when this node takes over (a barrier read back by the
//! node's own follower proves the replica holds everything written before, so its id index is
//! complete for dedupe), dedupe, appending with publisher confirms, and answering each
//! submission with where its event landed (read back by the follower). Does not own: consuming,
//! acking or dead-lettering (`ingest`), or reading the stream (`follower`).
//!
//! A submission is answered only once its event is in the stream and has been read back: the
//! ingest acks the delivery then, and a `Publish` forwarded from any node gets the cursor.
//!
//! When it takes over is the first delivery of an ingest session: an event, or the probe
//! (`ingest::PROBE_TYPE`) that every node's ingest publishes to the shared queue when it starts
//! consuming and when it stops, which only the active consumer receives. So the writer
//! synchronises and says "this node is the cluster's writer" (`notify_journal_writer` 1) when
//! the cluster starts, and when a writer hands over on shutdown, without waiting for an event;
//! after a writer was killed, its successor says it at the next event or probe (any node's
//! restart). It says it no longer is as soon as its ingest session ends.
//!
//! Appends go over the ingest session's own channel, the one that consumes the queue: that is
//! the fence against a dead writer. The broker handles a channel's frames in order, so whatever
//! a killed writer still had in flight is handed to the stream (or dropped) before its channel
//! closes; only then does the queue pass its deliveries to the next consumer, whose barrier
//! therefore lands after every append of its predecessor. With a connection of its own, a dead
//! writer's last appends could reach the stream after its successor's barrier and be stored
//! twice. It also means a node whose session ended cannot append at all: its submissions from
//! that session fail (their deliveries were requeued to whoever consumes now).
//!
//! A little over 600 lines: taking over (the barrier) and appending a batch (dedupe, confirms,
//! read-backs, answers) keep the fencing and dedupe promises above together in one place.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use lapin::{Channel, Confirmation, PublisherConfirm, options::ConfirmSelectOptions};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    ClusterError,
    follower::{Landed, Waiters},
    stream::{self, Kind},
};
use crate::{
    inbox::{Applied, Command},
    otel::EventTrace,
    schema::Decoded,
    store::{Cursor, IdIndex},
    telemetry::Chain,
    telemetry::Metrics,
    write::{
        Applying, ClusterFailure, InboxReply, Published, Receipt, Reply, Submitting, WriteError,
        Writer,
    },
};

/// The most submissions appended together.
const MAX_BATCH: usize = 256;
/// Probes waiting for the writer (one per ingest session start or stop anywhere in the cluster,
/// so rarely more than one): full, the ingest waits.
const PROBE_QUEUE_LEN: usize = 8;
/// How long an appended event (or a barrier) may take to come back through the follower before
/// its submission fails (and the ingest retries it; dedupe catches the copy if it did land).
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);

struct Submission {
    decoded: Decoded,
    reply: Reply,
    /// The ingest session it came from: appended only on that session's channel.
    session: u64,
}

/// An inbox command another node forwarded, to append as it is (commands need no dedupe: each
/// is idempotent, so a retried one applied twice changes nothing more).
struct InboxSubmission {
    id: String,
    command: Command,
    reply: InboxReply,
    session: u64,
}

/// Inbox commands waiting for the writer (they are rate-limited per user): full, the ingest
/// waits.
const INBOX_QUEUE_LEN: usize = 64;

/// A probe reached the ingest session `session`: it is the shared queue's active consumer.
struct Probe {
    session: u64,
    /// Answered once the writer acted on it (the probe is acked then).
    done: oneshot::Sender<()>,
}

/// The current ingest session's channel, which the writer appends on.
#[derive(Default)]
struct SessionChannel {
    /// Counts sessions; 0 before the first.
    generation: AtomicU64,
    channel: Mutex<Option<(u64, Channel)>>,
}

impl SessionChannel {
    fn current(&self) -> Option<(u64, Channel)> {
        self.channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Submits events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    tx: mpsc::Sender<Submission>,
    inbox: mpsc::Sender<InboxSubmission>,
    probes: mpsc::Sender<Probe>,
    session: Arc<SessionChannel>,
    /// For `notify_journal_writer`, which drops to 0 as soon as a session ends.
    metrics: Arc<Metrics>,
}

/// What the writer needs.
pub struct WriterParts {
    /// This node's id (barrier names).
    pub node_id: String,
    /// The stream's name.
    pub stream: String,
    /// The shared ingest queue's name (for the log).
    pub ingest_queue: String,
    /// The stream's epoch: every message carries it.
    pub epoch: u64,
    /// The follower's waiters, to learn where appended events landed.
    pub waiters: Waiters,
    /// The replica's id index: the dedupe state.
    pub ids: IdIndex,
    /// `notify_journal_writer`.
    pub metrics: Arc<Metrics>,
    /// Submissions waiting for the writer (`--publish-queue-len`): full, the ingest waits.
    pub queue_len: usize,
}

impl StreamWriter {
    /// Starts the writer task; it stops when `shutdown` is cancelled.
    pub fn spawn(
        parts: WriterParts,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(parts.queue_len.max(1));
        let (probes, probes_rx) = mpsc::channel(PROBE_QUEUE_LEN);
        let (inbox, inbox_rx) = mpsc::channel(INBOX_QUEUE_LEN);
        let session = Arc::new(SessionChannel::default());
        let metrics = Arc::clone(&parts.metrics);
        let task = tokio::spawn(run(
            parts,
            (rx, inbox_rx),
            probes_rx,
            Arc::clone(&session),
            shutdown,
        ));
        (
            Self {
                tx,
                inbox,
                probes,
                session,
                metrics,
            },
            task,
        )
    }
}

impl StreamWriter {
    async fn queue(&self, decoded: Decoded) -> Result<Receipt, WriteError> {
        let (reply, receipt) = Receipt::new();
        let session = self.session.generation.load(Ordering::Acquire);
        self.tx
            .send(Submission {
                decoded,
                reply,
                session,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(receipt)
    }
}

/// The writer node's ingest hands it the shared queue's events. It records no spans of its own
/// (yet): a sampled event's trace ends at the ingest.
impl Writer for StreamWriter {
    fn submit_traced(&self, decoded: Decoded, _trace: Option<EventTrace>) -> Submitting<'_> {
        Box::pin(self.queue(decoded))
    }

    fn append_inbox(&self, id: String, command: Command) -> Applying<'_> {
        Box::pin(async move {
            let (reply, applied) = oneshot::channel();
            let session = self.session.generation.load(Ordering::Acquire);
            self.inbox
                .send(InboxSubmission {
                    id,
                    command,
                    reply,
                    session,
                })
                .await
                .map_err(|_| WriteError::Stopped)?;
            applied.await.unwrap_or(Err(WriteError::Stopped))
        })
    }

    fn session_started(&self, channel: &Channel) {
        // A new session may or may not be the queue's active consumer: this node writes again
        // only once a delivery says it is, on this session's channel, after a barrier.
        let generation = self.session.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self
            .session
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((generation, channel.clone()));
        self.session_ended();
    }

    fn session_active(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let probes = self.probes.clone();
        let session = self.session.generation.load(Ordering::Acquire);
        Box::pin(async move {
            let (done, acted) = oneshot::channel();
            if probes.send(Probe { session, done }).await.is_ok() {
                let _ = acted.await;
            }
        })
    }

    fn session_ended(&self) {
        if self.metrics.journal_writer.set(0) == 1 {
            info!(
                "journal writer: the ingest session ended; this node is no longer the cluster's \
                 writer"
            );
        }
    }
}

async fn run(
    parts: WriterParts,
    (mut rx, mut inbox): (mpsc::Receiver<Submission>, mpsc::Receiver<InboxSubmission>),
    mut probes: mpsc::Receiver<Probe>,
    session: Arc<SessionChannel>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut state = Synced::default();
    // Set when an append failed: synchronise again before the next.
    let resync = Arc::new(AtomicBool::new(false));
    let inflight = InFlight::default();
    // The tasks answering appended batches: they stop at shutdown (their submissions then read
    // as stopped) and are joined before the writer's task ends.
    let mut answering = JoinSet::new();
    loop {
        while answering.try_join_next().is_some() {}
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            Some(Probe { session: probed, done }) = probes.recv() => {
                // The queue's active consumer: the writer from now on, said now rather than at
                // the next event.
                if let Some((generation, channel)) = session.current()
                    && generation == probed
                    && let Err(error) = state.ensure(&parts, generation, &channel, &resync).await
                {
                    warn!(error = %Chain(&error), "journal writer: cannot synchronise with the stream");
                }
                let _ = done.send(());
                continue;
            }
            Some(submission) = inbox.recv() => {
                append_command(&parts, &session, &mut state, &resync, submission, &mut answering, &shutdown).await;
                continue;
            }
            () = shutdown.cancelled() => break,
        };
        if received == 0 {
            break;
        }
        let Some((generation, channel)) = session.current() else {
            fail(batch.drain(..), ClusterError::NoSession);
            continue;
        };
        // Deliveries of an ended session were requeued to whoever consumes now: appending them
        // here would race that writer.
        let (current, stale): (Vec<_>, Vec<_>) =
            batch.drain(..).partition(|s| s.session == generation);
        fail(stale.into_iter(), ClusterError::NoSession);
        if current.is_empty() {
            continue;
        }
        if let Err(error) = state.ensure(&parts, generation, &channel, &resync).await {
            warn!(error = %Chain(&error), "journal writer: cannot synchronise with the stream");
            fail(current.into_iter(), error);
            continue;
        }
        let shared = Shared {
            inflight: &inflight,
            resync: &resync,
            answering: &mut answering,
            shutdown: &shutdown,
        };
        if let Err(error) = write(&parts, &channel, current, shared).await {
            warn!(
                error = %Chain(&*error),
                "journal writer: appending failed; synchronising again before the next"
            );
            // The stream may have some of the batch: the retries are recognised by their ids
            // once this node has synchronised again.
            resync.store(true, Ordering::Relaxed);
        }
    }
    // Cancelled with the writer: they answer what is read back meanwhile and stop.
    while answering.join_next().await.is_some() {}
    if parts.metrics.journal_writer.set(0) == 1 {
        info!("journal writer: stopped; this node is no longer the cluster's writer");
    }
}

/// Appends one forwarded inbox command on the current session's channel (synchronised first,
/// like events), and answers it once the broker confirmed it, in a task of its own.
async fn append_command(
    parts: &WriterParts,
    session: &SessionChannel,
    state: &mut Synced,
    resync: &Arc<AtomicBool>,
    submission: InboxSubmission,
    answering: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let InboxSubmission {
        id,
        command,
        reply,
        session: submitted_on,
    } = submission;
    let fail = |reply: InboxReply, error: ClusterError| {
        let _ = reply.send(Err(WriteError::cluster(error)));
    };
    let Some((generation, channel)) = session.current() else {
        return fail(reply, ClusterError::NoSession);
    };
    if generation != submitted_on {
        // A delivery of an ended session: whoever consumes now appends it.
        return fail(reply, ClusterError::NoSession);
    }
    if let Err(error) = state.ensure(parts, generation, &channel, resync).await {
        warn!(error = %Chain(&error), "journal writer: cannot synchronise with the stream");
        return fail(reply, error);
    }
    let sent = stream::append(
        &channel,
        &parts.stream,
        parts.epoch,
        Kind::Inbox,
        &id,
        &command.encode(),
    )
    .await;
    let confirm = match sent {
        Ok(confirm) => confirm,
        Err(error) => {
            resync.store(true, Ordering::Relaxed);
            return fail(reply, ClusterError::Broker(error));
        }
    };
    let (resync, shutdown) = (Arc::clone(resync), shutdown.clone());
    answering.spawn(async move {
        tokio::select! {
            confirmation = confirm => match confirmed(confirmation) {
                Ok(()) => {
                    let _ = reply.send(Ok(Applied::InStream));
                }
                Err(error) => {
                    resync.store(true, Ordering::Relaxed);
                    let _ = reply.send(Err(WriteError::cluster(error)));
                }
            },
            () = shutdown.cancelled() => {}
        }
    });
}

/// Which ingest session the writer is synchronised on.
#[derive(Default)]
struct Synced {
    /// The session whose channel is in confirm mode and synchronised (barrier read back).
    session: Option<u64>,
    /// The session this node last said it writes on.
    announced: Option<u64>,
}

impl Synced {
    /// Synchronises with the stream on session `generation`'s channel unless that is done (and
    /// no append failed since): confirm mode the first time, then a barrier read back. Says
    /// once per session that this node is the cluster's writer.
    async fn ensure(
        &mut self,
        parts: &WriterParts,
        generation: u64,
        channel: &Channel,
        resync: &AtomicBool,
    ) -> Result<(), ClusterError> {
        if self.session == Some(generation) && !resync.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        // The barrier below covers every failure so far.
        resync.store(false, Ordering::Relaxed);
        parts.metrics.journal_writer.set(0);
        let first_use = self.session != Some(generation);
        self.session = None;
        take_over(parts, channel, first_use).await?;
        self.session = Some(generation);
        parts.metrics.journal_writer.set(1);
        if self.announced != Some(generation) {
            self.announced = Some(generation);
            info!(
                stream = %parts.stream,
                ingest_queue = %parts.ingest_queue,
                "journal writer: this node is the cluster's writer (the ingest queue's active \
                 consumer); it appends to the journal stream"
            );
        } else {
            info!(stream = %parts.stream, "journal writer: synchronised with the stream again");
        }
        Ok(())
    }
}

/// Puts a session's channel in confirm mode (`first_use`) and appends the barrier.
async fn take_over(
    parts: &WriterParts,
    channel: &Channel,
    first_use: bool,
) -> Result<(), ClusterError> {
    if first_use {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ClusterError::Broker)?;
    }
    sync(parts, channel).await
}

/// Appends a barrier and waits until this node's follower read it back: from then on the
/// replica holds everything written before (a previous writer's last appends included), so its
/// id index is complete for dedupe.
async fn sync(parts: &WriterParts, channel: &Channel) -> Result<(), ClusterError> {
    let id = format!("barrier-{}-{:016x}", parts.node_id, rand::random::<u64>());
    let landed = parts.waiters.wait(&id);
    let confirm = stream::append(channel, &parts.stream, parts.epoch, Kind::Barrier, &id, &[])
        .await
        .map_err(ClusterError::Broker)?;
    confirmed(confirm.await)?;
    match tokio::time::timeout(READ_BACK_TIMEOUT, landed).await {
        Ok(Ok(_)) => Ok(()),
        _ => {
            parts.waiters.forget(&id);
            Err(ClusterError::ReadBack(id))
        }
    }
}

fn confirmed(confirmation: lapin::Result<Confirmation>) -> Result<(), ClusterError> {
    match confirmation.map_err(ClusterError::Broker)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(ClusterError::Unroutable),
        _ => Err(ClusterError::Nacked),
    }
}

/// An append whose frames are queued on the connection: written already, or not yet.
type Appending<'a> = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>;

enum Appended<'a> {
    Sent(lapin::Result<PublisherConfirm>),
    Sending(Appending<'a>),
}

/// One event (or admin notice) of a batch, on its way.
struct Pending {
    id: String,
    landed: oneshot::Receiver<Landed>,
}

/// Ids appended and not read back yet, across the batches in flight: a later batch that holds
/// one of them again waits for that landing instead of appending a copy. As many as the ingest
/// has deliveries in flight (its prefetch).
type InFlight = Arc<Mutex<HashSet<String>>>;

/// Dedupes a batch and appends what is new, in order; then, in a task of its own, waits for the
/// confirms and the read-backs and answers every submission, so the next batch is appended
/// meanwhile (one batch's round trip to the stream and back no longer holds the next). An error
/// here means the connection is suspect (the caller reconnects and resynchronises); an error of
/// the waiting part sets `resync` for the next batch. Every submission is answered either way
/// (as stopped, if shutdown comes first).
async fn write(
    parts: &WriterParts,
    channel: &Channel,
    batch: Vec<Submission>,
    shared: Shared<'_>,
) -> Result<(), Arc<ClusterError>> {
    let Shared {
        inflight,
        resync,
        answering,
        shutdown,
    } = shared;
    let epoch = parts.epoch;
    // Known ids: stored before (the replica's index), or appended and not read back yet. A
    // plain call: the writer runs on the pipeline's thread.
    let events: Vec<&crate::pb::Event> = batch
        .iter()
        .flat_map(|s| std::iter::once(&s.decoded.event).chain(&s.decoded.admin_notice))
        .collect();
    let known = parts.ids.known(&events).map_err(ClusterError::Replica)?;
    let mut known = known.into_iter();
    let mut confirms = Vec::new();
    // Per submission: its reply and how it is answered.
    let mut plans: Vec<(Reply, String, Answer)> = Vec::with_capacity(batch.len());
    let mut pending: Vec<Pending> = Vec::new();
    let mut appends: Vec<(String, Appended<'_>)> = Vec::new();
    let mut failure = None;
    for Submission { decoded, reply, .. } in batch {
        let mut answer = None;
        for (n, event) in std::iter::once(&decoded.event)
            .chain(&decoded.admin_notice)
            .enumerate()
        {
            let stored_at = known.next().flatten();
            let is_event = n == 0;
            if let Some(stored) = stored_at {
                if is_event {
                    answer = Some(if stored.conflict {
                        crate::sequencer::conflicting_id(&parts.metrics, event);
                        Answer::Conflicting
                    } else {
                        Answer::Duplicate(stored.position)
                    });
                }
                continue;
            }
            if lock(inflight).contains(&event.id) {
                // Appended already (earlier in this batch, or a batch still in flight).
                if is_event {
                    answer = Some(Answer::Again(parts.waiters.wait(&event.id)));
                }
                continue;
            }
            if failure.is_some() {
                continue;
            }
            let landed = parts.waiters.wait(&event.id);
            let (id, body) = (event.id.clone(), stream::event_body(event));
            let mut append: Appending<'_> = Box::pin(async move {
                stream::append(channel, &parts.stream, epoch, Kind::Event, &id, &body).await
            });
            // The first poll queues the frames (in batch order, so the stream keeps the
            // order of the submissions); the writes to the socket are awaited after the
            // loop, so one batch costs one hand-off to the connection, not one per event.
            let queued = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
            appends.push((
                event.id.clone(),
                match queued {
                    Poll::Ready(sent) => Appended::Sent(sent),
                    Poll::Pending => Appended::Sending(append),
                },
            ));
            lock(inflight).insert(event.id.clone());
            if is_event {
                answer = Some(Answer::Landing(pending.len()));
            }
            pending.push(Pending {
                id: event.id.clone(),
                landed,
            });
        }
        plans.push((reply, decoded.event.id, answer.unwrap_or(Answer::Failed)));
    }
    for (id, append) in appends {
        let sent = match append {
            Appended::Sent(sent) => sent,
            Appended::Sending(sending) => sending.await,
        };
        match sent {
            Ok(confirm) => confirms.push((id, confirm)),
            Err(error) => {
                // Answered as failed (with the rest of the batch, below) and retried by the
                // ingest; what did land is recognised as a duplicate after resynchronising.
                failure.get_or_insert(ClusterError::Broker(error));
            }
        }
    }
    let failure = failure.map(Arc::new);
    let appending_failed: Option<ClusterFailure> = failure.clone().map(|error| error as _);
    let (waiters, inflight, resync) = (
        parts.waiters.clone(),
        Arc::clone(inflight),
        Arc::clone(resync),
    );
    let answer = async move {
        let mut failure = appending_failed;
        for (id, confirm) in confirms {
            if let Err(error) = confirmed(confirm.await) {
                waiters.forget(&id);
                failure.get_or_insert_with(|| Arc::new(error) as ClusterFailure);
            }
        }
        // Where each appended event landed, in batch order.
        let mut landings = Vec::with_capacity(pending.len());
        for Pending { id, landed } in pending {
            let outcome = if failure.is_some() {
                // The connection is suspect: a landing may still come, but the submission is
                // answered now (and retried); dedupe recognises the copy if it did land.
                waiters.forget(&id);
                None
            } else {
                match tokio::time::timeout(READ_BACK_TIMEOUT, landed).await {
                    Ok(Ok(landed)) => Some(landed),
                    _ => {
                        waiters.forget(&id);
                        failure.get_or_insert_with(|| {
                            Arc::new(ClusterError::ReadBack(id.clone())) as ClusterFailure
                        });
                        None
                    }
                }
            };
            lock(&inflight).remove(&id);
            landings.push(outcome);
        }
        if failure.is_some() {
            // Before the answers: a failed submission comes back as a redelivery, which must
            // find the flag set (and the barrier first) rather than append a second copy.
            resync.store(true, Ordering::Relaxed);
        }
        for (reply, id, answer) in plans {
            if matches!(answer, Answer::Conflicting) {
                let _ = reply.send(Err(WriteError::ConflictingId { id }));
                continue;
            }
            let landed = match answer {
                Answer::Conflicting => None,
                Answer::Duplicate(position) => Some(Landed {
                    position,
                    duplicate: true,
                }),
                Answer::Again(landed) => {
                    match tokio::time::timeout(READ_BACK_TIMEOUT, landed).await {
                        Ok(Ok(landed)) => Some(Landed {
                            duplicate: true,
                            ..landed
                        }),
                        _ => None,
                    }
                }
                Answer::Landing(index) => landings[index],
                Answer::Failed => None,
            };
            let outcome = match (landed, &failure) {
                (Some(landed), _) => Ok(Published {
                    id,
                    cursor: Cursor {
                        epoch,
                        position: landed.position,
                    },
                    duplicate: landed.duplicate,
                }),
                (None, Some(failure)) => Err(WriteError::Cluster(Arc::clone(failure))),
                (None, None) => Err(WriteError::cluster(ClusterError::CopyNotReadBack)),
            };
            let _ = reply.send(outcome);
        }
    };
    let shutdown = shutdown.clone();
    answering.spawn(async move {
        tokio::select! {
            () = answer => {}
            () = shutdown.cancelled() => {}
        }
    });
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn lock(inflight: &InFlight) -> std::sync::MutexGuard<'_, HashSet<String>> {
    inflight.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How one submission is answered.
enum Answer {
    /// Its id was stored before, at this position.
    Duplicate(u64),
    /// Its id was appended already and is not read back yet: that landing, as a duplicate.
    Again(oneshot::Receiver<Landed>),
    /// Appended now: where it lands.
    Landing(usize),
    /// Not appended (the connection failed first).
    Failed,
    /// Its id was stored before for a different event: refused.
    Conflicting,
}

fn fail(batch: impl Iterator<Item = Submission>, error: ClusterError) {
    let error: ClusterFailure = Arc::new(error);
    for submission in batch {
        let _ = submission
            .reply
            .send(Err(WriteError::Cluster(Arc::clone(&error))));
    }
}

/// What the writer's loop lends each batch's [`write`].
struct Shared<'a> {
    /// Ids appended and not read back yet.
    inflight: &'a InFlight,
    /// Set when an append failed: synchronise again before the next.
    resync: &'a Arc<AtomicBool>,
    /// Where the batch's answering task goes.
    answering: &'a mut JoinSet<()>,
    /// Stops the answering task.
    shutdown: &'a CancellationToken,
}
