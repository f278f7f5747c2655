//! Logging set-up, the Prometheus metrics every stage records, and the `/metrics` endpoint.
//!
//! Owns: metric names and labels (one place, so dashboards have one reference), the HTTP
//! listener that serves them, and the bound on warnings whose rate a client controls
//! ([`LogLimiter`], [`WARNINGS`]). Does not own: deciding what to count or log — each stage
//! calls the recorder at the moment its event happens.
//!
//! The files: this one sets logging up (`--log-format`, the default filter) and prints an
//! error with its causes for a log field ([`Chain`]); `warnings` bounds the warnings a client
//! can cause; `metrics` holds every metric and its labels; `endpoint` serves `/metrics`,
//! `/readyz` and `/healthz`.

mod endpoint;
mod metrics;
mod warnings;

pub use endpoint::{Readiness, local_addr, serve_metrics};
pub use metrics::*;
pub use warnings::*;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// What is logged when `RUST_LOG` is not set (`RUST_LOG` replaces all of it).
///
/// - `lapin=off`: the AMQP client logs, at ERROR, every failure it also returns to its caller
///   (a channel or connection the broker closed, a connection that broke, a refused
///   declaration), and that caller is our code, which logs each once with what it means for
///   the node: a warning when it reconnects or retries, an error when it cannot go on.
///   Left on, a broker restart, `dead-letters` asking for a queue that does not exist, or the
///   moment a just-created stream is not consumable yet (cluster nodes starting together)
///   would page an operator for something already handled. `RUST_LOG=info,lapin=debug` shows
///   lapin's own account.
/// - `opentelemetry=warn`: the OpenTelemetry SDK reports its own trouble (a collector that
///   cannot be reached, spans dropped) as warnings; its info and debug lines are for its
///   developers.
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=off,opentelemetry=warn";

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, fields, and the message.
    Json,
}

/// An error and its causes, `: `-separated, for a log field: an error with a `#[source]` does
/// not repeat it in its own message (the binary prints chains itself).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Starts logging to stderr in `format`; `RUST_LOG` overrides `default_filter` (e.g.
/// [`DEFAULT_LOG_FILTER`]).
///
/// A log line that cannot be written is dropped silently. tracing-subscriber's default is to
/// report the failure with `eprintln!`, which panics when stderr itself is the broken pipe (a
/// log collector that died, `serve 2>&1 | head -1`): the panic then takes down whichever task
/// was logging, the signal handler included, and SIGTERM is ignored from then on.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour codes are noise in a file, a pipe or a collector; NO_COLOR (no-color.org) turns
    // them off on a terminal too.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let http2 = Http2WarningLimit::new(&WARNINGS);
    // A second call (tests start several servers in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).finish().with(http2).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(http2)
            .try_init(),
    };
}
