//! `notify-bench`: the load generator of notify-backbone, whose figures go into BENCHMARKS.md.
//!
//! A crate of its own so that the server's library and binary carry none of it (its HDR
//! histograms, its AMQP publishers, its scenarios). It talks to a running server over the
//! network like any client, through the server library's generated stubs and token helpers.

mod loadgen;

use clap::Parser;

/// Subscribers and publishers against a running notify-backbone server: latency, throughput,
/// memory and CPU per event.
#[derive(Debug, Parser)]
#[command(name = "notify-bench", version)]
struct Cli {
    #[command(flatten)]
    args: loadgen::LoadgenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loadgen::loadgen(Cli::parse().args).await
}
