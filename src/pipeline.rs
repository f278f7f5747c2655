//! The event path's own thread: one OS thread running a current-thread tokio runtime, on
//! which everything between a delivery and the subscribers' mailboxes runs — the AMQP
//! sessions, decoding, the single writer (the sequencer, or cluster mode's writer and
//! follower), the journal commit as a plain blocking call, and the fan-out.
//!
//! Owns: that thread, its runtime, and the [`pause`] its writer takes between commits. Does not
//! own: what runs on it (the app spawns the stages there, see `app::node`), the gRPC server
//! and the subscribers' streams (they stay on the main multi-threaded runtime, which is what
//! lets many connections use both cores).
//!
//! Why a thread of its own. At the platform's rates (hundreds to a few thousand events a
//! second) every hand-off between threads finds the next thread parked, so each one is a futex
//! wake-up and a context switch, and those cost more CPU than the work. On tokio's
//! multi-threaded runtime an event went from lapin's I/O thread to an ingest task, to the
//! sequencer, to a blocking-pool thread for the commit and back, each on whatever worker was
//! free. On one thread the stages hand over by pushing to the same run queue, which wakes
//! nobody, and the commit is simply called: while it waits for the disk, new deliveries wait
//! in the socket and become the next batch. (Under load, when a batch is large, the sequencer
//! still commits it on a blocking thread while this one fans out the batch before: there the
//! two cores are worth more than the hand-off.) The hops left are the ones lapin and the
//! subscribers need: lapin's own I/O thread, and the subscribers' stream tasks on the main
//! runtime, each woken once per batch.
//!
//! The runtime's I/O driver serves the AMQP connections opened on it (lapin registers its
//! socket with the runtime it connects from), and that is why [`pause`] blocks the thread
//! instead of sleeping on a timer: a timer would let the driver wake the thread, and lapin's,
//! for every message arriving during the pause; a blocked thread leaves them in the socket
//! buffer, to be read in one go when the pause ends.

use std::{
    cell::Cell,
    io,
    thread::{self, JoinHandle},
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot};

/// The thread's name, as `top -H` and `/proc/<pid>/task/*/comm` show it (15 bytes at most).
pub(crate) const THREAD_NAME: &str = "notify-pipeline";

thread_local! {
    /// Set on the pipeline's thread: [`pause`] blocks only there.
    static ON_PIPELINE: Cell<bool> = const { Cell::new(false) };
}

/// The running pipeline thread. Stages are spawned on it inside [`Pipeline::enter`], so that
/// `tokio::spawn` and lapin's connections land there. Dropping
/// it stops the runtime: tasks still on it are cancelled, so the owner first waits for the
/// stages it spawned to finish, as shutdown does.
pub struct Pipeline {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the thread and its runtime (I/O and timers enabled).
    pub fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                ON_PIPELINE.with(|on| on.set(true));
                // Spawned stages run while this waits; a dropped sender ends it too.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Makes the pipeline's runtime the current one until the guard drops: `tokio::spawn`
    /// and new lapin connections then use it.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle.enter()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined when dropped on a runtime thread (blocking there would stall it); the
        // thread ends on its own once its runtime has shut down.
        if let Some(thread) = self.thread.take()
            && Handle::try_current().is_err()
        {
            let _ = thread.join();
        }
    }
}

/// The writer's pause between two commits (group commit, `--commit-delay`). On the pipeline's
/// thread it blocks the thread, so that what arrives meanwhile stays in the sockets and the
/// queue and is taken as one batch (see the module docs for why not a timer); anywhere else
/// (the writers' unit tests, whose clock is tokio's paused one) it is `tokio::time::sleep`.
pub(crate) async fn pause(duration: Duration) {
    if duration.is_zero() {
        return;
    }
    if ON_PIPELINE.with(Cell::get) {
        #[expect(
            clippy::disallowed_methods,
            reason = "blocking this thread is the point: the pipeline's runtime has nothing \
                      else to run meanwhile, and a timer would let every arriving message \
                      wake it"
        )]
        thread::sleep(duration);
    } else {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_spawned_on_the_pipeline_run_on_its_thread() {
        let pipeline = Pipeline::start().unwrap();
        let on_pipeline = {
            let _guard = pipeline.enter();
            tokio::spawn(async {
                let name = thread::current().name().map(str::to_owned);
                (name, ON_PIPELINE.with(Cell::get))
            })
        };
        let (name, flag) = on_pipeline.await.unwrap();
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        assert!(flag);
        assert!(!ON_PIPELINE.with(Cell::get));
    }

    #[tokio::test(start_paused = true)]
    async fn off_the_pipeline_a_pause_follows_tokios_clock() {
        let started = tokio::time::Instant::now();
        pause(Duration::from_secs(3600)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
    }
}
