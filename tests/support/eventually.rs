//! Waiting for something the server does by itself: one polling loop for every test.
//!
//! Owns the deadline, the pause between probes and the failure message (what was awaited,
//! for how long, and the last thing the probe saw). It does not own "nothing more arrives":
//! the tests prove that with sentinels ([`super::assert_next_is`]), never by waiting a while.

use std::{fmt, time::Duration};

use super::PATIENCE;

/// What a probe answers: done (with a value), or not yet (with what it saw, for the message).
pub trait Probe {
    /// What the wait returns once done.
    type Value;
    /// `Ok` when done; `Err` with a description of what was seen otherwise.
    fn done(self) -> Result<Self::Value, String>;
}

impl Probe for bool {
    type Value = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".into())
    }
}

impl<T, E: fmt::Debug> Probe for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// `Ok(seen)` if `done`, else `Err(seen)`: a probe that reports the value it looked at.
pub fn seen_if<V>(done: bool, seen: V) -> Result<V, V> {
    if done { Ok(seen) } else { Err(seen) }
}

/// How long to wait and how often to look.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    within: Duration,
    every: Duration,
}

impl Wait {
    /// A look every 20 ms: cheap probes (a metrics page, a lock) answer fast, and a test
    /// should not wait much longer than the server takes.
    const EVERY: Duration = Duration::from_millis(20);

    /// Up to `within`.
    pub const fn within(within: Duration) -> Self {
        Self {
            within,
            every: Self::EVERY,
        }
    }

    /// Looking every `every` (longer for a costly probe, shorter where timing matters).
    pub const fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }

    /// Calls `probe` until it is done and returns its value; panics after `within`, naming
    /// `what` was awaited and the last thing the probe saw.
    ///
    /// In a spawned task, give it a probe that owns what it uses (`async move ||`): the
    /// compiler cannot yet prove an `async` closure that borrows the task's locals `Send`.
    pub async fn until<P: Probe>(
        self,
        what: impl fmt::Display,
        mut probe: impl AsyncFnMut() -> P,
    ) -> P::Value {
        let deadline = tokio::time::Instant::now() + self.within;
        loop {
            let last = match probe().await.done() {
                Ok(value) => return value,
                Err(last) => last,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "never within {:?}: {what}; last seen: {last}",
                self.within
            );
            tokio::time::sleep(self.every).await;
        }
    }
}

/// Calls `probe` until it is done (within the test's [`PATIENCE`]) and returns its value.
pub async fn eventually<P: Probe>(
    what: impl fmt::Display,
    probe: impl AsyncFnMut() -> P,
) -> P::Value {
    Wait::within(PATIENCE).until(what, probe).await
}
