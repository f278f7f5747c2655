//! `Publish` on any node of a cluster: the validated event goes to the shared ingest queue, so
//! the one writer appends it like any producer's event, and the writer's answer (id, cursor,
//! duplicate) comes back through RabbitMQ's direct reply-to. Inbox commands (marks,
//! preferences) take the same way; once the writer says a command is in the journal stream, the
//! call waits for this node's replica to apply it, and answers with that outcome.
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

use super::{
    broker::{close, connect},
    follower::InboxWaiters,
};
use crate::{
    inbox::{Applied, Command},
    ingest,
    otel::EventTrace,
    pb,
    schema::Decoded,
    store::{Cursor, CursorError},
    write::{Applying, Published, Receipt, Reply, Submitting, WriteError, Writer},
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
    /// The writer appended the inbox command, but this node's replica did not apply it in time
    /// (its follower is behind or reconnecting).
    #[error("the inbox command is in the journal stream but this node has not read it back yet")]
    NotApplied,
}

/// Where the writer's answer to an inbox command goes: `Ok` once it is in the journal stream.
type CommandAnswer = tokio::sync::oneshot::Sender<Result<(), WriteError>>;

// Events are the hot path: boxing the large variant would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Call {
    Publish {
        event: pb::Event,
        answer: Reply,
    },
    Inbox {
        id: String,
        command: Command,
        answer: CommandAnswer,
    },
}

/// A forwarded call waiting for the writer's answer.
enum Waiting {
    /// A `Publish`, with its event's id.
    Publish(Reply, String),
    /// An inbox command.
    Inbox(CommandAnswer),
}

impl Waiting {
    fn is_closed(&self) -> bool {
        match self {
            Waiting::Publish(answer, _) => answer.is_closed(),
            Waiting::Inbox(answer) => answer.is_closed(),
        }
    }

    fn fail(self, error: WriteError) {
        match self {
            Waiting::Publish(answer, _) => {
                let _ = answer.send(Err(error));
            }
            Waiting::Inbox(answer) => {
                let _ = answer.send(Err(error));
            }
        }
    }
}

/// How long an inbox command appended by the writer may take to be applied by this node's
/// replica before the call fails (a retry of a mark changes nothing more).
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Forwards `Publish` calls and inbox commands to the writer; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Call>,
    /// Where this node's follower tells the outcome of an applied command.
    applied: InboxWaiters,
    /// Names this node's commands.
    node_id: String,
}

impl Forwarder {
    /// Starts the forwarding task on its own connection, until `shutdown`.
    pub fn spawn(
        url: String,
        node_id: String,
        ingest_queue: String,
        applied: InboxWaiters,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let task = tokio::spawn(run(url, node_id.clone(), ingest_queue, rx, shutdown));
        (
            Self {
                tx,
                applied,
                node_id,
            },
            task,
        )
    }

    /// Queues one decoded event for the writer without waiting for its answer. Calls are
    /// forwarded in the order they were queued, so one caller's events keep their order. The
    /// writer derives the admin notice again from the event.
    async fn queue(&self, decoded: Decoded) -> Result<Receipt, WriteError> {
        let (answer, receipt) = Receipt::new();
        self.tx
            .send(Call::Publish {
                event: decoded.event,
                answer,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(receipt)
    }

    /// Sends an inbox command to the writer and waits until this node's replica applied it:
    /// the outcome (a mark's counts) is this node's, so the caller reads its own write here.
    async fn command(&self, command: Command) -> Result<Applied, WriteError> {
        let id = format!("inbox-{}-{:016x}", self.node_id, rand::random::<u64>());
        // Registered before the command goes out: the follower may apply it before the
        // writer's answer arrives.
        let applied = self.applied.wait(&id);
        let (answer, stored) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .send(Call::Inbox {
                id: id.clone(),
                command,
                answer,
            })
            .await;
        let outcome = match sent {
            Err(_) => Err(WriteError::Stopped),
            Ok(()) => match stored.await.unwrap_or(Err(WriteError::Stopped)) {
                Err(error) => Err(error),
                Ok(()) => match tokio::time::timeout(APPLY_TIMEOUT, applied).await {
                    Ok(Ok(applied)) => return Ok(applied),
                    Ok(Err(_)) => Err(WriteError::Stopped),
                    Err(_) => Err(WriteError::cluster(ForwardError::NotApplied)),
                },
            },
        };
        self.applied.forget(&id);
        outcome
    }
}

/// `Publish` on any node of a cluster. The event is journaled by the writer node, which records
/// no spans of its own for it yet: a sampled event's trace ends here.
impl Writer for Forwarder {
    fn submit_traced(&self, decoded: Decoded, _trace: Option<EventTrace>) -> Submitting<'_> {
        Box::pin(self.queue(decoded))
    }

    fn submit_inbox(&self, command: Command) -> Applying<'_> {
        Box::pin(self.command(command))
    }
}

/// Calls waiting for the writer's answer, by correlation id.
type WaitingCalls = Arc<Mutex<HashMap<u64, Waiting>>>;

async fn run(
    url: String,
    node_id: String,
    ingest_queue: String,
    mut rx: mpsc::Receiver<Call>,
    shutdown: CancellationToken,
) {
    let waiting: WaitingCalls = Arc::default();
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
        for (_, call) in waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            call.fail(WriteError::cluster(ForwardError::ConnectionLost));
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
    waiting: &'a WaitingCalls,
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
    waiting: &WaitingCalls,
) -> lapin::Result<impl Future<Output = ()> + Send + 'static> {
    let base = BasicProperties::default()
        .with_content_type(ingest::FORWARDED_CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_correlation_id(ShortString::from(id.to_string()));
    let (body, properties, call) = match call {
        Call::Publish { event, answer } => (
            event.encode_to_vec(),
            base.with_type(ingest::FORWARDED_TYPE.into()),
            Waiting::Publish(answer, event.id),
        ),
        Call::Inbox {
            id: name,
            command,
            answer,
        } => (
            command.encode(),
            base.with_type(ingest::FORWARDED_INBOX_TYPE.into())
                .with_message_id(ShortString::from(name)),
            Waiting::Inbox(answer),
        ),
    };
    {
        let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() > PRUNE_ABOVE {
            waiting.retain(|_, call| !call.is_closed());
        }
        waiting.insert(id, call);
    }
    let confirm = channel
        .basic_publish(
            "".into(),
            ingest_queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
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
        if let Some(call) = answer {
            call.fail(WriteError::cluster(refused));
        }
    })
}

/// Hands the writer's answer to the call it belongs to.
fn answer(delivery: &lapin::message::Delivery, waiting: &WaitingCalls) {
    let Some(id) = delivery
        .properties
        .correlation_id()
        .as_ref()
        .and_then(|id| id.as_str().parse::<u64>().ok())
    else {
        return;
    };
    let Some(call) = waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id)
    else {
        return;
    };
    match call {
        Waiting::Publish(answer, event_id) => {
            let _ = answer.send(parse_answer(delivery, event_id));
        }
        Waiting::Inbox(answer) => {
            let refused = refusal(delivery)
                .map(|(_, detail)| WriteError::cluster(ForwardError::Refused(detail)));
            let _ = answer.send(refused.map_or(Ok(()), Err));
        }
    }
}

/// The writer's refusal in an answer's headers: its reason and detail.
fn refusal(delivery: &lapin::message::Delivery) -> Option<(Option<Vec<u8>>, String)> {
    let headers = delivery.properties.headers().as_ref()?;
    let detail = crate::ingest::dead_letter::header_text(
        headers,
        crate::ingest::dead_letter::ERROR_DETAIL_HEADER,
    )?;
    let reason =
        crate::ingest::dead_letter::header_text(headers, crate::ingest::dead_letter::ERROR_HEADER)
            .map(<[u8]>::to_vec);
    Some((reason, String::from_utf8_lossy(detail).into_owned()))
}

/// The writer's answer: a `PublishResponse`, or the reason it refused the event.
fn parse_answer(
    delivery: &lapin::message::Delivery,
    event_id: String,
) -> Result<Published, WriteError> {
    if let Some((reason, detail)) = refusal(delivery) {
        if reason.as_deref() == Some(b"conflicting_id".as_slice()) {
            // Not the writer's trouble: the caller's id names another event. Said as on one
            // node (ALREADY_EXISTS), not as a refusal worth retrying.
            return Err(WriteError::ConflictingId { id: event_id });
        }
        return Err(WriteError::cluster(ForwardError::Refused(detail)));
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
