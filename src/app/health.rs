//! What the node says about itself: `/readyz` ([`readiness`]) and gRPC health, mirrored from
//! the journal's health, the AMQP ingest's state and, in cluster mode, whether the node reads
//! the journal stream; a journal that refuses writes is also logged (one line per change) and
//! counted.
//!
//! Owns: which state means ready or SERVING, and the reporter tasks. Does not own: the states
//! themselves (`store`, `ingest`, `cluster`), nor health during shutdown (`shutdown` turns it
//! NOT_SERVING; the reporters stop then).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    cluster::FollowState,
    grpc,
    ingest::IngestState,
    store::JournalHealth,
    telemetry::{self, Metrics},
};

/// Mirrors the ingest's state into gRPC health (service `ingest`) until the ingest stops.
pub(super) async fn report_ingest_health(
    mut state: watch::Receiver<IngestState>,
    health: grpc::Health,
) {
    loop {
        let consuming = *state.borrow_and_update() == IngestState::Consuming;
        health.ingest_consuming(consuming).await;
        if state.changed().await.is_err() {
            health.ingest_consuming(false).await;
            break;
        }
    }
}

/// Ready while not shutting down, while the journal takes writes, with AMQP ingest while
/// consuming, and in cluster mode while reading the journal stream.
pub(super) fn readiness(
    shutdown: CancellationToken,
    store: watch::Receiver<JournalHealth>,
    ingest: Option<watch::Receiver<IngestState>>,
    journal: Option<watch::Receiver<FollowState>>,
) -> telemetry::Readiness {
    Arc::new(move || {
        if shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        let store = store.borrow();
        if *store != JournalHealth::Writable {
            return Err(format!("journal refuses writes: {}", *store));
        }
        drop(store);
        if let Some(state) = journal.as_ref().map(|state| *state.borrow())
            && state != FollowState::Following
        {
            return Err("journal stream: not reading it (connecting)".into());
        }
        match ingest.as_ref().map(|state| *state.borrow()) {
            None | Some(IngestState::Consuming) => Ok(()),
            Some(state) => Err(format!("ingest: {state}")),
        }
    })
}

/// Mirrors whether the node reads the journal stream into gRPC health (service `journal`).
pub(super) async fn report_journal_health(
    mut state: watch::Receiver<FollowState>,
    health: grpc::Health,
) {
    loop {
        let following = *state.borrow_and_update() == FollowState::Following;
        health.journal_following(following).await;
        if state.changed().await.is_err() {
            health.journal_following(false).await;
            break;
        }
    }
}

/// Mirrors whether the journal takes writes into the log (one line per change), the metrics and
/// gRPC health: the server (and, with `journal_service`, the `journal` service) is NOT_SERVING
/// while writes are refused. Ends at shutdown, which owns health from then on.
pub(super) async fn report_journal_writable(
    mut state: watch::Receiver<JournalHealth>,
    health: grpc::Health,
    metrics: Arc<Metrics>,
    journal_service: bool,
    shutdown: CancellationToken,
) {
    let mut was_writable = true;
    loop {
        let now = state.borrow_and_update().clone();
        let writable = now == JournalHealth::Writable;
        if writable != was_writable && !shutdown.is_cancelled() {
            if writable {
                info!("journal: writable again; taking events");
            } else {
                warn!(
                    state = %now,
                    "journal: refusing writes (reads and open streams go on); not ready                      until it recovers by itself"
                );
                metrics
                    .journal
                    .unwritable
                    .get_or_create(&telemetry::ReasonLabel {
                        reason: now.reason_code().into(),
                    })
                    .inc();
            }
            metrics.journal.writable.set(i64::from(writable));
            if writable {
                health.serving().await;
            } else {
                health.not_serving().await;
            }
            was_writable = writable;
        }
        if journal_service && !shutdown.is_cancelled() {
            health.journal_writable(writable).await;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_journal_the_ingest_and_shutdown() {
        let shutdown = CancellationToken::new();
        let (store, writable) = watch::channel(JournalHealth::Writable);
        let (state, watched) = watch::channel(IngestState::Connecting);
        let ready = readiness(shutdown.clone(), writable.clone(), Some(watched), None);
        assert_eq!(ready(), Err("ingest: connecting".into()));
        state.send_replace(IngestState::Consuming);
        assert_eq!(ready(), Ok(()));
        // A broker outage: not ready until consuming again.
        state.send_replace(IngestState::Connecting);
        assert_eq!(ready(), Err("ingest: connecting".into()));
        state.send_replace(IngestState::Consuming);
        // A full disk: not ready until the journal takes writes again.
        store.send_replace(JournalHealth::DiskFull {
            free_bytes: 1,
            min_free_bytes: 2,
        });
        let refused = ready().unwrap_err();
        assert!(
            refused.contains("journal refuses writes: disk full"),
            "{refused}"
        );
        store.send_replace(JournalHealth::Writable);
        assert_eq!(ready(), Ok(()));
        shutdown.cancel();
        assert_eq!(ready(), Err("shutting down".into()));
        // Without AMQP ingest, ready until shutdown.
        let embedded = readiness(CancellationToken::new(), writable.clone(), None, None);
        assert_eq!(embedded(), Ok(()));
        // Cluster mode: not ready while not reading the journal stream.
        let (journal, watched) = watch::channel(FollowState::Connecting);
        let cluster = readiness(CancellationToken::new(), writable, None, Some(watched));
        assert!(cluster().is_err());
        journal.send_replace(FollowState::Following);
        assert_eq!(cluster(), Ok(()));
    }
}
