//! Where journal reads run: a pool of readers on blocking threads, so that no read runs on the
//! async workers that carry every live stream. Does not own what is read (`subscription`,
//! `history`).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;

use crate::store::StoreError;

/// Why a journal read on the readers failed: the journal refused it, or its task ended without
/// an answer.
///
/// Each message holds its cause once, and no variant also names it as a `source`: these are
/// logged with `%` (the replay's WARN line, the history error's ERROR line), which prints no
/// chain, and they read as the journal's own refusals did before this type existed ("journal
/// unavailable: ...").
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The journal refused the read.
    #[error(transparent)]
    Journal(#[from] StoreError),
    /// The readers' semaphore was closed (it never is while the hub lives).
    #[error("journal unavailable: the journal readers closed")]
    ReadersClosed,
    /// The read's task panicked or was cancelled before it answered.
    #[error("journal unavailable: a journal read failed: {0}")]
    Failed(tokio::task::JoinError),
}

/// Where journal reads run.
#[derive(Clone)]
pub(super) enum Reads {
    /// On the blocking pool, as many at once as the semaphore has permits.
    Pool(Arc<Semaphore>),
    /// Inside the caller's poll: unit tests step the hub without a runtime this way.
    #[cfg(test)]
    Inline,
}

/// The outcome of a journal read running on the readers.
pub(super) type PendingRead<T> = Pin<Box<dyn Future<Output = Result<T, ReadError>> + Send>>;

impl Reads {
    /// Runs `job` (one bounded journal read) on a reader thread once a reader is free.
    ///
    /// The wait for a reader and the read run in a task of their own, not in the caller's
    /// future: a stream that is not polled for a while (its client reads slowly, or not at all)
    /// must not hold a reader it was handed, or one slow client would stop every replay. The
    /// permit goes with the job to its thread and is given back when the read ends; dropping the
    /// returned future before that leaves the queue, or lets a started read finish alone.
    pub(super) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> PendingRead<T> {
        match self {
            Reads::Pool(readers) => {
                let readers = Arc::clone(readers);
                let task = tokio::spawn(async move {
                    let permit = readers
                        .acquire_owned()
                        .await
                        .map_err(|_| ReadError::ReadersClosed)?;
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        job().map_err(ReadError::from)
                    })
                    .await
                    .unwrap_or_else(|error| Err(ReadError::Failed(error)))
                });
                Box::pin(ReadTask(task))
            }
            #[cfg(test)]
            Reads::Inline => Box::pin(std::future::ready(job().map_err(ReadError::from))),
        }
    }
}

/// A journal read running in its own task; dropping it aborts the task (see [`Reads::run`]).
struct ReadTask<T>(tokio::task::JoinHandle<Result<T, ReadError>>);

impl<T> Future for ReadTask<T> {
    type Output = Result<T, ReadError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|joined| joined.unwrap_or_else(|error| Err(ReadError::Failed(error))))
    }
}

impl<T> Drop for ReadTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A read whose thread panics ends in an error, not in a stream that waits forever, and the
    /// panic is in the error's one message (logged with `%`, which prints no chain).
    #[tokio::test]
    async fn a_read_that_panics_fails_with_the_panic_in_its_message() {
        let reads = Reads::Pool(Arc::new(Semaphore::new(1)));
        let read = reads.run(|| -> Result<(), StoreError> { panic!("the read broke") });
        let error = read.await.expect_err("the read failed");
        assert!(matches!(error, ReadError::Failed(_)), "{error:?}");
        let shown = error.to_string();
        assert!(
            shown.starts_with("journal unavailable: a journal read failed: ")
                && shown.contains("the read broke"),
            "{shown}"
        );
        assert!(error.source().is_none());
    }

    /// The journal's own refusal reads as it did before the readers had an error of their own.
    #[test]
    fn a_refusal_of_the_journal_reads_as_the_journal_says_it() {
        let error = ReadError::from(StoreError::Unavailable("disk gone".into()));
        assert_eq!(error.to_string(), "journal unavailable: disk gone");
    }
}
