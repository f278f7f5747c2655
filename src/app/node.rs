//! The stages between the ingest and the hub, as the journal kind wants them: one node (the
//! sequencer writes the journal) or a cluster node (the stream is the journal; this node
//! follows it, writes it while it is the shared queue's active consumer, and forwards
//! `Publish` to whichever node that is).
//!
//! Owns: which stages run and how they are connected; all of them run on the pipeline's thread
//! ([`crate::pipeline`]). Does not own: the hub (built once by
//! `run`, on the journal as it is after [`join_cluster`]), the background tasks and health
//! (`background`, `health`), nor the order of shutdown (`shutdown`).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::supervise::{Stopped, supervise};
use crate::{
    cluster::{self, FollowState},
    config::ServeConfig,
    hub::Hub,
    ingest::{Ingest, topology},
    otel::Tracing,
    pipeline::Pipeline,
    sequencer::Sequencer,
    store::RedbJournal,
    telemetry::Metrics,
    write::Writer,
};

/// The journal a node starts on, and in cluster mode the stream it joined.
pub(super) enum Node {
    /// One node: the journal is the file.
    Single(RedbJournal),
    /// Cluster mode: the file is a replica of the stream.
    Cluster(Joined),
}

impl Node {
    /// The journal (or replica) the hub reads.
    pub(super) fn journal(&self) -> &RedbJournal {
        match self {
            Self::Single(journal) => journal,
            Self::Cluster(joined) => &joined.journal,
        }
    }
}

/// A cluster node's replica, once it took the journal stream's epoch, and what it joined.
pub(super) struct Joined {
    /// The replica, of the stream's epoch.
    journal: RedbJournal,
    /// The broker (`--amqp-url`).
    url: String,
    /// This node's id.
    node_id: String,
    /// The stream as declared.
    settings: cluster::StreamSettings,
    /// The stream's epoch.
    epoch: u64,
}

/// What the stages of either kind of node are started with: [`Wiring::single_node`] or
/// [`Wiring::cluster_node`] starts them.
pub(super) struct Wiring<'a> {
    /// The server's configuration.
    pub(super) config: &'a ServeConfig,
    /// The node's hub.
    pub(super) hub: &'a Hub,
    /// The metrics every stage records.
    pub(super) metrics: &'a Arc<Metrics>,
    /// Tracing, on or off.
    pub(super) tracing: &'a Tracing,
    /// The server's shutdown.
    pub(super) shutdown: &'a CancellationToken,
    /// The journal's writer's own stop, after the gRPC server's drain.
    pub(super) writer_stop: &'a CancellationToken,
    /// The event path's thread: every stage below is spawned there.
    pub(super) pipeline: &'a Pipeline,
}

/// The stages between the ingest and the hub, as the journal kind wants them.
pub(super) struct Core {
    /// Where `Publish` hands events.
    pub(super) publisher: Arc<dyn Writer>,
    /// The AMQP ingest, if any.
    pub(super) ingest: Option<Ingest>,
    /// Cluster mode: whether the node reads the journal stream.
    pub(super) journal_state: Option<watch::Receiver<FollowState>>,
    /// The supervised task that keeps the journal going (the sequencer, or the stream's
    /// follower); resolves to why it failed, if it did.
    pub(super) writer: tokio::task::JoinHandle<Option<Stopped>>,
    /// Background tasks to join at shutdown.
    pub(super) tasks: JoinSet<()>,
}

/// Cluster mode, before the hub: learn the stream's epoch and make the replica take it (a
/// replica of another epoch, or a new one, is filled from the stream).
pub(super) async fn join_cluster(
    config: &ServeConfig,
    mut journal: RedbJournal,
    shutdown: &CancellationToken,
) -> anyhow::Result<Joined> {
    let url = config
        .amqp
        .amqp_url
        .clone()
        .context("--journal rabbitmq-stream needs --amqp-url (AMQP_URL)")?;
    let node_id = config.amqp.node_id();
    let settings = config.cluster.stream_settings(&config.journal);
    info!(
        stream = %settings.name,
        broker = %crate::ingest::redacted(&url),
        "cluster mode: learning the journal stream's epoch"
    );
    let joined = cluster::discover_epoch(&url, &node_id, &settings, &journal, shutdown)
        .await
        .context("cluster mode: the journal stream")?;
    let epoch = joined.epoch;
    // Which journal this node joins, so one started on names another deployment uses says so.
    info!(
        stream = %settings.name,
        epoch = %format!("{epoch:016x}"),
        first_offset = joined.first_offset,
        last_offset = joined.last_offset,
        broker_message_count = joined.messages,
        "cluster mode: {}",
        if joined.was_empty {
            "the journal stream was empty: a new journal begins"
        } else {
            "joining the journal the stream holds (this cluster's, or another deployment's if \
             the names are shared by mistake: `serve --check` shows what they hold)"
        }
    );
    if journal.adopt_epoch(epoch)? {
        info!(
            epoch = %format!("{epoch:016x}"),
            "cluster mode: the replica was new or of another epoch; it is filled from the stream"
        );
    }
    Ok(Joined {
        journal,
        url,
        node_id,
        settings,
        epoch,
    })
}

impl Wiring<'_> {
    /// One node: the sequencer journals and fans out; the ingest (with `--amqp-url`) consumes
    /// this node's own queue.
    pub(super) fn single_node(self, journal: RedbJournal) -> Core {
        // The sequencer, the ingest and their AMQP connections run on the pipeline's thread.
        let _on_pipeline = self.pipeline.enter();
        let (sequencer, task) = Sequencer::spawn(
            journal,
            self.hub.clone(),
            self.metrics.clone(),
            self.config.sequencer_settings(),
            self.writer_stop.clone(),
        );
        let writer = supervise(
            "the sequencer",
            task,
            |()| None,
            self.writer_stop.clone(),
            self.shutdown.clone(),
        );
        let ingest = self.config.amqp.amqp_url.as_ref().map(|url| {
            Ingest::spawn(
                self.config.ingest_settings(url, self.tracing),
                sequencer.clone(),
                self.metrics.clone(),
                self.shutdown.clone(),
            )
        });
        let tasks = JoinSet::new();
        Core {
            publisher: Arc::new(sequencer),
            ingest,
            journal_state: None,
            writer,
            tasks,
        }
    }

    /// Cluster mode, once [`join_cluster`] joined the stream: follow the stream into the
    /// replica and the hub, write it when this node is the shared ingest queue's active
    /// consumer, and forward `Publish` to whichever node that is.
    pub(super) fn cluster_node(self, joined: Joined) -> Core {
        let Joined {
            journal,
            url,
            node_id,
            settings,
            epoch,
        } = joined;
        // The follower, the writer, the ingest, the forwarder and their AMQP connections run on
        // the pipeline's thread.
        let _on_pipeline = self.pipeline.enter();
        let ids = journal.id_index();
        let follower = cluster::Follower::spawn(
            cluster::FollowerParts {
                url: url.clone(),
                node_id: node_id.clone(),
                settings: settings.clone(),
                replica: journal,
                hub: self.hub.clone(),
                metrics: self.metrics.clone(),
            },
            self.writer_stop.clone(),
        );
        let (writer, writer_task) = cluster::StreamWriter::spawn(
            cluster::WriterParts {
                node_id: node_id.clone(),
                stream: settings.name.clone(),
                ingest_queue: self.config.cluster.ingest_queue.clone(),
                epoch,
                waiters: follower.waiters.clone(),
                ids,
                metrics: self.metrics.clone(),
                queue_len: self.config.publish_queue_len,
            },
            self.writer_stop.clone(),
        );
        let mut ingest_settings = self.config.ingest_settings(&url, self.tracing);
        ingest_settings.topology.queue = self.config.cluster.ingest_queue.clone();
        ingest_settings.topology.queue_kind = topology::QueueKind::Shared;
        let ingest = Ingest::spawn(
            ingest_settings,
            writer,
            self.metrics.clone(),
            self.shutdown.clone(),
        );
        let (forwarder, forward_task) = cluster::Forwarder::spawn(
            url,
            node_id,
            self.config.cluster.ingest_queue.clone(),
            follower.inbox_waiters.clone(),
            self.writer_stop.clone(),
        );
        let journal_state = follower.state.clone();
        let supervised = supervise(
            "the journal stream's follower",
            follower.task,
            |outcome: Result<(), cluster::ClusterError>| outcome.err().map(Into::into),
            self.writer_stop.clone(),
            self.shutdown.clone(),
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _ = writer_task.await;
        });
        tasks.spawn(async move {
            let _ = forward_task.await;
        });
        Core {
            publisher: Arc::new(forwarder),
            ingest: Some(ingest),
            journal_state: Some(journal_state),
            writer: supervised,
            tasks,
        }
    }
}
