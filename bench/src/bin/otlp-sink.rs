//! `otlp-sink`: an OTLP/gRPC trace receiver that counts what it is sent and throws it away, so
//! a benchmark of notify-backbone with tracing on pays for exporting real spans over the network
//! without a collector's own CPU on the machine. On SIGINT/SIGTERM it prints the totals.
//!
//!   otlp-sink --listen 127.0.0.1:4317

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

/// Receives OTLP traces and counts them.
#[derive(Debug, Parser)]
#[command(name = "otlp-sink", version)]
struct Cli {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: std::net::SocketAddr,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    spans: AtomicU64,
}

#[derive(Clone)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let counts = Arc::new(Counts::default());
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    eprintln!("otlp-sink: listening on {}", cli.listen);
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink(Arc::clone(&counts))))
        .serve_with_shutdown(cli.listen, stop)
        .await?;
    println!(
        "otlp-sink: {} spans in {} export requests",
        counts.spans.load(Ordering::Relaxed),
        counts.requests.load(Ordering::Relaxed)
    );
    Ok(())
}
