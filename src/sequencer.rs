//! The single writer of one node: every ingest path (the `Publish` RPC and the AMQP ingest)
//! hands decoded events to the sequencer (through the [`Writer`] contract of [`crate::write`]),
//! which appends them to the journal in batches and then fans each new one out through the hub,
//! in journal order.
//!
//! Owns: the bounded submission queue (its overflow policy is backpressure: a full queue makes
//! submitters wait, it never drops), batching, the promise that the hub sees events in exactly
//! the order the journal stored them, and what is done with an event once a journal stored it
//! ([`fan_out_stored`], which cluster mode's follower calls too). Does not own: decoding, storage
//! details, routing, or the write contract itself (`write`).
//!
//! One writer keeps ordering trivial (no two fan-outs interleave) and lets the journal commit a
//! whole batch at once — the group commit the durable journal relies on. The app runs it on
//! the pipeline's thread ([`crate::pipeline`]) beside the AMQP ingest, so an event reaches the
//! journal and the hub without changing threads and the commit is a plain blocking call.
//!
//! Over 600 lines with its tests: the code is about 400, the rest are the tests of the ordering
//! and group-commit promises, which need the private batch loop at hand.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    hub::{Hub, Routed},
    inbox::Command,
    otel::EventTrace,
    pb, pipeline,
    schema::Decoded,
    store::{Appended, Journal, StoreError, Written},
    telemetry::Metrics,
    write::{Applying, InboxReply, Published, Receipt, Reply, Submitting, WriteError, Writer},
};
use std::sync::Arc;

/// The most events the sequencer takes from its queue for one journal append.
const MAX_BATCH: usize = 512;

/// From this many submissions a batch commits on a blocking thread while the sequencer fans
/// out the previous one: under load the commit and the fan-out then use both cores (at 15,000
/// events/s through `PublishStream` with the inbox on, one thread doing both left p99 at 52 ms
/// against 24 ms overlapped). Below it, as at the platform's rates, the commit is a plain call
/// on the pipeline's thread, which costs no hand-off.
const OVERLAP_FROM: usize = 32;

/// What waits in the sequencer's queue: an event, or an inbox command (a mark, preferences),
/// applied in the same batch and the same transaction as the events around it.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every submission is an event, which the queue held at this size before \
              inbox commands shared it: boxing it would allocate once per event to shrink the \
              rare command"
)]
enum Submission {
    Event(EventSubmission),
    Inbox { command: Command, reply: InboxReply },
}

struct EventSubmission {
    decoded: Decoded,
    published_at: Instant,
    /// The event's trace, when it is sampled: its journal and fan-out spans go there.
    trace: Option<EventTrace>,
    reply: Reply,
}

/// How the sequencer queues and commits.
#[derive(Debug, Clone, Copy)]
pub struct SequencerSettings {
    /// Submissions waiting for the sequencer (`--publish-queue-len`): when full, submitters
    /// wait.
    pub queue_len: usize,
    /// Group commit (`--commit-delay`): how long an event that finds the writer idle waits
    /// for others to share its commit.
    pub commit_delay: Duration,
}

/// Submits events to the sequencer; cheap to clone.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Submission>,
}

impl Sequencer {
    /// Starts the sequencer task on the current runtime (the app's is the pipeline's: the task
    /// blocks its thread while it commits). `queue_len` bounds the submissions waiting for it; when full,
    /// submitting waits (backpressure to the ingest). The task ends when `shutdown` is
    /// cancelled (after finishing what is queued) or when every `Sequencer` is dropped.
    pub fn spawn(
        journal: impl Journal,
        hub: Hub,
        metrics: Arc<Metrics>,
        settings: SequencerSettings,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue_len.max(1));
        let task = tokio::spawn(run(
            journal,
            hub,
            metrics,
            rx,
            settings.commit_delay,
            shutdown,
        ));
        (Self { tx }, task)
    }

    /// Queues one decoded event (and its admin notice) without waiting for its outcome: the
    /// returned [`Receipt`] resolves once the event is stored and routed to its subscribers'
    /// queues. Waits only while the queue is full (backpressure). Receipts resolve in
    /// submission order, so an ingest can keep many events in flight and still acknowledge them
    /// in order. A sampled event's journal append and fan-out are recorded as spans in `trace`.
    async fn queue(
        &self,
        decoded: Decoded,
        trace: Option<EventTrace>,
    ) -> Result<Receipt, WriteError> {
        let (reply, response) = Receipt::new();
        let submission = Submission::Event(EventSubmission {
            decoded,
            published_at: Instant::now(),
            trace,
            reply,
        });
        self.tx
            .send(submission)
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(response)
    }
}

impl Writer for Sequencer {
    fn submit_traced(&self, decoded: Decoded, trace: Option<EventTrace>) -> Submitting<'_> {
        Box::pin(self.queue(decoded, trace))
    }

    fn submit_inbox(&self, command: Command) -> Applying<'_> {
        Box::pin(async move {
            let (reply, applied) = oneshot::channel();
            self.tx
                .send(Submission::Inbox { command, reply })
                .await
                .map_err(|_| WriteError::Stopped)?;
            applied.await.unwrap_or(Err(WriteError::Stopped))
        })
    }
}

async fn run<J: Journal>(
    journal: J,
    hub: Hub,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Submission>,
    commit_delay: Duration,
    shutdown: CancellationToken,
) {
    let mut journal = Some(journal);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut draining = false;
    // A large batch committing on a blocking thread, while this one fans out the one before.
    let mut committing: Option<tokio::task::JoinHandle<(J, Committed)>> = None;
    loop {
        if committing.is_none() {
            // Whatever is queued, up to a batch; waits only when nothing is.
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
        }
        let previous = match committing.take() {
            Some(task) => match task.await {
                Ok((writer, done)) => {
                    journal = Some(writer);
                    Some(done)
                }
                Err(error) => {
                    // The batch's submitters get `Stopped` (their reply senders are dropped).
                    error!(%error, "the journal append task failed; the sequencer stops");
                    return;
                }
            },
            None => None,
        };
        // What arrived meanwhile joins the batch.
        while batch.len() < MAX_BATCH {
            let Ok(submission) = rx.try_recv() else { break };
            batch.push(submission);
        }
        let Some(mut writer) = journal.take() else {
            return;
        };
        let started = Instant::now();
        if batch.len() >= OVERLAP_FROM {
            // Under load: the commit goes to a blocking thread, and this thread fans out the
            // previous batch meanwhile (journal order holds: that one was stored first).
            let mut taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            committing = Some(tokio::task::spawn_blocking(move || {
                let done = commit_batch(&mut writer, &mut taken);
                (writer, done)
            }));
            if let Some(done) = previous {
                done.deliver(&hub, &metrics);
            }
            continue;
        }
        if let Some(done) = previous {
            done.deliver(&hub, &metrics);
        }
        if !batch.is_empty() {
            // The commit is a plain call: on the pipeline's thread nothing else needs the
            // thread while it waits for the disk, and what arrives meanwhile becomes the next
            // batch.
            commit_batch(&mut writer, &mut batch).deliver(&hub, &metrics);
        }
        journal = Some(writer);
        // Group commit: at most one commit per `--commit-delay`. The first event after a quiet
        // spell is committed at once; the ones arriving within the delay after it wait for the
        // rest of it and share the next commit. Each commit costs an fsync and wakes the
        // subscribers' threads, so at the platform's rates (an event every half millisecond)
        // sharing it is what keeps the CPU per event down. Under load a commit takes longer
        // than the delay and this waits for nothing.
        if !draining {
            pipeline::pause(commit_delay.saturating_sub(started.elapsed())).await;
        }
    }
    // The loop ends only from its first branch, with no commit in flight.
    debug!("sequencer stopped");
}

/// A batch the journal has answered for, to be fanned out and acknowledged.
struct Committed {
    events: Vec<pb::Event>,
    /// Per inbox command: where to answer.
    inbox_replies: Vec<InboxReply>,
    /// Per submission: where to answer, when it was published, whether an admin notice follows.
    replies: Vec<(Reply, Instant, bool)>,
    /// Per submission: its trace, if sampled (empty if none is, the common case).
    traces: Vec<Option<EventTrace>>,
    /// When the commit started and ended, for the traces' journal spans.
    commit_times: (SystemTime, SystemTime),
    result: Result<Written, StoreError>,
}

/// Appends a batch in one commit; blocks until the journal has answered (it waits for the
/// disk).
fn commit_batch<J: Journal>(journal: &mut J, batch: &mut Vec<Submission>) -> Committed {
    // Each submission is its event followed by its admin notice, if any.
    let mut events = Vec::with_capacity(batch.len() * 2);
    let mut replies = Vec::with_capacity(batch.len());
    let mut traces = Vec::new();
    let mut commands = Vec::new();
    let mut inbox_replies = Vec::new();
    let submissions = batch.len();
    let mut n = 0;
    for submission in batch.drain(..) {
        let EventSubmission {
            decoded,
            published_at,
            trace,
            reply,
        } = match submission {
            Submission::Event(event) => event,
            Submission::Inbox { command, reply } => {
                commands.push(command);
                inbox_replies.push(reply);
                continue;
            }
        };
        let has_notice = decoded.admin_notice.is_some();
        events.push(decoded.event);
        events.extend(decoded.admin_notice);
        replies.push((reply, published_at, has_notice));
        if trace.is_some() {
            // Allocated only when some event of the batch is sampled.
            traces.resize(submissions, None);
            traces[n] = trace;
        }
        n += 1;
    }
    let started = if traces.is_empty() {
        SystemTime::UNIX_EPOCH
    } else {
        SystemTime::now()
    };
    // The commands are applied after the batch's events, in the same transaction.
    let result = journal.write(&mut events, &commands);
    let ended = if traces.is_empty() {
        started
    } else {
        SystemTime::now()
    };
    Committed {
        events,
        inbox_replies,
        replies,
        traces,
        commit_times: (started, ended),
        result,
    }
}

impl Committed {
    /// Fans out the new events in journal order, then answers every submitter; the streams it
    /// pushes to are woken once, together, when it is done (see `hub::with_batched_wakes`).
    fn deliver(self, hub: &Hub, metrics: &Metrics) {
        crate::hub::with_batched_wakes(|| self.deliver_now(hub, metrics));
    }

    fn deliver_now(self, hub: &Hub, metrics: &Metrics) {
        let Self {
            events,
            inbox_replies,
            replies,
            mut traces,
            commit_times: (started, ended),
            result,
        } = self;
        let batch = events.len();
        let written = match result {
            Ok(written) => written,
            Err(error) => {
                if error.is_health_refusal() {
                    // The journal's health reports these once per change, not once per batch.
                    debug!(%error, events = events.len(), "journal append refused");
                } else {
                    warn!(%error, events = events.len(), "journal append failed");
                }
                let message = error.to_string();
                for trace in traces.iter().flatten() {
                    trace.journal_failed(started, ended, &message);
                }
                for (reply, _, _) in replies {
                    let _ = reply.send(Err(error.clone().into()));
                }
                for reply in inbox_replies {
                    let _ = reply.send(Err(error.clone().into()));
                }
                return;
            }
        };
        let Written {
            appended: outcomes,
            muted,
            applied,
            updates,
        } = written;
        let mut stored = events.into_iter().zip(outcomes);
        for (n, (reply, published_at, has_notice)) in replies.into_iter().enumerate() {
            let trace = traces.get_mut(n).and_then(Option::take);
            let Some((event, appended)) = stored.next() else {
                let _ = reply.send(Err(StoreError::Unavailable(
                    "journal returned too few outcomes".into(),
                )
                .into()));
                continue;
            };
            let notice = if has_notice { stored.next() } else { None };
            if let Some(trace) = &trace {
                trace.journaled(started, ended, batch, appended.duplicate);
            }
            if appended.conflict {
                conflicting_id(metrics, &event);
                let _ = reply.send(Err(WriteError::ConflictingId { id: event.id }));
                continue;
            }
            if appended.duplicate {
                metrics.duplicates.inc();
            } else {
                deliver(
                    hub,
                    metrics,
                    &event,
                    &appended,
                    (published_at, &muted),
                    trace.as_ref(),
                );
            }
            if let Some((notice, notice_appended)) = notice
                && !notice_appended.duplicate
            {
                deliver(
                    hub,
                    metrics,
                    &notice,
                    &notice_appended,
                    (published_at, &muted),
                    None,
                );
            }
            let _ = reply.send(Ok(Published {
                id: event.id,
                cursor: appended.cursor,
                duplicate: appended.duplicate,
            }));
        }
        // After the batch's events: an update about a new item follows the item on the
        // owner's streams.
        for update in &updates {
            hub.inbox_update(update);
        }
        let mut applied = applied.into_iter();
        for reply in inbox_replies {
            let _ = reply.send(applied.next().ok_or_else(|| {
                StoreError::Unavailable("journal returned too few outcomes".into()).into()
            }));
        }
    }
}

/// Counts and logs (rate-limited: a producer decides how many) an event refused because its id
/// names another stored event.
pub(crate) fn conflicting_id(metrics: &Metrics, event: &pb::Event) {
    metrics.conflicting_ids.inc();
    if crate::telemetry::WARNINGS.admit("conflicting event id") {
        warn!(
            id = %event.id,
            r#type = %event.r#type,
            user = %event.user_id,
            "an event reuses the id of a different stored event; refused (not stored)"
        );
    }
}

/// Counts a newly stored event and fans it out with the frame the journal stored.
fn deliver(
    hub: &Hub,
    metrics: &Metrics,
    event: &pb::Event,
    appended: &Appended,
    (published_at, muted): (Instant, &[u64]),
    trace: Option<&EventTrace>,
) {
    let Some(frame) = &appended.frame else {
        return;
    };
    let position = appended.cursor.position;
    fan_out_stored(
        hub,
        metrics,
        event,
        Stored {
            frame: frame.clone(),
            position,
            muted: muted.contains(&position),
        },
        published_at,
        trace,
    );
}

/// An event as a journal stored it: its frame, its position, and whether its type is one the
/// user it is about disabled (not pushed live on that user's own streams).
pub(crate) struct Stored {
    pub(crate) frame: bytes::Bytes,
    pub(crate) position: u64,
    pub(crate) muted: bool,
}

/// What every node does with an event once its journal (or its replica of the cluster's)
/// stored it: count it and hand it to the hub with the frame the journal stored, at its
/// position; with a sampled trace, record the fan-out span. The sequencer and cluster mode's
/// follower both call it, so an event is counted and routed the same way on either.
pub(crate) fn fan_out_stored(
    hub: &Hub,
    metrics: &Metrics,
    event: &pb::Event,
    stored: Stored,
    published_at: Instant,
    trace: Option<&EventTrace>,
) {
    metrics.record_event_in(&event.r#type);
    let started = trace.map(|_| SystemTime::now());
    let subscribers = hub.fan_out(Routed {
        event,
        frame: stored.frame,
        position: stored.position,
        published_at,
        trace: trace.cloned(),
        muted: stored.muted,
    });
    if let (Some(trace), Some(started)) = (trace, started) {
        trace.fanned_out(started, SystemTime::now(), subscribers);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use prost::Message;
    use tokio_stream::Stream;

    use super::*;
    use crate::{
        auth::Viewer,
        hub::{Filter, FilterSettings, HubSettings, Users},
        pb::subscribe_response::Kind,
        store::{Cursor, EventMeta, JournalReader, Scan, ScanLimits, StoredEvent},
        write,
    };

    const EPOCH: u64 = 5;

    /// An in-memory journal that records each batch and fails the batch numbered `fail_batch`.
    struct TestJournal {
        stored: Arc<Mutex<Vec<StoredEvent>>>,
        batches: Arc<Mutex<Vec<usize>>>,
        fail_batch: usize,
        head: u64,
    }

    struct TestReader(Arc<Mutex<Vec<StoredEvent>>>);

    impl JournalReader for TestReader {
        fn floor(&self) -> Result<u64, StoreError> {
            Ok(0)
        }

        fn scan(
            &self,
            after: u64,
            limits: ScanLimits,
            select: &dyn Fn(EventMeta<'_>) -> bool,
        ) -> Result<Scan, StoreError> {
            let stored = self.0.lock().unwrap();
            Ok(crate::store::scan_slice(
                stored.iter(),
                0,
                after,
                limits,
                select,
            ))
        }

        fn scan_back(
            &self,
            before: u64,
            limits: crate::store::BackLimits,
            select: &dyn Fn(EventMeta<'_>) -> bool,
        ) -> Result<crate::store::BackScan, StoreError> {
            let stored = self.0.lock().unwrap();
            Ok(crate::store::scan_slice_back(
                stored.iter(),
                0,
                before,
                limits,
                select,
            ))
        }
    }

    impl Journal for TestJournal {
        fn append(&mut self, events: &mut [pb::Event]) -> Result<Vec<Appended>, StoreError> {
            let mut batches = self.batches.lock().unwrap();
            batches.push(events.len());
            if batches.len() == self.fail_batch {
                return Err(StoreError::Unavailable("disk full".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            let mut out = Vec::new();
            for event in events.iter_mut() {
                self.head += 1;
                let cursor = Cursor {
                    epoch: EPOCH,
                    position: self.head,
                };
                event.cursor = cursor.to_string();
                let frame = crate::store::encode_event_frame(event);
                stored.push(StoredEvent {
                    position: self.head,
                    event_type: event.r#type.as_str().into(),
                    user_id: event.user_id.as_str().into(),
                    device_id: event.device_id.as_str().into(),
                    frame: frame.clone(),
                });
                out.push(Appended {
                    cursor,
                    duplicate: false,
                    conflict: false,
                    frame: Some(frame),
                });
            }
            Ok(out)
        }

        fn head(&self) -> Cursor {
            Cursor {
                epoch: EPOCH,
                position: self.head,
            }
        }

        fn reader(&self) -> Arc<dyn JournalReader> {
            Arc::new(TestReader(Arc::clone(&self.stored)))
        }
    }

    fn decoded(id: String) -> Decoded {
        Decoded {
            event: pb::Event {
                id,
                r#type: "device.error".into(),
                user_id: "u1".into(),
                ..Default::default()
            },
            admin_notice: None,
        }
    }

    /// A sequencer on a journal that records its batches' sizes.
    fn sequencer_with_delay(commit_delay: Duration) -> (Sequencer, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let journal = TestJournal {
            stored: Arc::default(),
            batches: Arc::clone(&batches),
            fail_batch: usize::MAX,
            head: 0,
        };
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            HubSettings {
                queue_len: 16,
                replay_readers: 1,
                heartbeat_interval: Duration::from_secs(15),
                notice_coalesce_window: std::time::Duration::from_secs(2),
            },
            journal.head(),
            Arc::clone(&metrics),
            journal.reader(),
            crate::otel::Tracing::off(),
        );
        let settings = SequencerSettings {
            queue_len: 64,
            commit_delay,
        };
        let (sequencer, _task) =
            Sequencer::spawn(journal, hub, metrics, settings, CancellationToken::new());
        (sequencer, batches)
    }

    /// Group commit: an event that finds the writer idle is committed at once; the ones that
    /// arrive within `--commit-delay` after that commit wait for the rest of the delay and
    /// share the next one; one that comes after the delay is committed at once again.
    #[tokio::test(start_paused = true)]
    async fn events_within_the_commit_delay_share_one_commit() {
        let (sequencer, batches) = sequencer_with_delay(Duration::from_millis(2));
        let started = tokio::time::Instant::now();
        let first = sequencer.submit(decoded("a".into())).await.unwrap();
        assert_eq!(first.await.unwrap().cursor.position, 1);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the first waits for nothing"
        );
        let second = sequencer.submit(decoded("b".into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let third = sequencer.submit(decoded("c".into())).await.unwrap();
        assert_eq!(second.await.unwrap().cursor.position, 2);
        assert_eq!(third.await.unwrap().cursor.position, 3);
        assert_eq!(started.elapsed(), Duration::from_millis(2));
        assert_eq!(*batches.lock().unwrap(), [1, 2]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let late = tokio::time::Instant::now();
        write::publish(&sequencer, decoded("d".into()), None)
            .await
            .unwrap();
        assert_eq!(late.elapsed(), Duration::ZERO);
        assert_eq!(*batches.lock().unwrap(), [1, 2, 1]);
    }

    /// Without a delay, an event that finds the writer idle is committed at once, alone.
    #[tokio::test(start_paused = true)]
    async fn no_commit_delay_commits_each_event_at_once() {
        let (sequencer, batches) = sequencer_with_delay(Duration::ZERO);
        let first = sequencer.submit(decoded("a".into())).await.unwrap();
        first.await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        write::publish(&sequencer, decoded("b".into()), None)
            .await
            .unwrap();
        assert_eq!(*batches.lock().unwrap(), [1, 1]);
    }

    /// Many concurrent submitters, several batches, one of which the journal fails:
    /// the hub must see exactly the stored events, in journal order, and every submitter must
    /// get its own outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_follows_the_journal_and_every_submitter_gets_its_outcome() {
        let stored = Arc::new(Mutex::new(Vec::new()));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let journal = TestJournal {
            stored: Arc::clone(&stored),
            batches: Arc::clone(&batches),
            fail_batch: 3,
            head: 0,
        };
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            HubSettings {
                queue_len: 10_000,
                replay_readers: 1,
                heartbeat_interval: std::time::Duration::from_secs(15),
                notice_coalesce_window: std::time::Duration::from_secs(2),
            },
            journal.head(),
            Arc::clone(&metrics),
            journal.reader(),
            crate::otel::Tracing::off(),
        );
        let filter = Filter::new(Users::All, false, &[], "", FilterSettings::default()).unwrap();
        let mut firehose = hub.subscribe(filter, Viewer::Admin, None).unwrap();
        let shutdown = CancellationToken::new();
        let settings = SequencerSettings {
            queue_len: 64,
            commit_delay: Duration::ZERO,
        };
        let (sequencer, task) = Sequencer::spawn(journal, hub, metrics, settings, shutdown.clone());

        let mut submitters = Vec::new();
        for t in 0..8 {
            let sequencer = sequencer.clone();
            submitters.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..250 {
                    let id = format!("t{t}-{i}");
                    let outcome = write::publish(&sequencer, decoded(id.clone()), None).await;
                    outcomes.push((id, outcome.map(|p| (p.id, p.cursor))));
                }
                outcomes
            }));
        }
        let mut ok = std::collections::HashMap::new();
        let mut failed = 0;
        for submitter in submitters {
            for (id, outcome) in submitter.await.unwrap() {
                match outcome {
                    Ok((reply_id, cursor)) => {
                        assert_eq!(reply_id, id);
                        ok.insert(id, cursor.position);
                    }
                    Err(WriteError::Journal(_)) => failed += 1,
                    Err(other) => panic!("unexpected {other}"),
                }
            }
        }
        assert!(batches.lock().unwrap().len() > 3, "several batches");
        assert!(failed > 0, "the failed batch's submitters were told");
        assert_eq!(ok.len() + failed, 2000);

        // Everything answered was fanned out first: the firehose holds exactly the journal.
        let mut cx = Context::from_waker(Waker::noop());
        let mut delivered = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut firehose).poll_next(&mut cx) {
            match pb::SubscribeResponse::decode(frame.bytes).unwrap().kind {
                Some(Kind::Event(event)) => {
                    let cursor = Cursor::parse(&event.cursor).unwrap();
                    assert_eq!(ok.get(&event.id), Some(&cursor.position), "{}", event.id);
                    delivered.push(cursor.position);
                }
                Some(Kind::CaughtUp(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let journal_order: Vec<u64> = stored.lock().unwrap().iter().map(|e| e.position).collect();
        assert_eq!(delivered, journal_order);
        assert_eq!(delivered.len(), ok.len());

        shutdown.cancel();
        task.await.unwrap();
    }
}
