//! `Publish` on any node of a cluster: the validated event goes to the shared ingest queue, so
//! the one writer appends it like any producer's event, and the writer's answer (id, cursor,
//! duplicate) comes back through RabbitMQ's direct reply-to.
//!
//! Owns: the forwarding channel, the correlation of answers to calls, and the answer's format
//! (a `PublishResponse` in the body; on refusal, the reason in `x-notify-error*` headers and
//! an empty body). Does not own: validation (the caller decoded the event) or writing
//! (`writer`).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use prost::Message as _;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::broker::{close, connect};
use crate::{
    ingest,
    otel::EventTrace,
    pb,
    schema::Decoded,
    store::{Cursor, CursorError},
    write::{Published, Receipt, Reply, Submitting, WriteError, Writer},
};

/// RabbitMQ's pseudo-queue for direct replies.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Calls waiting for a connection (bounded: full, `Publish` callers wait).
const QUEUE_LEN: usize = 1024;
/// Above this many calls waiting for answers, those whose caller gave up are forgotten.
const PRUNE_ABOVE: usize = 4096;
/// The pause before reconnecting after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Why a forwarded `Publish` got no answer from the writer (reported as
/// [`WriteError::Cluster`]).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The connection the call went out on was lost before the writer answered.
    #[error("the connection to the journal's writer was lost")]
    ConnectionLost,
    /// The broker took the event but routed it nowhere.
    #[error("the ingest queue does not exist (unroutable)")]
    Unroutable,
    /// The broker refused (nacked) the event.
    #[error("the broker refused the event")]
    Nacked,
    /// The broker's confirm did not come: the connection failed.
    #[error("the broker connection was lost")]
    Broker(#[source] lapin::Error),
    /// The writer refused the event, with its reason (`x-notify-error-detail`).
    #[error("the journal's writer refused the event: {0}")]
    Refused(String),
    /// The writer's answer is not a `PublishResponse`.
    #[error("unreadable answer from the journal's writer")]
    Answer(#[source] prost::DecodeError),
    /// The writer's answer holds no cursor.
    #[error("unreadable cursor from the journal's writer")]
    Cursor(#[source] CursorError),
}

struct Call {
    event: pb::Event,
    answer: Reply,
}

/// Forwards `Publish` calls to the writer; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Call>,
}

impl Forwarder {
    /// Starts the forwarding task on its own connection, until `shutdown`.
    pub fn spawn(
        url: String,
        node_id: String,
        ingest_queue: String,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let task = tokio::spawn(run(url, node_id, ingest_queue, rx, shutdown));
        (Self { tx }, task)
    }

    /// Queues one decoded event for the writer without waiting for its answer. Calls are
    /// forwarded in the order they were queued, so one caller's events keep their order. The
    /// writer derives the admin notice again from the event.
    async fn queue(&self, decoded: Decoded) -> Result<Receipt, WriteError> {
        let (answer, receipt) = Receipt::new();
        self.tx
            .send(Call {
                event: decoded.event,
                answer,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(receipt)
    }
}

/// `Publish` on any node of a cluster. The event is journaled by the writer node, which records
/// no spans of its own for it yet: a sampled event's trace ends here.
impl Writer for Forwarder {
    fn submit_traced(&self, decoded: Decoded, _trace: Option<EventTrace>) -> Submitting<'_> {
        Box::pin(self.queue(decoded))
    }
}

/// Calls waiting for the writer's answer, by correlation id, with their event's id.
type Waiting = Arc<Mutex<HashMap<u64, (Reply, String)>>>;

async fn run(
    url: String,
    node_id: String,
    ingest_queue: String,
    mut rx: mpsc::Receiver<Call>,
    shutdown: CancellationToken,
) {
    let waiting: Waiting = Arc::default();
    let mut next_id = 0_u64;
    // The tasks waiting for the broker's confirms: stopped at shutdown, joined before this
    // task ends.
    let mut confirms = JoinSet::new();
    while !shutdown.is_cancelled() {
        let calls = Calls {
            rx: &mut rx,
            waiting: &waiting,
            next_id: &mut next_id,
            confirms: &mut confirms,
        };
        let session = session(&url, &node_id, &ingest_queue, calls, &shutdown).await;
        // Calls waiting for an answer on the lost connection will not get one.
        for (_, (answer, _)) in waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            let _ = answer.send(Err(WriteError::cluster(ForwardError::ConnectionLost)));
        }
        match session {
            Ok(()) => break,
            Err(error) => {
                warn!(%error, "publish forwarding: broker connection lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    while confirms.join_next().await.is_some() {}
}

/// What one connection's session works on, kept across sessions.
struct Calls<'a> {
    rx: &'a mut mpsc::Receiver<Call>,
    /// Calls waiting for the writer's answer.
    waiting: &'a Waiting,
    /// The last correlation id given out.
    next_id: &'a mut u64,
    /// The tasks waiting for the broker's confirms.
    confirms: &'a mut JoinSet<()>,
}

async fn session(
    url: &str,
    node_id: &str,
    ingest_queue: &str,
    calls: Calls<'_>,
    shutdown: &CancellationToken,
) -> lapin::Result<()> {
    let Calls {
        rx,
        waiting,
        next_id,
        confirms,
    } = calls;
    let connection = connect(url, format!("notify-backbone {node_id} publish")).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut replies = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            call = rx.recv() => {
                let Some(call) = call else { break Ok(()) };
                *next_id += 1;
                while confirms.try_join_next().is_some() {}
                let confirm = forward(&channel, ingest_queue, call, *next_id, waiting).await;
                match confirm {
                    Ok(confirm) => {
                        let shutdown = shutdown.clone();
                        confirms.spawn(async move {
                            tokio::select! {
                                () = confirm => {}
                                () = shutdown.cancelled() => {}
                            }
                        });
                    }
                    Err(error) => break Err(error),
                }
            }
            reply = replies.next() => match reply {
                Some(Ok(delivery)) => answer(&delivery, waiting),
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            },
        }
    };
    close(&connection, Some(&channel), "publish forwarding stopping").await;
    result
}

/// Sends one call to the ingest queue; the returned future answers the call if the broker
/// refuses it (the broker's confirm comes before the writer's answer).
async fn forward(
    channel: &Channel,
    ingest_queue: &str,
    call: Call,
    id: u64,
    waiting: &Waiting,
) -> lapin::Result<impl Future<Output = ()> + Send + 'static> {
    let Call { event, answer } = call;
    {
        let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() > PRUNE_ABOVE {
            waiting.retain(|_, (answer, _)| !answer.is_closed());
        }
        waiting.insert(id, (answer, event.id.clone()));
    }
    let properties = BasicProperties::default()
        .with_content_type(ingest::FORWARDED_CONTENT_TYPE.into())
        .with_type(ingest::FORWARDED_TYPE.into())
        .with_delivery_mode(2)
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_correlation_id(ShortString::from(id.to_string()));
    let confirm = channel
        .basic_publish(
            "".into(),
            ingest_queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &event.encode_to_vec(),
            properties,
        )
        .await?;
    // The broker's confirm comes before the writer's answer; a refusal is answered here.
    let waiting = Arc::clone(waiting);
    Ok(async move {
        let refused = match confirm.await {
            Ok(Confirmation::Ack(None)) => return,
            Ok(Confirmation::Ack(Some(_))) => ForwardError::Unroutable,
            Ok(_) => ForwardError::Nacked,
            Err(error) => ForwardError::Broker(error),
        };
        let answer = waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some((answer, _)) = answer {
            let _ = answer.send(Err(WriteError::cluster(refused)));
        }
    })
}

/// Hands the writer's answer to the call it belongs to.
fn answer(delivery: &lapin::message::Delivery, waiting: &Waiting) {
    let Some(id) = delivery
        .properties
        .correlation_id()
        .as_ref()
        .and_then(|id| id.as_str().parse::<u64>().ok())
    else {
        return;
    };
    let Some((answer, event_id)) = waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id)
    else {
        return;
    };
    let _ = answer.send(parse_answer(delivery, event_id));
}

/// The writer's answer: a `PublishResponse`, or the reason it refused the event.
fn parse_answer(
    delivery: &lapin::message::Delivery,
    event_id: String,
) -> Result<Published, WriteError> {
    if let Some(headers) = delivery.properties.headers()
        && let Some(detail) = crate::ingest::dead_letter::header_text(
            headers,
            crate::ingest::dead_letter::ERROR_DETAIL_HEADER,
        )
    {
        let reason = crate::ingest::dead_letter::header_text(
            headers,
            crate::ingest::dead_letter::ERROR_HEADER,
        );
        if reason == Some(b"conflicting_id".as_slice()) {
            // Not the writer's trouble: the caller's id names another event. Said as on one
            // node (ALREADY_EXISTS), not as a refusal worth retrying.
            return Err(WriteError::ConflictingId { id: event_id });
        }
        return Err(WriteError::cluster(ForwardError::Refused(
            String::from_utf8_lossy(detail).into_owned(),
        )));
    }
    let response = pb::PublishResponse::decode(delivery.data.as_slice())
        .map_err(|error| WriteError::cluster(ForwardError::Answer(error)))?;
    let cursor = Cursor::parse(&response.cursor)
        .map_err(|error| WriteError::cluster(ForwardError::Cursor(error)))?;
    Ok(Published {
        id: response.id,
        cursor,
        duplicate: response.duplicate,
    })
}
