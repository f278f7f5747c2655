//! The command line: every knob of `serve` as a flag with an environment variable and a
//! documented default, plus the client subcommands.
//!
//! Owns: names, defaults and parsing. Does not own: acting on them (`app` does).

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::client::{LoadgenArgs, PublishArgs, SubscribeArgs};

/// notify-backbone: typed platform events, streamed over gRPC and grpc-web.
#[derive(Debug, Parser)]
#[command(
    name = "notify-backbone",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeConfig),
    /// Subscribe to a server and print each message as one JSON line.
    Subscribe(SubscribeArgs),
    /// Publish one event (a producer's JSON body) and print its id and cursor.
    Publish(PublishArgs),
    /// Load generator: subscribers and publishers against a running server.
    Loadgen(LoadgenArgs),
}

/// Everything `serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address of the gRPC and grpc-web port.
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the HTTP port serving `/metrics`.
    #[arg(long, env = "NOTIFY_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// Origins allowed to call over grpc-web from a browser (CORS), e.g.
    /// `https://console.example.com`. Repeat the flag or separate with commas. `*` allows any
    /// origin. None: browsers on other origins are refused (same-origin and non-browser clients
    /// are unaffected).
    #[arg(
        long = "cors-origin",
        env = "NOTIFY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Frames one subscriber may have queued. A subscriber that falls this far behind has its
    /// stream ended with RESOURCE_EXHAUSTED naming the last cursor it was sent, so it can
    /// resubscribe from there; it never slows anyone else. Memory per subscriber is bounded by
    /// this many shared frames (each a reference to one encoded event).
    #[arg(long, env = "NOTIFY_SUBSCRIBER_QUEUE_LEN", default_value_t = 1024)]
    pub subscriber_queue_len: usize,

    /// Published events waiting for the sequencer. When full, `Publish` calls wait
    /// (backpressure) rather than fail or drop.
    #[arg(long, env = "NOTIFY_PUBLISH_QUEUE_LEN", default_value_t = 8192)]
    pub publish_queue_len: usize,

    /// How many recent event ids are remembered to recognise re-sent events (duplicates).
    /// A re-send older than this many events is stored again.
    #[arg(long, env = "NOTIFY_DEDUPE_WINDOW", default_value_t = 100_000)]
    pub dedupe_window: usize,

    /// Largest `Publish` body accepted, in bytes (the JSON, or the encoded typed event).
    #[arg(long, env = "NOTIFY_MAX_PUBLISH_BYTES", default_value_t = 256 * 1024)]
    pub max_publish_bytes: usize,

    /// Refuse events of a known family whose routing key has no typed message, instead of
    /// delivering them with an untyped payload.
    #[arg(long, env = "NOTIFY_STRICT_SCHEMA")]
    pub strict_schema: bool,

    /// A stream that sent nothing for this long gets a Heartbeat message.
    #[arg(long, env = "NOTIFY_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = positive_duration)]
    pub heartbeat_interval: Duration,

    /// HTTP/2 keepalive ping interval; a connection that does not answer within
    /// `--http2-keepalive-timeout` is closed.
    #[arg(long, env = "NOTIFY_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long an HTTP/2 keepalive ping may go unanswered.
    #[arg(long, env = "NOTIFY_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// On SIGINT/SIGTERM: how long open streams and calls get to finish before the server
    /// stops anyway.
    #[arg(long, env = "NOTIFY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    /// The documented defaults, ignoring `NOTIFY_*` environment variables, so tests and embedders
    /// get the same configuration on every machine.
    fn default() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["notify-backbone"])
            .expect("the built-in defaults parse");
        Cli::from_arg_matches(&matches)
            .expect("the built-in defaults parse")
            .serve
    }
}

/// A duration greater than zero (`15s`, `500ms`).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than zero".into()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = ServeConfig::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.subscriber_queue_len, 1024);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
        assert!(!config.strict_schema);
    }

    #[test]
    fn a_zero_heartbeat_interval_is_refused() {
        let parsed = Cli::try_parse_from(["notify-backbone", "--heartbeat-interval", "0s"]);
        assert!(parsed.is_err());
        assert!(
            Cli::try_parse_from(["notify-backbone", "serve", "--heartbeat-interval", "250ms"])
                .is_ok()
        );
    }
}
