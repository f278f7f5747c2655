//! [`Tracing`]: the exporter pipeline, on or off. Owns the OTLP/gRPC exporter (run on the
//! server's runtime), the sampler and the resource read from the standard `OTEL_*` variables,
//! and shutdown. Does not own the spans themselves (`ingest`, `event`, `delivery`, `replay`).

use std::sync::{Arc, atomic::AtomicU64};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{
        BatchSpanProcessor, SdkTracer, SdkTracerProvider, ShouldSample, SpanData, SpanExporter,
    },
};

/// How long one export may take, retries included: less than the SDK's shutdown timeout (5 s),
/// so a collector that swallows packets cannot keep the exporter thread past shutdown.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Span events a `Subscribe` span keeps (the first ones; the SDK counts the rest as dropped).
const MAX_STREAM_SPAN_EVENTS: u32 = 32;

/// The instrumentation scope's name.
const SCOPE: &str = "notify-backbone";

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The OTLP exporter could not be built (a malformed endpoint, most often).
    #[error("OTLP exporter for {endpoint}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Tracing on (an exporter pipeline) or off; cheap to clone.
#[derive(Clone, Default)]
pub struct Tracing(pub(super) Option<Arc<Pipeline>>);

pub(super) struct Pipeline {
    provider: SdkTracerProvider,
    pub(super) tracer: SdkTracer,
    /// The provider's sampler (from `OTEL_TRACES_SAMPLER`), asked before a replayed event's
    /// hand-off span is started, so an unsampled one costs no span and no budget.
    pub(super) sampler: Box<dyn ShouldSample>,
    /// Replayed hand-off spans recorded in the current second: `second << 32 | count`.
    pub(super) replay_budget: AtomicU64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() {
            "Tracing(on)"
        } else {
            "Tracing(off)"
        })
    }
}

impl Tracing {
    /// Tracing off: nothing recorded, nothing exported, no thread.
    pub fn off() -> Self {
        Self(None)
    }

    /// Starts exporting to the OTLP/gRPC `endpoint` (e.g. `http://collector:4317`). The
    /// sampler comes from `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default: follow the
    /// producer's decision, sample what has no parent), the service name from
    /// `OTEL_SERVICE_NAME` (default `notify-backbone`), more resource attributes from
    /// `OTEL_RESOURCE_ATTRIBUTES`. Must be called on the server's Tokio runtime.
    pub fn start(endpoint: &str, node_id: &str, version: &str) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| OtelError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let exporter = OnRuntime {
            inner: exporter,
            runtime: tokio::runtime::Handle::current(),
        };
        let mut resource = Resource::builder();
        if !service_name_from_env() {
            resource = resource.with_service_name(SCOPE);
        }
        let resource = resource
            .with_attributes([
                KeyValue::new("service.version", version.to_owned()),
                KeyValue::new("service.instance.id", node_id.to_owned()),
            ])
            .build();
        // The SDK's default configuration reads OTEL_TRACES_SAMPLER(_ARG).
        let sampler = opentelemetry_sdk::trace::Config::default().sampler;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(sampler.clone())
            // Only a `Subscribe` span has events (the sampled events it delivered), and it lives
            // as long as its stream: this bounds what each open stream's span holds.
            .with_max_events_per_span(MAX_STREAM_SPAN_EVENTS)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(SCOPE);
        Ok(Self(Some(Arc::new(Pipeline {
            provider,
            tracer,
            sampler,
            replay_budget: AtomicU64::new(0),
        }))))
    }

    /// Whether spans are recorded and exported.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The tracer, when on (for the RPC spans).
    pub(crate) fn tracer(&self) -> Option<&SdkTracer> {
        self.0.as_ref().map(|pipeline| &pipeline.tracer)
    }

    /// Exports what is still queued and stops the exporter thread; waits at most `timeout` when
    /// the collector does not answer (what is left of the shutdown's grace).
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        let Some(pipeline) = self.0.clone() else {
            return;
        };
        // Blocking: the exporter thread exports on this runtime meanwhile, so not on a worker.
        let done =
            tokio::task::spawn_blocking(move || pipeline.provider.shutdown_with_timeout(timeout))
                .await;
        if let Ok(Err(error)) = done {
            tracing::warn!(%error, "tracing: the last spans could not be exported");
        }
    }
}

/// Runs the OTLP/gRPC exporter on the server's runtime. The SDK's batch processor calls
/// `export` on a thread of its own with no Tokio runtime, where tonic's channel would panic
/// ("there is no reactor running"); `Handle::block_on` from that thread drives the export on the
/// server's runtime instead.
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        // Bounded here too: the exporter's own timeout applies per attempt, not to its retries.
        let result = self.runtime.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, self.inner.export(batch))
                .await
                .unwrap_or(Err(opentelemetry_sdk::error::OTelSdkError::Timeout(
                    EXPORT_TIMEOUT,
                )))
        });
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Whether the environment names the service (`OTEL_SERVICE_NAME`, or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`): then that name is used, as operators expect.
fn service_name_from_env() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|value| {
            value
                .split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// The binary prints error chains: the message names the endpoint, and the exporter's own
    /// complaint comes next in the chain, once.
    #[tokio::test]
    async fn a_malformed_endpoint_is_refused_naming_it_and_its_cause_once() {
        let Err(error) = Tracing::start("not a uri", "node-1", "0.0.0") else {
            panic!("an exporter for a malformed endpoint");
        };
        assert_eq!(error.to_string(), "OTLP exporter for not a uri");
        let cause = error.source().expect("the exporter's error").to_string();
        assert!(
            !cause.is_empty() && !cause.contains("OTLP exporter for"),
            "{cause}"
        );
    }
}
