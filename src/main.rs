//! The `notify-backbone` binary: parse the command line, start logging, hand over.

use clap::Parser;
use notify_backbone::{
    app, client,
    config::{self, Cli, Command},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::Subscribe(args)) => client::subscribe(args).await,
        Some(Command::Publish(args)) => client::publish(args).await,
        Some(Command::Token(args)) => client::token(args),
    }
}

/// `serve`, or with `--check` only the validation of its configuration.
async fn serve(config: config::ServeConfig) -> anyhow::Result<()> {
    if config.check {
        println!("{}", app::check(&config)?);
        return Ok(());
    }
    app::serve(config).await
}
