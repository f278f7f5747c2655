//! OpenTelemetry tracing: an event's way through this node as spans in the producer's trace,
//! exported over OTLP/gRPC.
//!
//! Owns: the exporter pipeline (endpoint, the standard `OTEL_*` variables, the sampler, the
//! resource, shutdown), the context an event carries through the stages ([`EventTrace`]), and
//! the spans of those stages: ingest (`notify.ingest`, a child of the producer's context),
//! journal append (`notify.journal.append`), fan-out (`notify.fanout`) and each hand-off to a
//! subscriber's stream (`notify.deliver`). Does not own: where the stages call it (ingest,
//! sequencer, hub, grpc), nor the RPC server spans (`grpc::rpc_span`, which uses [`Tracing`]).
//!
//! Spans are recorded with the OpenTelemetry SDK directly, not bridged from `tracing` spans:
//! an event's stages run on different tasks (the ingest session, the sequencer's batch, every
//! subscriber's stream) where no `tracing` span stack follows it, its parent is a remote
//! context read from the message, and a batch commit serves many traces at once. Direct
//! recording puts each span in its event's trace with the times the stage measured, and when
//! tracing is off the whole cost is one branch on an `Option` per event: no span is built and
//! no subscriber layer runs.
//!
//! Only sampled events carry an [`EventTrace`] past ingest: the sampler decides once, at the
//! ingest span, and an unsampled event costs the later stages nothing. A sampled event records
//! at most [`MAX_HANDOFF_SPANS`] hand-off spans, so a firehose with thousands of subscribers
//! cannot turn one event into thousands of spans.
//!
//! The SDK's batch processor exports from a thread of its own, with a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048 spans): when the collector cannot keep up, new spans are
//! dropped (the SDK logs it), never the events. The OTLP/gRPC exporter needs a Tokio runtime,
//! which that thread does not have: [`OnRuntime`] runs each export on the server's runtime.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator as _},
    trace::{
        Span as _, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _,
        TracerProvider as _,
    },
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchSpanProcessor, SamplingDecision, SdkTracer, SdkTracerProvider, ShouldSample, SpanData,
        SpanExporter,
    },
};
use prost::Message as _;

use crate::schema::Decoded;

/// The most `notify.deliver` spans one sampled event records (the first subscribers to take
/// it); the rest are left out. Also the most one replaying stream records.
pub const MAX_HANDOFF_SPANS: u32 = 64;

/// The most hand-off spans of replayed events recorded per second, all streams together (and
/// at most [`MAX_HANDOFF_SPANS`] per stream).
pub const MAX_REPLAY_SPANS_PER_SECOND: u64 = 512;

/// How long one export may take, retries included: less than the SDK's shutdown timeout (5 s),
/// so a collector that swallows packets cannot keep the exporter thread past shutdown.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Span events a `Subscribe` span keeps (the first ones; the SDK counts the rest as dropped).
pub const MAX_STREAM_SPAN_EVENTS: u32 = 32;

/// The instrumentation scope's name.
const SCOPE: &str = "notify-backbone";

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The OTLP exporter could not be built (a malformed endpoint, most often).
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Tracing on (an exporter pipeline) or off; cheap to clone.
#[derive(Clone, Default)]
pub struct Tracing(Option<Arc<Pipeline>>);

struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The provider's sampler (from `OTEL_TRACES_SAMPLER`), asked before a replayed event's
    /// hand-off span is started, so an unsampled one costs no span and no budget.
    sampler: Box<dyn ShouldSample>,
    /// Replayed hand-off spans recorded in the current second: `second << 32 | count`.
    replay_budget: AtomicU64,
}

impl Pipeline {
    /// A `notify.ingest` span started at `started` under the parent `source` and the event's
    /// own context name, if the sampler keeps it. Sampled first, attributes after: an
    /// unsampled event allocates none of them.
    fn ingest_span(
        &self,
        source: &Source<'_>,
        started: SystemTime,
        traceparent: &str,
        tracestate: &str,
    ) -> Option<opentelemetry_sdk::trace::Span> {
        let parent = parent_context(source, traceparent, tracestate);
        let span = self
            .tracer
            .span_builder("notify.ingest")
            .with_kind(span_kind(source))
            .with_start_time(started)
            .start_with_context(&self.tracer, &parent);
        span.span_context().is_sampled().then_some(span)
    }

    /// One replayed hand-off span more this second, if fewer than
    /// [`MAX_REPLAY_SPANS_PER_SECOND`] were recorded: a storm of resumes after a restart
    /// must not crowd the live events' spans out of the export queue.
    fn take_replay_budget(&self) -> bool {
        let second = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() & 0xffff_ffff);
        self.replay_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let (at, used) = (packed >> 32, packed & 0xffff_ffff);
                if at != second {
                    Some(second << 32 | 1)
                } else if used < MAX_REPLAY_SPANS_PER_SECOND {
                    Some(packed + 1)
                } else {
                    None
                }
            })
            .is_ok()
    }
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

/// Where an event came from, for its ingest span.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A RabbitMQ delivery.
    Amqp {
        /// The exchange it was published to.
        exchange: &'a str,
        /// Its routing key.
        routing_key: &'a str,
        /// Body bytes.
        body_len: usize,
        /// Delivered before (a redelivery after a failure).
        redelivered: bool,
        /// A `traceparent` AMQP header, where the producer set one (it wins over the body's).
        traceparent: Option<&'a str>,
        /// A `tracestate` AMQP header.
        tracestate: Option<&'a str>,
    },
    /// A `Publish` call (or one request of a `PublishStream`).
    Rpc {
        /// The routing key asked for.
        routing_key: &'a str,
        /// Body bytes.
        body_len: usize,
        /// The call's server span (see `grpc::rpc_span`).
        call: Option<&'a Context>,
        /// Whether the call continued its caller's trace (`traceparent` metadata): then the
        /// call's span is the event's parent, else the body's `_trace` is, if it has one.
        continued: bool,
    },
}

/// How a frame reached a subscriber's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From the live feed (the subscriber's mailbox).
    Live,
    /// Replayed from the journal after `resume_after`.
    Resume,
    /// Replayed from the journal after the subscriber lagged.
    CatchUp,
}

impl Delivery {
    /// `live`, `resume` or `catch_up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Live => "live",
            Delivery::Resume => "resume",
            Delivery::CatchUp => "catch_up",
        }
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

    /// Records the ingest span of an accepted event (started at `started`, when the message
    /// arrived) as a child of its producer's context, and returns what the later stages need
    /// if the event is sampled. A sampled event whose own `traceparent` is missing, or names
    /// another trace than its ingest span's (the AMQP header or the call won), gets the ingest
    /// span's: subscribers, the live page and a replay later then lead to where its spans are.
    pub fn ingested(
        &self,
        source: &Source<'_>,
        started: SystemTime,
        decoded: &mut Decoded,
    ) -> Option<EventTrace> {
        let pipeline = self.0.as_ref()?;
        let event = &mut decoded.event;
        let mut span =
            pipeline.ingest_span(source, started, &event.traceparent, &event.tracestate)?;
        let mut attributes = source_attributes(source);
        attributes.push(KeyValue::new("notify.event.id", event.id.clone()));
        attributes.push(KeyValue::new("notify.event.type", event.r#type.clone()));
        span.set_attributes(attributes);
        let own_trace = extract(&event.traceparent, &event.tracestate)
            .span()
            .span_context()
            .trace_id();
        if own_trace != span.span_context().trace_id() {
            event.traceparent = traceparent_of(span.span_context());
            event.tracestate = span.span_context().trace_state().header();
        }
        span.end();
        let cx = Context::new().with_span(span);
        Some(EventTrace(Arc::new(Traced {
            tracer: pipeline.tracer.clone(),
            cx,
            handoffs_left: AtomicU32::new(MAX_HANDOFF_SPANS),
        })))
    }

    /// Records the ingest span of a refused message: its reason (`error.type`) and detail,
    /// in the producer's trace when the headers or the body say which.
    pub fn refused(
        &self,
        source: &Source<'_>,
        started: SystemTime,
        body: &[u8],
        reason: &str,
        detail: &str,
    ) {
        let Some(pipeline) = self.0.as_ref() else {
            return;
        };
        let (traceparent, tracestate) = crate::schema::trace_context(body);
        let Some(mut span) = pipeline.ingest_span(source, started, &traceparent, &tracestate)
        else {
            return;
        };
        let mut attributes = source_attributes(source);
        attributes.push(KeyValue::new("error.type", reason.to_owned()));
        attributes.push(KeyValue::new("notify.refused.reason", reason.to_owned()));
        attributes.push(KeyValue::new("notify.refused.detail", detail.to_owned()));
        span.set_attributes(attributes);
        span.set_status(Status::error(format!("{reason}: {detail}")));
        span.end();
    }

    /// For a replayed frame (an encoded `SubscribeResponse` from the journal), queued now for
    /// a stream: its hand-off span, started now, if its event has a `traceparent`, the sampler
    /// keeps it, and this second's budget ([`MAX_REPLAY_SPANS_PER_SECOND`]) has room. The span
    /// is a child of that `traceparent` (the ingest span for an event traced when it came in).
    pub fn replayed(&self, frame: &[u8], delivery: Delivery) -> Option<Arc<FrameTrace>> {
        let pipeline = self.0.as_ref()?;
        let traced = TracedResponse::decode(frame).ok()?.event?;
        if traced.traceparent.is_empty() {
            return None;
        }
        let parent = extract(&traced.traceparent, &traced.tracestate);
        let trace_id = parent.span().span_context().trace_id();
        if !parent.span().span_context().is_valid() {
            return None;
        }
        let decision = pipeline
            .sampler
            .should_sample(
                Some(&parent),
                trace_id,
                "notify.deliver",
                &SpanKind::Internal,
                &[],
                &[],
            )
            .decision;
        if decision != SamplingDecision::RecordAndSample || !pipeline.take_replay_budget() {
            return None;
        }
        let span = pipeline
            .tracer
            .span_builder("notify.deliver")
            .with_kind(SpanKind::Internal)
            .start_with_context(&pipeline.tracer, &parent);
        Some(Arc::new(FrameTrace {
            delivery,
            trace_id,
            kind: FrameKind::Replayed(Box::new(Mutex::new(Some(span)))),
        }))
    }

    /// Exports what is still queued and stops the exporter thread; waits at most the SDK's
    /// timeout (5 s) when the collector does not answer.
    pub async fn shutdown(&self) {
        let Some(pipeline) = self.0.clone() else {
            return;
        };
        // Blocking: the exporter thread exports on this runtime meanwhile, so not on a worker.
        let done = tokio::task::spawn_blocking(move || pipeline.provider.shutdown()).await;
        if let Ok(Err(error)) = done {
            tracing::warn!(%error, "tracing: the last spans could not be exported");
        }
    }
}

/// A frame of a sampled event on its way to one subscriber's stream (or, live, to all of
/// them: one shared `Arc`).
#[derive(Debug)]
pub struct FrameTrace {
    delivery: Delivery,
    trace_id: TraceId,
    kind: FrameKind,
}

#[derive(Debug)]
enum FrameKind {
    /// From the live feed: the event's trace, and when fan-out queued it.
    Live {
        event: EventTrace,
        queued_at: SystemTime,
    },
    /// From the journal: its hand-off span, started when it was read, ended when the stream
    /// takes the frame (or, never taken, when the frame is dropped).
    Replayed(Box<Mutex<Option<opentelemetry_sdk::trace::Span>>>),
}

impl FrameTrace {
    /// A live frame of `event`, queued now.
    pub fn live(event: EventTrace) -> Arc<Self> {
        Arc::new(Self {
            delivery: Delivery::Live,
            trace_id: event.0.cx.span().span_context().trace_id(),
            kind: FrameKind::Live {
                event,
                queued_at: SystemTime::now(),
            },
        })
    }

    /// Live, or replayed.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// The event's trace id (32 hex digits).
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }

    /// The frame left for subscriber `subscriber`'s stream, `lag` events behind the newest
    /// (`published_at`: when a live event entered the server). Live: at most
    /// [`MAX_HANDOFF_SPANS`] spans per event.
    pub fn handed_off(&self, subscriber: u64, lag: u64, published_at: Option<Instant>) {
        let mut attributes = vec![
            KeyValue::new(
                "notify.subscriber.id",
                i64::try_from(subscriber).unwrap_or(i64::MAX),
            ),
            KeyValue::new("notify.delivery", self.delivery.as_str()),
            KeyValue::new(
                "notify.delivery.lag",
                i64::try_from(lag).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(at) = published_at {
            attributes.push(KeyValue::new(
                "notify.delivery.latency_ms",
                at.elapsed().as_secs_f64() * 1000.0,
            ));
        }
        match &self.kind {
            FrameKind::Live { event, queued_at } => event.handed_off(*queued_at, attributes),
            FrameKind::Replayed(span) => {
                let span = span
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take();
                if let Some(mut span) = span {
                    span.set_attributes(attributes);
                    span.end();
                }
            }
        }
    }
}

impl Drop for FrameTrace {
    fn drop(&mut self) {
        if let FrameKind::Replayed(span) = &mut self.kind {
            let span = span
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(mut span) = span {
                // The stream ended before it sent this frame.
                span.set_attribute(KeyValue::new("notify.delivered", false));
                span.end();
            }
        }
    }
}

/// A sampled event's trace while it travels through this node; cheap to clone.
#[derive(Clone)]
pub struct EventTrace(Arc<Traced>);

struct Traced {
    tracer: SdkTracer,
    /// The ingest span: the parent of the rest.
    cx: Context,
    handoffs_left: AtomicU32,
}

impl std::fmt::Debug for EventTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventTrace({})", self.trace_id())
    }
}

impl EventTrace {
    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> String {
        self.0.cx.span().span_context().trace_id().to_string()
    }

    /// The journal append that stored the event: `batch` events in one commit, which ran
    /// from `started` to `ended` (the durability wait included).
    pub fn journaled(&self, started: SystemTime, ended: SystemTime, batch: usize, duplicate: bool) {
        let attributes = vec![
            KeyValue::new("notify.journal.batch_size", batch as i64),
            KeyValue::new("notify.journal.duplicate", duplicate),
        ];
        self.record("notify.journal.append", started, ended, attributes);
    }

    /// The fan-out that handed the event to `subscribers` subscribers' queues.
    pub fn fanned_out(&self, started: SystemTime, ended: SystemTime, subscribers: u64) {
        let attributes = vec![KeyValue::new(
            "notify.fanout.subscribers",
            i64::try_from(subscribers).unwrap_or(i64::MAX),
        )];
        self.record("notify.fanout", started, ended, attributes);
    }

    /// A hand-off span of the live feed, if this event has not recorded
    /// [`MAX_HANDOFF_SPANS`] yet.
    fn handed_off(&self, queued_at: SystemTime, attributes: Vec<KeyValue>) {
        let left = self
            .0
            .handoffs_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if left.is_ok() {
            self.record("notify.deliver", queued_at, SystemTime::now(), attributes);
        }
    }

    /// The journal refused the batch that held the event: an error span, and the trace ends.
    pub fn journal_failed(&self, started: SystemTime, ended: SystemTime, error: &str) {
        let tracer = &self.0.tracer;
        let mut span = tracer
            .span_builder("notify.journal.append")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start_with_context(tracer, &self.0.cx);
        span.set_status(Status::error(error.to_owned()));
        span.end_with_timestamp(ended.max(started));
    }

    fn record(
        &self,
        name: &'static str,
        started: SystemTime,
        ended: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        let tracer = &self.0.tracer;
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.0.cx);
        span.end_with_timestamp(ended.max(started));
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

fn span_kind(source: &Source<'_>) -> SpanKind {
    match source {
        Source::Amqp { .. } => SpanKind::Consumer,
        Source::Rpc { .. } => SpanKind::Internal,
    }
}

/// The messaging semantic conventions' attributes of a delivery, or the call's.
fn source_attributes(source: &Source<'_>) -> Vec<KeyValue> {
    match *source {
        Source::Amqp {
            exchange,
            routing_key,
            body_len,
            redelivered,
            ..
        } => vec![
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", exchange.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                routing_key.to_owned(),
            ),
            KeyValue::new("messaging.message.body.size", body_len as i64),
            KeyValue::new("notify.redelivered", redelivered),
        ],
        Source::Rpc {
            routing_key,
            body_len,
            ..
        } => vec![
            KeyValue::new("notify.ingest.path", "publish"),
            KeyValue::new("notify.routing_key", routing_key.to_owned()),
            KeyValue::new("messaging.message.body.size", body_len as i64),
        ],
    }
}

/// The parent of an ingest span: the AMQP headers' context, or the call's span, or else the
/// event's own `traceparent` (the body's `_trace`); an empty context (a new trace) if none.
fn parent_context(source: &Source<'_>, traceparent: &str, tracestate: &str) -> Context {
    match source {
        Source::Amqp {
            traceparent: Some(header),
            tracestate: state,
            ..
        } => {
            let cx = extract(header, state.unwrap_or(""));
            if cx.span().span_context().is_valid() {
                return cx;
            }
        }
        Source::Rpc {
            call: Some(call),
            continued: true,
            ..
        } => return (*call).clone(),
        _ => {}
    }
    let own = extract(traceparent, tracestate);
    match source {
        // A call that started a trace of its own is the parent only of events with no context.
        Source::Rpc {
            call: Some(call), ..
        } if !own.span().span_context().is_valid() => (*call).clone(),
        _ => own,
    }
}

/// A W3C `traceparent`/`tracestate` pair as a parent context (empty if malformed).
pub(crate) fn extract(traceparent: &str, tracestate: &str) -> Context {
    struct Pair<'a>(&'a str, &'a str);
    impl Extractor for Pair<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" if !self.0.is_empty() => Some(self.0),
                "tracestate" if !self.1.is_empty() => Some(self.1),
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    if traceparent.is_empty() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&Pair(traceparent, tracestate))
}

/// `00-<trace id>-<span id>-<flags>`.
fn traceparent_of(span: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

/// Just enough of a stored `SubscribeResponse { event }` to find its trace: prost skips the
/// other fields without decoding them.
#[derive(Clone, PartialEq, prost::Message)]
struct TracedResponse {
    #[prost(message, optional, tag = "1")]
    event: Option<TracedEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TracedEvent {
    #[prost(string, tag = "8")]
    traceparent: String,
    #[prost(string, tag = "9")]
    tracestate: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn a_traceparent_becomes_the_parent_and_a_bad_one_starts_a_new_trace() {
        let cx = extract(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "vendor=x",
        );
        let span = cx.span().span_context().clone();
        assert!(span.is_valid() && span.is_sampled() && span.is_remote());
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            traceparent_of(&span),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in ["", "garbage", "00-0000-0000-01"] {
            assert!(!extract(bad, "").span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn the_trace_of_a_stored_frame_is_read_without_decoding_the_event() {
        let frame = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Event(pb::Event {
                id: "e1".into(),
                r#type: "device.started".into(),
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ..pb::Event::default()
            })),
        }
        .encode_to_vec();
        let traced = TracedResponse::decode(frame.as_slice())
            .unwrap()
            .event
            .unwrap();
        assert_eq!(
            traced.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn a_refused_body_still_names_its_trace_when_it_is_json() {
        let (parent, state) = crate::schema::trace_context(
            br#"{"a":1,"_trace":{"traceparent":"00-x","tracestate":"s"}}"#,
        );
        assert_eq!((parent.as_str(), state.as_str()), ("00-x", "s"));
        assert_eq!(
            crate::schema::trace_context(b"{not json"),
            (String::new(), String::new())
        );
    }

    #[test]
    fn off_records_nothing() {
        let tracing = Tracing::off();
        assert!(!tracing.is_on());
        let mut decoded = Decoded {
            event: pb::Event::default(),
            admin_notice: None,
        };
        let source = Source::Rpc {
            routing_key: "device.started",
            body_len: 2,
            call: None,
            continued: false,
        };
        assert!(
            tracing
                .ingested(&source, SystemTime::now(), &mut decoded)
                .is_none()
        );
        assert!(decoded.event.traceparent.is_empty());
    }
}
