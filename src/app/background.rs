//! The background tasks of a node, each until shutdown: the hub's heartbeats, journal retention,
//! the interval sync, and the journal's probe.
//!
//! Owns: how often each runs and that each runs off the async workers when it waits for the
//! disk. Does not own: what a prune, sync or probe does (`store`), nor reporting the journal's
//! health (`health`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    hub::Hub,
    store::{JournalMonitor, Pruner, Syncer},
};

/// How often the journal's file is looked at off the write path (a `statvfs`, and a reopen
/// after a storage failure): how soon a node whose disk got room again says it is ready, with
/// no write to find out.
const JOURNAL_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Probes the journal every [`JOURNAL_PROBE_INTERVAL`] until shutdown, off the async workers.
pub(super) async fn probe_journal(monitor: JournalMonitor, shutdown: CancellationToken) {
    let monitor = Arc::new(monitor);
    let mut ticker = tokio::time::interval(JOURNAL_PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let monitor = Arc::clone(&monitor);
        if let Err(error) = tokio::task::spawn_blocking(move || monitor.probe()).await {
            warn!(%error, "the journal probe failed");
        }
    }
}

/// Ticks the hub's heartbeat until shutdown.
pub(super) async fn heartbeats(
    hub: Hub,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => hub.heartbeat(),
            () = shutdown.cancelled() => break,
        }
    }
}

/// Applies `--retention-age` and `--retention-bytes` every `every` until `shutdown`, off the
/// async workers (a prune is a write transaction that waits for the disk).
pub(super) async fn prune_journal(
    pruner: Pruner,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let pruner = Arc::new(pruner);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        // Batch after batch while there is a backlog, checking for shutdown in between.
        loop {
            let pruner = Arc::clone(&pruner);
            let now = crate::store::unix_millis();
            match tokio::task::spawn_blocking(move || pruner.prune_once(now)).await {
                Ok(Ok(removed)) if removed > 0 && !shutdown.is_cancelled() => {
                    info!(removed, "journal retention: removed the oldest events");
                }
                Ok(Ok(_)) => break,
                Ok(Err(error)) => {
                    warn!(%error, "journal retention failed; retrying later");
                    break;
                }
                Err(error) => {
                    warn!(%error, "journal retention task failed");
                    break;
                }
            }
        }
    }
}

/// With `--durability <interval>`: forces the journal's commits to disk every `every`, and
/// once more at shutdown, off the async workers.
pub(super) async fn sync_journal(
    syncer: Syncer,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let syncer = Arc::new(syncer);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let syncer = Arc::clone(&syncer);
        match tokio::task::spawn_blocking(move || syncer.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "journal sync failed; retrying"),
            Err(error) => warn!(%error, "journal sync task failed"),
        }
        if stopping {
            break;
        }
    }
}
