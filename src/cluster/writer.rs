//! Cluster mode's single writer: the downstream of the ingest on the shared queue. Only the
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

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::Duration,
};

use lapin::{Channel, Confirmation, PublisherConfirm, options::ConfirmSelectOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    ClusterError,
    follower::{Landed, Waiters, connect},
    stream::{self, Kind},
};
use crate::{
    ingest::Downstream,
    schema::Decoded,
    sequencer::{Published, Receipt, SequencerError},
    store::{Cursor, IdIndex, StoreError},
    telemetry::Metrics,
};

/// The most submissions appended together.
const MAX_BATCH: usize = 256;
/// How long an appended event (or a barrier) may take to come back through the follower before
/// its submission fails (and the ingest retries it; dedupe catches the copy if it did land).
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);

type Reply = oneshot::Sender<Result<Published, SequencerError>>;

struct Submission {
    decoded: Decoded,
    reply: Reply,
}

/// Submits events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    tx: mpsc::Sender<Submission>,
    /// Set when a new ingest session starts: synchronise before the next append.
    resync: Arc<AtomicBool>,
    /// For `notify_journal_writer`, which drops to 0 as soon as a session ends.
    metrics: Arc<Metrics>,
}

/// What the writer needs.
pub struct WriterParts {
    /// The broker.
    pub url: String,
    /// This node's id (connection names, barrier names).
    pub node_id: String,
    /// The stream's name.
    pub stream: String,
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
        let resync = Arc::new(AtomicBool::new(true));
        let metrics = Arc::clone(&parts.metrics);
        let task = tokio::spawn(run(parts, rx, Arc::clone(&resync), shutdown));
        (
            Self {
                tx,
                resync,
                metrics,
            },
            task,
        )
    }
}

impl Downstream for StreamWriter {
    type Receipt = Receipt;

    async fn submit(&self, decoded: Decoded) -> Result<Receipt, SequencerError> {
        let (reply, receipt) = Receipt::new();
        self.tx
            .send(Submission { decoded, reply })
            .await
            .map_err(|_| SequencerError::Stopped)?;
        Ok(receipt)
    }

    fn session_started(&self) {
        // A new session may or may not be the queue's active consumer: this node writes again
        // only once a delivery says it is (and it has synchronised).
        self.resync.store(true, Ordering::Relaxed);
        if self.metrics.journal_writer.get() == 1 {
            info!("journal writer: the ingest session ended; this node no longer writes");
        }
        self.metrics.journal_writer.set(0);
    }
}

async fn run(
    parts: WriterParts,
    mut rx: mpsc::Receiver<Submission>,
    resync: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut channel: Option<(lapin::Connection, Channel)> = None;
    let inflight = InFlight::default();
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            () = shutdown.cancelled() => break,
        };
        if received == 0 {
            break;
        }
        if channel.is_none() {
            match open(&parts).await {
                Ok(opened) => channel = Some(opened),
                Err(error) => {
                    warn!(%error, "journal writer: cannot reach the broker");
                    fail(batch.drain(..), &error);
                    continue;
                }
            }
        }
        let Some((_, ch)) = &channel else { continue };
        if resync.swap(false, Ordering::Relaxed) {
            parts.metrics.journal_writer.set(0);
            if let Err(error) = sync(&parts, ch).await {
                warn!(%error, "journal writer: cannot synchronise with the stream");
                resync.store(true, Ordering::Relaxed);
                fail(batch.drain(..), &error);
                channel = None;
                continue;
            }
            parts.metrics.journal_writer.set(1);
            info!(stream = %parts.stream, "journal writer: this node writes the journal stream now");
        }
        if let Err(error) = write(&parts, ch, std::mem::take(&mut batch), &inflight, &resync).await
        {
            warn!(%error, "journal writer: appending failed; reconnecting");
            // The stream may have some of the batch: the retries are recognised by their ids
            // once this node has synchronised again.
            resync.store(true, Ordering::Relaxed);
            channel = None;
        }
    }
    parts.metrics.journal_writer.set(0);
    if let Some((connection, _)) = channel {
        let _ = connection.close(200, "writer stopping".into()).await;
    }
}

async fn open(parts: &WriterParts) -> Result<(lapin::Connection, Channel), ClusterError> {
    let connection = connect(
        &parts.url,
        format!("notify-backbone {} writer", parts.node_id),
    )
    .await
    .map_err(ClusterError::Connect)?;
    let channel = connection
        .create_channel()
        .await
        .map_err(ClusterError::Broker)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(ClusterError::Broker)?;
    Ok((connection, channel))
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
/// the waiting part sets `resync` for the next batch. Every submission is answered either way.
async fn write(
    parts: &WriterParts,
    channel: &Channel,
    batch: Vec<Submission>,
    inflight: &InFlight,
    resync: &Arc<AtomicBool>,
) -> Result<(), ClusterError> {
    let epoch = parts.epoch;
    // Known ids: stored before (the replica's index), or appended and not read back yet.
    let ids: Vec<String> = batch
        .iter()
        .flat_map(|s| std::iter::once(&s.decoded.event).chain(&s.decoded.admin_notice))
        .map(|event| event.id.clone())
        .collect();
    let index = parts.ids.clone();
    let known = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        index.positions_of(&refs)
    })
    .await
    .map_err(|error| ClusterError::Replica(error.to_string()))?
    .map_err(|error| ClusterError::Replica(error.to_string()))?;
    let mut known = known.into_iter();
    let mut confirms = Vec::new();
    // Per submission: its reply and how it is answered.
    let mut plans: Vec<(Reply, String, Answer)> = Vec::with_capacity(batch.len());
    let mut pending: Vec<Pending> = Vec::new();
    let mut appends: Vec<(String, Appended<'_>)> = Vec::new();
    let mut failure = None;
    for Submission { decoded, reply } in batch {
        let mut answer = None;
        for (n, event) in std::iter::once(&decoded.event)
            .chain(&decoded.admin_notice)
            .enumerate()
        {
            let stored_at = known.next().flatten();
            let is_event = n == 0;
            if let Some(position) = stored_at {
                if is_event {
                    answer = Some(Answer::Duplicate(position));
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
    let appending_failed = failure.as_ref().map(ToString::to_string);
    let (waiters, inflight, resync) = (
        parts.waiters.clone(),
        Arc::clone(inflight),
        Arc::clone(resync),
    );
    tokio::spawn(async move {
        let mut failure = appending_failed;
        for (id, confirm) in confirms {
            if let Err(error) = confirmed(confirm.await) {
                waiters.forget(&id);
                failure.get_or_insert(error.to_string());
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
                        failure.get_or_insert(ClusterError::ReadBack(id.clone()).to_string());
                        None
                    }
                }
            };
            lock(&inflight).remove(&id);
            landings.push(outcome);
        }
        for (reply, id, answer) in plans {
            let landed = match answer {
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
                (None, Some(reason)) => Err(StoreError::Unavailable(reason.clone()).into()),
                (None, None) => Err(StoreError::Unavailable(
                    "not appended: an earlier copy was not read back".into(),
                )
                .into()),
            };
            let _ = reply.send(outcome);
        }
        if failure.is_some() {
            resync.store(true, Ordering::Relaxed);
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
}

fn fail(batch: impl Iterator<Item = Submission>, error: &ClusterError) {
    let reason = error.to_string();
    for submission in batch {
        let _ = submission
            .reply
            .send(Err(StoreError::Unavailable(reason.clone()).into()));
    }
}
