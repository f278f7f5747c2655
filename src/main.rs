//! The `notify-backbone` binary: parse the command line, start logging, hand over.

use clap::Parser;
use notify_backbone::{
    app, client,
    config::{Cli, Command},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging();
    match cli.command {
        None => app::serve(cli.serve).await,
        Some(Command::Serve(config)) => app::serve(*config).await,
        Some(Command::Subscribe(args)) => client::subscribe(args).await,
        Some(Command::Publish(args)) => client::publish(args).await,
        Some(Command::Loadgen(args)) => client::loadgen(args).await,
        Some(Command::Token(args)) => client::token(args),
    }
}
