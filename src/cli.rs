//! The command line's top level: [`Cli`] (the global flags, `serve`'s flags when no subcommand
//! is given) and [`Command`], the subcommands, each with its own arguments, plus
//! `completions`, which needs the whole command line to describe it.
//!
//! Owns: how the subcommands are put together, what `--help` says after the flags, and the
//! completion scripts. Does not own: any subcommand's flags (`config` owns `serve`'s,
//! `client` the clients'), nor acting on them (`app` serves, `client` runs the clients).
//!
//! Why a module of its own: the command line names the arguments of `config` and of `client`,
//! so it sits above both; when it lived in `config`, `client` (which prints the completions of
//! the whole command line) and `config` imported each other.

use clap::{Args, Parser, Subcommand};

use crate::{
    client::{DeadLettersArgs, HistoryArgs, InboxArgs, PublishArgs, SubscribeArgs, TokenArgs},
    config::{ServeConfig, VERSION},
    telemetry::LogFormat,
};

/// What `--help` says about logging, after the flags.
const LOGGING_HELP: &str = "Logging: to stderr. RUST_LOG sets the level and per-module filters \
(default: info,lapin=off,opentelemetry=warn: the AMQP client's own error lines repeat what the \
server logs once itself), e.g. RUST_LOG=debug or RUST_LOG=info,notify_backbone::ingest=debug. \
--log-format json writes one JSON object per line for log collectors. Colours only when stderr \
is a terminal, and never with NO_COLOR set.";

/// notify-backbone: typed platform events, streamed over gRPC and grpc-web.
#[derive(Debug, Parser)]
#[command(
    name = "notify-backbone",
    version = VERSION,
    args_conflicts_with_subcommands = true,
    after_help = LOGGING_HELP
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How log lines are written: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(
        long,
        global = true,
        env = "NOTIFY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Server settings when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    #[command(after_help = LOGGING_HELP)]
    Serve(Box<ServeConfig>),
    /// Subscribe to a server and print each message as one JSON line.
    #[command(after_help = LOGGING_HELP)]
    Subscribe(SubscribeArgs),
    /// Publish one event (a producer's JSON body) and print its id and cursor.
    #[command(after_help = LOGGING_HELP)]
    Publish(PublishArgs),
    /// Print stored events (`ListEvents`, page by page) as JSON lines.
    #[command(after_help = LOGGING_HELP)]
    History(HistoryArgs),
    /// The notification centre: list an inbox, its counts, mark items, read or set
    /// preferences (JSON lines, like `history`).
    #[command(subcommand_required = true, after_help = LOGGING_HELP)]
    Inbox(InboxArgs),
    /// List or replay the dead-letter queue's poison messages (talks to RabbitMQ, not to a
    /// server).
    #[command(subcommand_required = true, after_help = LOGGING_HELP)]
    DeadLetters(DeadLettersArgs),
    /// Mint a platform-style HS256 token (for development and tests).
    Token(TokenArgs),
    /// Print a shell completion script, e.g. `notify-backbone completions bash >
    /// ~/.local/share/bash-completion/completions/notify-backbone`.
    Completions(CompletionsArgs),
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// `completions`: the shell completion script on stdout.
pub fn completions(args: &CompletionsArgs) {
    use clap::CommandFactory as _;
    let mut command = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "notify-backbone",
        &mut std::io::stdout(),
    );
}

#[cfg(test)]
mod tests;
