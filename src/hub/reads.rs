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
pub(super) type PendingRead<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

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
                    let permit = readers.acquire_owned().await.map_err(|_| {
                        StoreError::Unavailable("the journal readers closed".into())
                    })?;
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        job()
                    })
                    .await
                    .unwrap_or_else(|error| {
                        Err(StoreError::Unavailable(format!(
                            "a journal read failed: {error}"
                        )))
                    })
                });
                Box::pin(ReadTask(task))
            }
            #[cfg(test)]
            Reads::Inline => Box::pin(std::future::ready(job())),
        }
    }
}

/// A journal read running in its own task; dropping it aborts the task (see [`Reads::run`]).
struct ReadTask<T>(tokio::task::JoinHandle<Result<T, StoreError>>);

impl<T> Future for ReadTask<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|error| {
                Err(StoreError::Unavailable(format!(
                    "a journal read failed: {error}"
                )))
            })
        })
    }
}

impl<T> Drop for ReadTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
