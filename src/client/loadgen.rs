//! `loadgen`: the project's load generator. (Being written.)

use clap::Args;

/// Arguments of `loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

/// Runs the load generator.
pub async fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    anyhow::bail!("loadgen is not implemented yet ({})", args.server)
}
