//! The bound on warnings whose rate a client controls: [`LogLimiter`] and the process's
//! [`WARNINGS`], the periodic report of what it suppressed, and the layer that puts h2's own
//! warnings under it. Does not own what is logged (each stage), only how often.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// Lines of one kind of warning logged per [`WARNING_INTERVAL`] at most, by [`WARNINGS`].
pub const WARNING_BURST: u32 = 5;
/// The window of [`WARNING_BURST`], and how often [`report_suppressed_warnings`] reports.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The process's bound on warnings whose rate a client controls: one per refused connection
/// (`grpc::connections`), one per connection the HTTP/2 stack closes for misbehaving (h2's own
/// lines, through [`Http2WarningLimit`]). A flood of connections would otherwise turn into a
/// flood of identical lines (a rapid-reset attack once logged 486 in 10 s), drowning the rest
/// of the log and costing the disk what the attacker pleases. The metrics still count every
/// one.
pub static WARNINGS: LogLimiter = LogLimiter::new(WARNING_BURST, WARNING_INTERVAL);

/// At most `burst` lines of each kind of warning per `interval`; the others are counted, and
/// [`LogLimiter::report`] logs one line per kind saying how many it suppressed.
///
/// A kind is a `&'static str` named at the call site (or a dependency's log target), so the
/// kinds are a fixed set and the map never grows past it.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    kinds: Mutex<BTreeMap<&'static str, Window>>,
}

/// One kind's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    logged: u32,
    /// Suppressed since the last report (not reset with the window).
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `burst` lines of each kind per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            kinds: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a line of `kind` may be logged now; if not, it is counted as suppressed.
    pub fn admit(&self, kind: &'static str) -> bool {
        let now = Instant::now();
        // A panic while counting leaves nothing half-updated (plain integer fields): go on.
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let window = kinds.entry(kind).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.started) >= self.interval {
            window.started = now;
            window.logged = 0;
        }
        if window.logged < self.burst {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// The kinds with lines suppressed since the last call, and how many; their counts start
    /// again from zero.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .iter_mut()
            .filter(|(_, window)| window.suppressed > 0)
            .map(|(kind, window)| (*kind, std::mem::take(&mut window.suppressed)))
            .collect()
    }

    /// Logs one warning per kind with lines suppressed since the last report, with the count.
    pub fn report(&self) {
        for (kind, suppressed) in self.take_suppressed() {
            tracing::warn!(
                kind,
                suppressed,
                "{suppressed} more warnings like the last ({kind}) were not logged, at most \
                 {} a kind per {:?}",
                self.burst,
                self.interval
            );
        }
    }
}

/// Reports [`WARNINGS`]' suppressed lines every [`WARNING_INTERVAL`]; never returns (drop it to
/// stop, e.g. with the server it runs beside).
pub async fn report_suppressed_warnings() -> std::convert::Infallible {
    let mut tick = tokio::time::interval(WARNING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        WARNINGS.report();
    }
}

/// A tracing layer that holds the HTTP/2 stack's own warnings (and errors) to a
/// [`LogLimiter`], one kind per h2 module.
///
/// h2 logs one line for each connection it closes because the peer misbehaved: too many
/// streams reset before they were served (`recv_reset; remotely-reset pending-accept streams
/// reached limit`, the CVE-2023-44487 "rapid reset" mitigation), too many streams it had to
/// reset itself, or a PING answer it never asked for. An attacker decides how many such
/// connections there are. h2 offers no other way to learn of these closes (tonic drops the
/// connection's error at debug level), so its lines are kept rather than filtered out by a
/// default directive: the first few of each kind per interval show h2's own words, and the
/// report says how many more there were. Events are told apart by target and level only,
/// never by their text.
#[derive(Debug, Clone, Copy)]
pub struct Http2WarningLimit {
    limiter: &'static LogLimiter,
}

impl Http2WarningLimit {
    /// The layer, counting into `limiter`.
    pub fn new(limiter: &'static LogLimiter) -> Self {
        Self { limiter }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Http2WarningLimit {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let metadata = event.metadata();
        let target = metadata.target();
        let from_h2 = target == "h2" || target.starts_with("h2::");
        // Levels order by verbosity: WARN and ERROR are the ones at or below WARN.
        if !from_h2 || *metadata.level() > tracing::Level::WARN {
            return true;
        }
        self.limiter.admit(target)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Log lines written to memory, for the tests of what gets logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// A rapid-reset attack made h2 log one warning per connection it closed (486 in 10 s).
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_http2_warnings_logs_a_few_lines_and_then_a_count() {
        let limiter: &'static LogLimiter =
            Box::leak(Box::new(LogLimiter::new(3, Duration::from_secs(10))));
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .finish()
            .with(Http2WarningLimit::new(limiter));
        let reset = || {
            tracing::warn!(
                target: "h2::proto::streams::recv",
                "recv_reset; remotely-reset pending-accept streams reached limit (20)"
            );
        };
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                reset();
            }
            // Other modules of h2 are kinds of their own; other crates' lines are untouched.
            tracing::warn!(target: "h2::proto::ping_pong", "recv PING ack that we never sent");
            for _ in 0..10 {
                tracing::warn!("our own warning");
                tracing::debug!(target: "h2::codec", "h2's own debug lines are not counted");
            }
            limiter.report();
        });
        let lines = captured.lines();
        let resets = lines.iter().filter(|l| l.contains("recv_reset")).count();
        assert_eq!(resets, 3, "{lines:#?}");
        assert_eq!(lines.iter().filter(|l| l.contains("PING ack")).count(), 1);
        assert_eq!(lines.iter().filter(|l| l.contains("our own")).count(), 10);
        let reports: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("were not logged"))
            .collect();
        assert_eq!(reports.len(), 1, "{lines:#?}");
        assert!(
            reports[0].contains("97 more") && reports[0].contains("h2::proto::streams::recv"),
            "{reports:?}"
        );

        // Nothing suppressed since: no report. A new window: lines again.
        assert!(limiter.take_suppressed().is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        tracing::subscriber::with_default(
            tracing_subscriber::fmt()
                .with_writer({
                    let captured = captured.clone();
                    move || captured.clone()
                })
                .finish()
                .with(Http2WarningLimit::new(limiter)),
            reset,
        );
        let resets = captured
            .lines()
            .iter()
            .filter(|l| l.contains("recv_reset"))
            .count();
        assert_eq!(resets, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kind_of_warning_is_admitted_a_burst_per_interval() {
        let limiter = LogLimiter::new(2, Duration::from_secs(10));
        let admitted = |kind| (0..5).filter(|_| limiter.admit(kind)).count();
        assert_eq!(admitted("refused"), 2);
        assert_eq!(admitted("refused_per_peer"), 2);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(admitted("refused"), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admitted("refused"), 2);
        assert_eq!(
            limiter.take_suppressed(),
            vec![("refused", 11), ("refused_per_peer", 3)]
        );
        assert!(limiter.take_suppressed().is_empty());
    }
}
