//! The `notify-backbone` binary: parse the command line, start logging, hand over, and turn an
//! error into one line on stderr and an exit code.
//!
//! Exit codes: 0 success; 1 an error (a refused configuration, an unreachable server, a failure
//! while serving), its reason on stderr as `notify-backbone: error: <reason>: <cause>...`;
//! 2 a usage error (unknown flag, bad value), reported by clap.

use std::process::ExitCode;

use clap::Parser;
use notify_backbone::{
    app,
    cli::{self, Cli, Command},
    client, config, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format, telemetry::DEFAULT_LOG_FILTER);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain on one line, each cause once, never anyhow's debug form: that one
            // prints a backtrace whenever RUST_BACKTRACE is set, which turns every refusal into
            // a page of frames.
            eprintln!("notify-backbone: error: {}", client::one_line(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::Subscribe(args)) => client::subscribe(args).await,
        Some(Command::Publish(args)) => client::publish(args).await,
        Some(Command::History(args)) => client::history(args).await,
        Some(Command::Inbox(args)) => client::inbox(args).await,
        Some(Command::DeadLetters(args)) => client::dead_letters(args).await,
        Some(Command::Token(args)) => client::token(args),
        Some(Command::Completions(args)) => {
            cli::completions(&args);
            Ok(())
        }
    }
}

/// `serve`, or with `--check` only the validation of its configuration.
async fn serve(config: config::ServeConfig) -> anyhow::Result<()> {
    if config.check {
        println!("{}", app::check(&config).await?);
        return Ok(());
    }
    app::serve(config).await
}
