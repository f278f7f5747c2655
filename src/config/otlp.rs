//! The "Tracing" flag, and where traces go when the flag is not given (the OpenTelemetry
//! environment variables).
//!
//! Owns: the choice of the OTLP endpoint ([`TracingFlags::otlp_traces_endpoint`]). Does not
//! own: exporting (`otel`).

use clap::Args;

/// The "Tracing" flags.
#[derive(Debug, Clone, Args)]
pub struct TracingFlags {
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector, e.g.
    /// `http://otel-collector:4317`; off when unset (no cost then). Without the flag,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT. The other standard
    /// variables apply: OTEL_SERVICE_NAME (default notify-backbone), OTEL_RESOURCE_ATTRIBUTES,
    /// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default: follow the producer's sampling
    /// decision, sample events without one), OTEL_BSP_* (the export queue); OTEL_SDK_DISABLED=true
    /// or OTEL_TRACES_EXPORTER=none turn it off.
    #[arg(long, help_heading = "Tracing")]
    pub otlp_endpoint: Option<String>,
}

impl TracingFlags {
    /// Where traces are exported, if anywhere: `--otlp-endpoint`, else
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT (the specification's
    /// order, an explicit flag first); `None` when OTEL_SDK_DISABLED=true or
    /// OTEL_TRACES_EXPORTER=none.
    pub fn otlp_traces_endpoint(&self) -> Option<String> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        self.otlp_endpoint
            .clone()
            .filter(|endpoint| !endpoint.trim().is_empty())
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }
}
