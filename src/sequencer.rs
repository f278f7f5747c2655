//! The single writer: every ingest path (the `Publish` RPC today, AMQP next) hands decoded
//! events to the sequencer, which appends them to the journal in batches and then fans each new
//! one out through the hub, in journal order.
//!
//! Owns: the bounded submission queue (its overflow policy is backpressure: a full queue makes
//! submitters wait, it never drops), batching, and the promise that the hub sees events in
//! exactly the order the journal stored them. Does not own: decoding, storage details, routing.
//!
//! One writer keeps ordering trivial (no two fan-outs interleave) and lets the journal commit a
//! whole batch at once — the group commit the durable journal relies on.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    hub::{Hub, Routed},
    pb,
    schema::Decoded,
    store::{Appended, Cursor, Journal, StoreError},
    telemetry::Metrics,
};
use std::sync::Arc;

/// The most events the sequencer takes from its queue for one journal append.
const MAX_BATCH: usize = 512;

/// The outcome of publishing one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub id: String,
    /// Its cursor (the first one, for a duplicate).
    pub cursor: Cursor,
    /// It had been accepted before; nothing was sent again.
    pub duplicate: bool,
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The sequencer has stopped (shutdown).
    #[error("the server is shutting down")]
    Stopped,
    /// The journal refused the batch.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Submission {
    decoded: Decoded,
    published_at: Instant,
    reply: oneshot::Sender<Result<Published, SequencerError>>,
}

/// Submits events to the sequencer; cheap to clone.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Submission>,
}

impl Sequencer {
    /// Starts the sequencer task. `queue_len` bounds the submissions waiting for it; when full,
    /// [`Sequencer::publish`] waits (backpressure to the ingest). The task ends when `shutdown` is
    /// cancelled (after finishing what is queued) or when every `Sequencer` is dropped.
    pub fn spawn(
        journal: impl Journal,
        hub: Hub,
        metrics: Arc<Metrics>,
        queue_len: usize,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        let task = tokio::spawn(run(journal, hub, metrics, rx, shutdown));
        (Self { tx }, task)
    }

    /// Appends one decoded event (and its admin notice) to the journal and fans it out.
    /// Returns once the event has been routed to its subscribers' queues.
    pub async fn publish(&self, decoded: Decoded) -> Result<Published, SequencerError> {
        self.submit(decoded).await?.await
    }

    /// Queues one decoded event and returns without waiting for its outcome: the returned
    /// [`Receipt`] resolves once the event is stored and routed. Waits only while the queue is
    /// full (backpressure). Receipts resolve in submission order, so an ingest can keep many
    /// events in flight and still acknowledge them in order.
    pub async fn submit(&self, decoded: Decoded) -> Result<Receipt, SequencerError> {
        let (reply, response) = oneshot::channel();
        let submission = Submission {
            decoded,
            published_at: Instant::now(),
            reply,
        };
        self.tx
            .send(submission)
            .await
            .map_err(|_| SequencerError::Stopped)?;
        Ok(Receipt(response))
    }
}

/// The pending outcome of one [`Sequencer::submit`].
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<Published, SequencerError>>);

impl Future for Receipt {
    type Output = Result<Published, SequencerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|reply| reply.unwrap_or(Err(SequencerError::Stopped)))
    }
}

async fn run<J: Journal>(
    journal: J,
    hub: Hub,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Submission>,
    shutdown: CancellationToken,
) {
    let mut journal = Some(journal);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut draining = false;
    while let Some(writer) = journal.take() {
        let received = if draining {
            rx.recv_many(&mut batch, MAX_BATCH).await
        } else {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, MAX_BATCH) => n,
                () = shutdown.cancelled() => {
                    // Take no new work, finish what was already accepted into the queue.
                    rx.close();
                    draining = true;
                    rx.recv_many(&mut batch, MAX_BATCH).await
                }
            }
        };
        if received == 0 {
            break;
        }
        journal = write_batch(writer, &hub, &metrics, &mut batch).await;
    }
    debug!("sequencer stopped");
}

/// Appends a batch (one commit, on a blocking thread: it waits for the disk), fans out the new
/// events in order, then answers every submitter. Gives the journal back, or `None` if the
/// blocking task died, which stops the sequencer (submitters then get `Stopped`).
async fn write_batch<J: Journal>(
    mut journal: J,
    hub: &Hub,
    metrics: &Metrics,
    batch: &mut Vec<Submission>,
) -> Option<J> {
    // Each submission is its event followed by its admin notice, if any.
    let mut events = Vec::with_capacity(batch.len() * 2);
    let mut replies = Vec::with_capacity(batch.len());
    for submission in batch.drain(..) {
        let Submission {
            decoded,
            published_at,
            reply,
        } = submission;
        let has_notice = decoded.admin_notice.is_some();
        events.push(decoded.event);
        events.extend(decoded.admin_notice);
        replies.push((reply, published_at, has_notice));
    }
    let joined = tokio::task::spawn_blocking(move || {
        let result = journal.append(&mut events);
        (journal, events, result)
    })
    .await;
    let (journal, events, result) = match joined {
        Ok(done) => done,
        Err(error) => {
            error!(%error, "the journal append task failed; the sequencer stops");
            return None;
        }
    };
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(error) => {
            warn!(%error, events = events.len(), "journal append failed");
            let message = error.to_string();
            for (reply, _, _) in replies {
                let error = StoreError::Unavailable(message.clone());
                let _ = reply.send(Err(error.into()));
            }
            return Some(journal);
        }
    };
    let mut stored = events.into_iter().zip(outcomes);
    for (reply, published_at, has_notice) in replies {
        let Some((event, appended)) = stored.next() else {
            let _ = reply.send(Err(StoreError::Unavailable(
                "journal returned too few outcomes".into(),
            )
            .into()));
            continue;
        };
        let notice = if has_notice { stored.next() } else { None };
        if appended.duplicate {
            metrics.duplicates.inc();
        } else {
            deliver(hub, metrics, &event, &appended, published_at);
        }
        if let Some((notice, notice_appended)) = notice
            && !notice_appended.duplicate
        {
            deliver(hub, metrics, &notice, &notice_appended, published_at);
        }
        let _ = reply.send(Ok(Published {
            id: event.id,
            cursor: appended.cursor,
            duplicate: appended.duplicate,
        }));
    }
    Some(journal)
}

/// Counts a newly stored event and fans it out with the frame the journal stored.
fn deliver(
    hub: &Hub,
    metrics: &Metrics,
    event: &pb::Event,
    appended: &Appended,
    published_at: Instant,
) {
    let Some(frame) = &appended.frame else {
        return;
    };
    metrics.record_event_in(&event.r#type);
    hub.fan_out(Routed {
        event,
        frame: frame.clone(),
        position: appended.cursor.position,
        published_at,
    });
}
