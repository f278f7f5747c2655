//! What the broker holds under a cluster's names, read without writing anything: the line a
//! node logs when it joins the journal stream, and what `serve --check` reports before a node
//! is started, so an operator sees names that are in use already (another deployment's
//! journal, which a node would silently join) before it is too late.
//!
//! Owns: passive declarations of the stream and the ingest queue, reading the stream's epoch
//! and its first and last offsets, and the report's wording. Does not own: declaring, writing
//! or following the stream (`follower`, `writer`), or consuming the ingest queue (`ingest`).
//!
//! Over AMQP 0.9.1 a stream tells its message count (the broker's count, refreshed every few
//! seconds: a stream created a moment ago says 0) but neither its size in bytes nor its
//! offsets. The first offset is the first message's, read from `first`; the last is read off
//! the stream's last chunk, which a consumer from `last` gets at once, in one burst. Offsets
//! need not be contiguous (the broker's own entries take some: 300 messages in 4 KiB segments
//! reached offset 313), so the count is not last − first + 1.

use std::{
    fmt,
    time::{Duration, Instant},
};

use lapin::{
    Channel, Connection,
    options::{BasicAckOptions, BasicCancelOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use tokio_stream::StreamExt as _;

use super::{
    ClusterError,
    broker::{close, connect, consume_from, is_not_found, is_precondition_failed},
    stream::{self, QueueCounts, StreamSettings},
};

/// How long the stream's last chunk may take to start arriving (it is there at once: this
/// only bounds a broker that does not answer).
const LAST_CHUNK_WAIT: Duration = Duration::from_secs(2);
/// A pause this long after a delivery from `last` means the last chunk has been read.
const CHUNK_IDLE: Duration = Duration::from_millis(100);
/// How long the stream's first message may take to arrive in `serve --check`.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(2);
/// Messages read from `first` for one that states the epoch (the bootstraps that did not land
/// first state none; there are as many as nodes that started on the empty stream together).
const FIRST_MESSAGES_READ: usize = 64;

/// What a node learned of the stream when it joined it (`discover_epoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinedStream {
    /// The stream's epoch.
    pub epoch: u64,
    /// The offset of its first message.
    pub first_offset: u64,
    /// The offset of its last message when the node joined.
    pub last_offset: u64,
    /// The broker's count of its messages when the node declared it (refreshed by the broker
    /// every few seconds, so it can lag behind).
    pub messages: u32,
    /// The stream held nothing when the node came (it proposed the epoch): a new journal.
    pub was_empty: bool,
}

/// The journal stream as `serve --check` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFound {
    /// No queue of that name.
    Missing,
    /// A queue of that name declared with other arguments than this node's: a node started
    /// with this configuration stops at once ([`ClusterError::StreamConflict`]). Its broker's
    /// refusal, which names the argument.
    Conflicting(String),
    /// The stream, as this node would declare it.
    Stream {
        /// Its counts.
        counts: QueueCounts,
        /// What its messages say.
        content: StreamContent,
    },
}

/// What a stream's messages say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamContent {
    /// No message came in time: empty (or a broker too slow to tell).
    Empty,
    /// notify-backbone's journal.
    Journal {
        /// Its epoch.
        epoch: u64,
        /// The offset of its first message.
        first_offset: u64,
        /// The offset of its last message.
        last_offset: u64,
    },
    /// Its first message is not notify-backbone's: another application's stream.
    Foreign {
        /// The offset of that message.
        first_offset: u64,
    },
}

/// What `serve --check` found on the broker under the cluster's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerReport {
    /// The stream's name.
    pub stream: String,
    /// What is there.
    pub stream_found: StreamFound,
    /// The ingest queue's name.
    pub ingest_queue: String,
    /// Its counts; `None`: it does not exist.
    pub ingest_queue_found: Option<QueueCounts>,
}

impl BrokerReport {
    /// Whether a node started with these names joins what is there (rather than start a new
    /// journal).
    pub fn names_in_use(&self) -> bool {
        let stream_used = match &self.stream_found {
            StreamFound::Missing => false,
            StreamFound::Conflicting(_) => true,
            StreamFound::Stream { counts, content } => {
                counts.messages > 0 || counts.consumers > 0 || *content != StreamContent::Empty
            }
        };
        let queue_used = self
            .ingest_queue_found
            .is_some_and(|queue| queue.messages > 0 || queue.consumers > 0);
        stream_used || queue_used
    }
}

impl fmt::Display for BrokerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal stream {}: ", self.stream)?;
        match &self.stream_found {
            StreamFound::Missing => {
                write!(f, "does not exist (the first node started creates it)")?;
            }
            StreamFound::Conflicting(refusal) => write!(
                f,
                "exists with other arguments than these flags give it ({refusal})"
            )?,
            StreamFound::Stream { counts, content } => {
                write!(
                    f,
                    "exists, {} messages (the broker's count), {} consumers (nodes following it); ",
                    counts.messages, counts.consumers
                )?;
                match content {
                    StreamContent::Empty => write!(f, "empty")?,
                    StreamContent::Journal {
                        epoch,
                        first_offset,
                        last_offset,
                    } => write!(
                        f,
                        "epoch {epoch:016x}, offsets {first_offset} to {last_offset}"
                    )?,
                    StreamContent::Foreign { first_offset } => write!(
                        f,
                        "its message at offset {first_offset} is not notify-backbone's: another \
                         application's stream (a node started with these names stops)"
                    )?,
                }
            }
        }
        write!(f, "\ningest queue {}: ", self.ingest_queue)?;
        match self.ingest_queue_found {
            None => write!(f, "does not exist (the first node started creates it)")?,
            Some(queue) => write!(
                f,
                "exists, {} messages ready, {} consumers (nodes running on it)",
                queue.messages, queue.consumers
            )?,
        }
        if matches!(self.stream_found, StreamFound::Conflicting(_)) {
            write!(
                f,
                "\na node started with these flags stops: give it its own --stream, or flags \
                 that match the stream's"
            )?;
        } else if self.names_in_use() {
            write!(
                f,
                "\nthese names are in use: a node started with them joins that journal (if it is \
                 not this deployment's, give this one its own --stream and --ingest-queue)"
            )?;
        } else {
            write!(
                f,
                "\nthese names are not in use: a node started with them begins a new journal"
            )?;
        }
        Ok(())
    }
}

/// Reads what the broker at `url` holds under `settings`' stream and `ingest_queue`, writing
/// nothing: a passive declaration of each; for a stream that exists, a declaration with this
/// node's arguments (a no-op when they are the same, refused when they are not: nothing is
/// created, the stream is there), then its first and last messages.
pub async fn inspect(
    url: &str,
    node_id: &str,
    settings: &StreamSettings,
    ingest_queue: &str,
) -> Result<BrokerReport, ClusterError> {
    let connection = connect(url, format!("notify-backbone {node_id} check"))
        .await
        .map_err(ClusterError::Connect)?;
    let result = inspect_on(&connection, settings, ingest_queue).await;
    close(&connection, None, "checked").await;
    result
}

async fn inspect_on(
    connection: &Connection,
    settings: &StreamSettings,
    ingest_queue: &str,
) -> Result<BrokerReport, ClusterError> {
    let stream_found = match passive_counts(connection, &settings.name).await? {
        None => StreamFound::Missing,
        Some(_) => {
            let channel = connection
                .create_channel()
                .await
                .map_err(ClusterError::Broker)?;
            match settings.declare(&channel).await {
                Err(refusal) if is_precondition_failed(&refusal) => {
                    StreamFound::Conflicting(refusal.to_string())
                }
                Err(error) => return Err(ClusterError::Broker(error)),
                Ok(counts) => {
                    let content = read_content(&channel, &settings.name).await;
                    if channel.status().connected() {
                        let _ = channel.close(200, "checked".into()).await;
                    }
                    StreamFound::Stream {
                        counts,
                        content: content?,
                    }
                }
            }
        }
    };
    let ingest_queue_found = passive_counts(connection, ingest_queue).await?;
    Ok(BrokerReport {
        stream: settings.name.clone(),
        stream_found,
        ingest_queue: ingest_queue.to_owned(),
        ingest_queue_found,
    })
}

/// A passive declaration of `queue` on a channel of its own (a missing queue closes the
/// channel it is asked on); `None`: no such queue.
async fn passive_counts(
    connection: &Connection,
    queue: &str,
) -> Result<Option<QueueCounts>, ClusterError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(ClusterError::Broker)?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(queue) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(Some(QueueCounts {
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            }))
        }
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(ClusterError::Broker(error)),
    }
}

/// What the stream's messages say: its first message that states the epoch, and its last
/// offset.
async fn read_content(channel: &Channel, stream: &str) -> Result<StreamContent, ClusterError> {
    let from = AMQPValue::LongString(LongString::from("first"));
    let mut consumer = consume_from(channel, stream, from, "check-first")
        .await
        .map_err(ClusterError::Broker)?;
    let deadline = Instant::now() + FIRST_MESSAGE_WAIT;
    let mut first_offset = None;
    let mut epoch = None;
    for _ in 0..FIRST_MESSAGES_READ {
        let wait = deadline.saturating_duration_since(Instant::now());
        let delivery = match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(error))) => return Err(ClusterError::Broker(error)),
            Ok(None) => return Err(ClusterError::StreamGone),
            Err(_) => break,
        };
        let _ = channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await;
        match stream::parse(&delivery) {
            Ok(entry) => {
                first_offset.get_or_insert(entry.offset);
                if let Some(stated) = entry.stream_epoch() {
                    epoch = Some(stated);
                    break;
                }
            }
            Err(_) => {
                let offset = stream::offset(&delivery).unwrap_or_default();
                let _ = channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await;
                return Ok(StreamContent::Foreign {
                    first_offset: first_offset.unwrap_or(offset),
                });
            }
        }
    }
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let (Some(first_offset), Some(epoch)) = (first_offset, epoch) else {
        return Ok(StreamContent::Empty);
    };
    let last_offset = last_offset(channel, stream).await?.unwrap_or(first_offset);
    Ok(StreamContent::Journal {
        epoch,
        first_offset,
        last_offset,
    })
}

/// The offset of the stream's last message, read off its last chunk; `None`: nothing came in
/// time (an empty stream).
pub(super) async fn last_offset(
    channel: &Channel,
    stream: &str,
) -> Result<Option<u64>, ClusterError> {
    let from = AMQPValue::LongString(LongString::from("last"));
    let mut consumer = consume_from(channel, stream, from, "last")
        .await
        .map_err(ClusterError::Broker)?;
    // Bounded in time as a whole: on a stream written to meanwhile, chunks keep coming.
    let deadline = Instant::now() + LAST_CHUNK_WAIT;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if last.is_some() {
            CHUNK_IDLE.min(left)
        } else {
            left
        };
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                last = last.max(stream::offset(&delivery));
                let _ = channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await;
            }
            Ok(Some(Err(error))) => return Err(ClusterError::Broker(error)),
            Ok(None) => return Err(ClusterError::StreamGone),
            Err(_) => break,
        }
    }
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    Ok(last)
}
