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
    pub async fn until<P: Probe>(
        self,
        what: impl fmt::Display,
        mut probe: impl AsyncFnMut() -> P,
    ) -> P::Value {
        let deadline = tokio::time::Instant::now() + self.within;
        loop {
            if let Some(value) = self.done(deadline, &what, probe().await) {
                return value;
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// [`Wait::until`] for a probe that returns an owned future (`|| { ...; async move {..} }`).
    /// Inside a spawned task: the compiler cannot yet prove an `async` closure's future (which
    /// borrows the closure) `Send` for every borrow, and `tokio::spawn` needs that.
    pub async fn until_owned<P: Probe, F: Future<Output = P>>(
        self,
        what: impl fmt::Display,
        mut probe: impl FnMut() -> F,
    ) -> P::Value {
        let deadline = tokio::time::Instant::now() + self.within;
        loop {
            if let Some(value) = self.done(deadline, &what, probe().await) {
                return value;
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// The value if `answer` is done; `None` to look again; a panic past `deadline`.
    fn done<P: Probe>(
        self,
        deadline: tokio::time::Instant,
        what: &impl fmt::Display,
        answer: P,
    ) -> Option<P::Value> {
        match answer.done() {
            Ok(value) => Some(value),
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never within {:?}: {what}; last seen: {last}",
                    self.within
                );
                None
            }
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
