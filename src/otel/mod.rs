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
//! which that thread does not have: `OnRuntime` (in `pipeline`) runs each export on the server's
//! runtime.
//!
//! The files, one concept each: `pipeline` ([`Tracing`]: the exporter, the sampler and the
//! resource, shutdown), `ingest` (an event's ingest span and its parent, [`Source`]), `event`
//! ([`EventTrace`]: a sampled event's later stages), `delivery` ([`FrameTrace`]: the hand-off
//! of a frame to a stream), `replay` (hand-off spans of replayed events, within their budget),
//! `context` (W3C `traceparent`/`tracestate`).

mod context;
mod delivery;
mod event;
mod ingest;
mod pipeline;
mod replay;

pub use delivery::{Delivery, FrameTrace};
pub use event::{EventTrace, MAX_HANDOFF_SPANS};
pub use ingest::Source;
pub use pipeline::{OtelError, Tracing};
