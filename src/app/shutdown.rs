//! Shutdown: the signals that begin it, its order, and the one deadline all of it keeps.
//!
//! The order: health turns NOT_SERVING, the AMQP ingest cancels its consumer, settles and acks
//! what it has in flight and closes (at most half the grace, so what it acked still reaches the
//! open streams), the hub ends every open stream with UNAVAILABLE and the last cursor it sent
//! (so clients resume), the gRPC server stops accepting and drains in-flight calls, the journal's
//! writer finishes what it had accepted, the background tasks (the metrics endpoint among them)
//! stop, the last trace spans are exported.
//!
//! One deadline, [`Deadline::at`]: `--shutdown-grace` after the shutdown began. Every wait above
//! ends by that same instant (`timeout_at`), so a shutdown takes at most the grace however many
//! of its steps are stuck, not a grace for each step one after the other. One exception, on
//! purpose: the trace export gets what is left of the grace but at least
//! [`TRACE_EXPORT_AT_LEAST`], since the spans of a shutdown that ran out of time are the ones
//! that say why; with tracing on, a shutdown takes at most the grace plus that.
//!
//! Owns: the deadline, the waits, and the signal handler. Does not own: how each stage stops
//! when told (each watches the shutdown token), nor the ingest's own drain bound (`ingest`).

use std::{sync::OnceLock, time::Duration};

use tokio::{sync::watch, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::supervise::Stopped;
use crate::{grpc, hub::Hub, ingest::IngestState, otel::Tracing};

/// The least time the last spans get to be exported, however little of the grace is left.
pub(super) const TRACE_EXPORT_AT_LEAST: Duration = Duration::from_secs(1);

/// When the shutdown must be over: the grace after the shutdown token was first seen
/// cancelled.
pub(super) struct Deadline {
    shutdown: CancellationToken,
    grace: Duration,
    at: OnceLock<Instant>,
}

impl Deadline {
    /// The deadline of the shutdown `shutdown` begins, `grace` after it does.
    pub(super) fn new(shutdown: CancellationToken, grace: Duration) -> Self {
        Self {
            shutdown,
            grace,
            at: OnceLock::new(),
        }
    }

    /// The deadline: `grace` after the first call once the shutdown began ([`Self::reached`] is
    /// waiting for it from the start, so that is when it began). Called before the shutdown
    /// began, it starts the grace now.
    pub(super) fn at(&self) -> Instant {
        *self.at.get_or_init(|| Instant::now() + self.grace)
    }

    /// The grace.
    pub(super) fn grace(&self) -> Duration {
        self.grace
    }

    /// Completes at the deadline of a shutdown that began.
    pub(super) async fn reached(&self) {
        self.shutdown.cancelled().await;
        tokio::time::sleep_until(self.at()).await;
    }
}

/// The first steps once the shutdown begins, while the gRPC server still serves: health
/// NOT_SERVING, the ingest's drain (while the streams are still open, so every event it acked
/// reaches the subscribers connected now), then every open stream ended. The gRPC server stops
/// accepting when this completes.
pub(super) async fn begin(
    deadline: &Deadline,
    hub: Hub,
    health: grpc::Health,
    ingest: Option<watch::Receiver<IngestState>>,
) {
    deadline.shutdown.cancelled().await;
    // The ingest's drain is bounded by half the grace; waiting three quarters leaves it room
    // and still ends the streams in time, whatever the broker does.
    let ingest_until = deadline.at() - deadline.grace() / 4;
    info!("shutdown: health NOT_SERVING");
    health.not_serving().await;
    // The ingest settles and acks what it has in flight while the streams are still open, so
    // every event it acked reaches the subscribers connected now.
    if let Some(mut state) = ingest {
        info!("shutdown: draining the AMQP ingest");
        let stopped = state.wait_for(|s| *s == IngestState::Stopped);
        if tokio::time::timeout_at(ingest_until, stopped)
            .await
            .is_err()
        {
            warn!("the ingest did not drain within the grace period");
        }
    }
    info!("shutdown: ending open streams");
    hub.shut_down();
}

/// After the gRPC server: the journal's writer finishes what it had accepted and the background
/// tasks stop, both by the deadline; then the last spans are exported. Returns the writer's
/// failure, if it had one.
pub(super) async fn finish(
    deadline: &Deadline,
    writer_stop: &CancellationToken,
    writer: tokio::task::JoinHandle<Option<Stopped>>,
    mut tasks: JoinSet<()>,
    tracing: &Tracing,
) -> Option<anyhow::Error> {
    let at = deadline.at();
    writer_stop.cancel();
    let writer_failure = match tokio::time::timeout_at(at, writer).await {
        Ok(Ok(failure)) => failure.map(anyhow::Error::from),
        Ok(Err(_)) => Some(anyhow::anyhow!("its supervisor failed")),
        Err(_) => {
            warn!("the journal's writer did not finish within the grace period");
            None
        }
    };
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(at, drained).await.is_err() {
        warn!("background tasks did not stop within the grace period");
    }
    // Last: the spans of everything above are exported before the process ends.
    let left = at.saturating_duration_since(Instant::now());
    tracing.shutdown(left.max(TRACE_EXPORT_AT_LEAST)).await;
    writer_failure
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
pub(super) async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let signal = tokio::select! {
        _ = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    };
    // Cancel first, log second: nothing that can go wrong with the log may stand between a
    // signal and the shutdown.
    shutdown.cancel();
    info!("{signal} received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::supervise::supervise;

    const GRACE: Duration = Duration::from_secs(10);

    /// The deadline of a shutdown with [`GRACE`], and the token that begins it.
    fn deadline() -> (CancellationToken, Deadline) {
        let shutdown = CancellationToken::new();
        (shutdown.clone(), Deadline::new(shutdown, GRACE))
    }

    /// [`finish`] with a writer that never finishes and a background task that never stops;
    /// tracing off.
    async fn finish_stuck(deadline: &Deadline) -> Option<anyhow::Error> {
        let writer = tokio::spawn(std::future::pending());
        let mut tasks = JoinSet::new();
        tasks.spawn(std::future::pending());
        let writer_stop = CancellationToken::new();
        finish(deadline, &writer_stop, writer, tasks, &Tracing::off()).await
    }

    // Each wait used to be a grace of its own, one after the other: calls, the writer, the
    // background tasks took three graces when all were stuck.
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_whose_every_step_is_stuck_takes_the_grace_not_a_grace_per_step() {
        let (shutdown, deadline) = deadline();
        // The server runs a while before the signal; its calls never end.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let began = Instant::now();
        shutdown.cancel();
        tokio::select! {
            () = std::future::pending::<()>() => unreachable!("calls never end"),
            () = deadline.reached() => {}
        }
        assert_eq!(
            began.elapsed(),
            GRACE,
            "the server is waited for until the deadline"
        );
        assert!(finish_stuck(&deadline).await.is_none());
        assert_eq!(began.elapsed(), GRACE, "nothing waited past the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_signal_not_from_each_wait() {
        let (shutdown, deadline) = deadline();
        let began = Instant::now();
        shutdown.cancel();
        // The server drains its calls in 4 s, well inside the grace ...
        let drained = tokio::time::sleep(Duration::from_secs(4));
        tokio::select! {
            () = drained => {}
            () = deadline.reached() => unreachable!("drained before the deadline"),
        }
        // ... and the stuck writer and tasks get the 6 s left, together: not 10 s each.
        finish_stuck(&deadline).await;
        assert_eq!(began.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_finishes_in_time_is_waited_for_and_its_failure_reported() {
        let (shutdown, deadline) = deadline();
        shutdown.cancel();
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn({
            let writer_stop = writer_stop.clone();
            async move {
                writer_stop.cancelled().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let failed = tokio::spawn(async { panic!("a commit panicked") });
                let never = CancellationToken::new();
                supervise("test", failed, |()| None, never.clone(), never)
                    .await
                    .unwrap()
            }
        });
        let began = Instant::now();
        let failure = finish(
            &deadline,
            &writer_stop,
            writer,
            JoinSet::new(),
            &Tracing::off(),
        )
        .await
        .expect("the writer's failure");
        assert_eq!(
            began.elapsed(),
            Duration::from_secs(2),
            "waited for, not past"
        );
        assert_eq!(format!("{failure:#}"), "test stopped: it panicked");
    }
}
