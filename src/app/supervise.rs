//! Supervision of the task the journal cannot do without (the sequencer; a cluster node's
//! follower): one that ends while the server runs stops the server, with the reason.
//!
//! Owns: telling a normal end (the server is stopping) from a failure, and the failure's error
//! ([`Stopped`]). Does not own: the tasks (`sequencer`, `cluster`), nor what the server does
//! once told to stop (`shutdown`).

use tokio_util::sync::CancellationToken;

use crate::telemetry::Chain;

/// A task's own failure, as the task reported it (a deleted stream, say).
pub(super) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// A task the journal cannot do without stopped while the server was running: the server's
/// exit reason.
#[derive(Debug, thiserror::Error)]
#[error("{what} stopped")]
pub struct Stopped {
    /// Which task.
    what: &'static str,
    /// Why.
    #[source]
    reason: StopReason,
}

/// Why a supervised task stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopReason {
    /// It panicked (a commit, say).
    #[error("it panicked")]
    Panicked,
    /// Its task was cancelled.
    #[error("it was cancelled")]
    Cancelled,
    /// It returned, with nothing to say why.
    #[error("it ended")]
    Ended,
    /// It returned its own error.
    #[error(transparent)]
    Failed(Failure),
}

/// Watches a task the journal cannot do without (the sequencer; a cluster node's follower). If
/// it ends before the server began to stop (a panic in a commit, a deleted stream), no event can
/// be journaled or delivered any more: rather than keep reporting healthy while every `Publish`
/// fails and the ingest retries forever, this cancels `shutdown`, so health turns NOT_SERVING,
/// the server stops, and the process exits non-zero for its supervisor to restart it.
/// `error_of` says whether the task's own result is a failure. Resolves to why it failed (the
/// server's exit reason), if it did.
pub(super) fn supervise<T: Send + 'static>(
    what: &'static str,
    task: tokio::task::JoinHandle<T>,
    error_of: fn(T) -> Option<Failure>,
    stopping: CancellationToken,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Option<Stopped>> {
    tokio::spawn(async move {
        let outcome = task.await;
        // Once the server is stopping, the task ends normally: when told to, or (the sequencer)
        // as soon as its last submitter is gone. A panic is never normal.
        let stopping = stopping.is_cancelled() || shutdown.is_cancelled();
        let reason = match outcome {
            Err(error) if error.is_panic() => StopReason::Panicked,
            Err(_) if stopping => return None,
            Err(_) => StopReason::Cancelled,
            Ok(result) => match error_of(result) {
                Some(error) => StopReason::Failed(error),
                None if stopping => return None,
                None => StopReason::Ended,
            },
        };
        // The whole chain in the log line; the error returned keeps it as sources.
        let text = Chain(&reason).to_string();
        tracing::error!(
            reason = text,
            "{what} stopped while the server was running: no event can be journaled; \
             stopping the server"
        );
        shutdown.cancel();
        Some(Stopped { what, reason })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sequencer_that_dies_stops_the_server_one_that_is_stopped_does_not() {
        let (stopping, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let dies = tokio::spawn(async { panic!("a commit panicked") });
        let failed = supervise("test", dies, |()| None, stopping.clone(), shutdown.clone());
        assert!(failed.await.unwrap().is_some(), "reported as a failure");
        assert!(shutdown.is_cancelled(), "the server is told to stop");

        // Told to stop, or left without submitters once the server stops: a normal end.
        for told in [true, false] {
            let (stopping, shutdown) = (CancellationToken::new(), CancellationToken::new());
            let ends = tokio::spawn({
                let (stopping, shutdown) = (stopping.clone(), shutdown.clone());
                async move {
                    tokio::select! {
                        () = stopping.cancelled() => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            });
            let failed = supervise("test", ends, |()| None, stopping.clone(), shutdown.clone());
            if told {
                stopping.cancel();
            } else {
                shutdown.cancel();
            }
            assert!(failed.await.unwrap().is_none());
        }
        // A follower that ends with an error (a deleted stream) stops the server too.
        let (stopping, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let gone = tokio::spawn(async { Err::<(), _>("the stream was deleted".to_owned()) });
        let failed = supervise(
            "test",
            gone,
            |outcome: Result<(), String>| outcome.err().map(Into::into),
            stopping,
            shutdown.clone(),
        );
        let stopped = failed.await.unwrap().unwrap();
        // The task's own error is the source, said once: not flattened into the message.
        assert_eq!(stopped.to_string(), "test stopped");
        let reason = format!("{:#}", anyhow::Error::from(stopped));
        assert_eq!(reason, "test stopped: the stream was deleted");
        assert!(shutdown.is_cancelled());
    }
}
