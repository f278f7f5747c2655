//! The pause before trying again: one policy for every loop that retries after a failure.
//!
//! Owns the policy; does not own what is retried, the sleeping (each loop races its pause
//! against shutdown in its own `select!`) or the logging of the pause.
//!
//! **The policy.** Exponential with equal jitter: the pause after the n-th failure in a row is
//! drawn uniformly from `[d/2, d)`, where `d = first × 2ⁿ`, at most `cap`; after a success the
//! pauses start over from `first`. Why this shape:
//! - *doubling*: a short outage costs a fraction of a second, a long one does not keep a
//!   recovering broker or server busy with reconnections (a handful per minute at the cap);
//! - *jitter*: the nodes of a cluster, or many clients, that lost the same broker at the same
//!   moment spread out instead of all knocking again together; and only half of the pause is
//!   random, so no pause collapses to nothing and none exceeds the cap;
//! - *start over after a success*: a new outage hours after the last one is a new outage,
//!   not the same one going on.
//!
//! **The numbers**, each at its call site, where the reason is:
//! - `first` is [`FIRST`] (100 ms) where a node reconnects to RabbitMQ (the ingest, the cluster
//!   follower): about the time a broker restart or a dropped connection takes to be visible,
//!   so the first retry is not wasted and the second is already in the next second.
//! - the ingest's retry of an event its own journal refused starts at 50 ms: nothing remote
//!   is involved, and every pause holds up the queue behind that event.
//! - `subscribe --follow` starts at 500 ms: a command-line client of a server far away, whose
//!   restart takes seconds, not the broker next door.
//! - the caps: `--reconnect-max-backoff` (30 s by default) for the ingest, 5 s for the cluster
//!   follower (a node's replica falls behind while it waits), 5 s for a refused event, 10 s for
//!   `subscribe --follow` (a person is watching).
//!
//! The sequence itself comes from `backon` (already in the dependency tree through lapin):
//! its jitter adds a random share `[0, d)` of a delay `d` to it, so asking it for half of each
//! delay gives `[d/2, d)`.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};

/// The first pause of a node reconnecting to RabbitMQ.
pub const FIRST: Duration = Duration::from_millis(100);

/// An attempt that ran this long before it failed was a success that ended: the next pause
/// starts over from `first` (a flapping connection that fails within seconds keeps doubling).
pub const STABLE: Duration = Duration::from_secs(30);

/// The pauses of one retrying loop (see the module's header for the policy).
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: <ExponentialBuilder as backon::BackoffBuilder>::Backoff,
    cap: Duration,
    fresh: bool,
}

impl Backoff {
    /// Pauses from about `first` (the first is in `[first/2, first)`), doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        let cap = cap.max(first);
        Self::with_builder(Self::builder(first, cap), cap)
    }

    /// The same with a fixed random seed: the same pauses every time, for tests.
    #[cfg(test)]
    fn seeded(first: Duration, cap: Duration, seed: u64) -> Self {
        let cap = cap.max(first);
        Self::with_builder(Self::builder(first, cap).with_jitter_seed(seed), cap)
    }

    fn builder(first: Duration, cap: Duration) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(first / 2)
            .with_max_delay(cap / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    fn with_builder(builder: ExponentialBuilder, cap: Duration) -> Self {
        Self {
            builder,
            delays: builder.build(),
            cap,
            fresh: true,
        }
    }

    /// The pause before the next attempt, one more failure in a row.
    pub fn next_pause(&mut self) -> Duration {
        self.fresh = false;
        // The sequence has no end (no maximum number of attempts); the cap is its limit.
        self.delays.next().unwrap_or(self.cap).min(self.cap)
    }

    /// The next pause as after an attempt that ran for `lasted` and failed: one that ran
    /// [`STABLE`] or longer starts the pauses over.
    pub fn pause_after(&mut self, lasted: Duration) -> Duration {
        if lasted >= STABLE {
            self.reset();
        }
        self.next_pause()
    }

    /// After a success: the next failure pauses about `first` again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
        self.fresh = true;
    }

    /// No pause given since the start or the last [`Backoff::reset`]: the next failure is the
    /// first of a run.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Every pause is in `[d/2, d)` of the doubling sequence, capped.
    #[test]
    fn pauses_double_with_equal_jitter_up_to_the_cap() {
        for seed in 0..50 {
            let mut backoff = Backoff::seeded(100 * MS, 5000 * MS, seed);
            let mut d = 100 * MS;
            for n in 0..12 {
                let pause = backoff.next_pause();
                assert!(
                    pause >= d / 2 && pause < d + MS,
                    "seed {seed}, pause {n}: {pause:?}"
                );
                d = (d * 2).min(5000 * MS);
            }
            assert!(backoff.next_pause() >= 2500 * MS - MS);
        }
    }

    #[test]
    fn the_jitter_spreads_the_pauses_of_different_loops() {
        let firsts: std::collections::HashSet<Duration> = (0..20)
            .map(|seed| Backoff::seeded(800 * MS, 30_000 * MS, seed).next_pause())
            .collect();
        assert!(firsts.len() > 10, "{firsts:?}");
    }

    #[test]
    fn a_success_or_a_stable_attempt_starts_over() {
        let mut backoff = Backoff::seeded(100 * MS, 5000 * MS, 7);
        assert!(backoff.is_fresh());
        for _ in 0..6 {
            backoff.next_pause();
        }
        assert!(!backoff.is_fresh());
        assert!(backoff.next_pause() >= 1600 * MS);
        backoff.reset();
        assert!(backoff.is_fresh());
        assert!(backoff.next_pause() < 100 * MS + MS);

        // A short attempt keeps doubling; one that ran STABLE or longer starts over.
        let quick = backoff.pause_after(Duration::from_secs(1));
        assert!(quick >= 100 * MS, "{quick:?}");
        let again = backoff.pause_after(STABLE);
        assert!(again < 100 * MS + MS, "{again:?}");
    }

    #[test]
    fn a_cap_below_the_first_pause_is_the_first_pause() {
        let mut backoff = Backoff::seeded(100 * MS, 10 * MS, 1);
        for _ in 0..5 {
            let pause = backoff.next_pause();
            assert!(pause >= 50 * MS && pause <= 100 * MS, "{pause:?}");
        }
    }
}
