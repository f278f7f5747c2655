//! The OpenTelemetry server span of each `NotificationService` call, after the RPC semantic
//! conventions: named `cloudphone.notify.v1.NotificationService/<Method>`, kind server,
//! `rpc.system` = `grpc`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `client.address`,
//! a child of the caller's `traceparent` metadata.
//!
//! Owns: starting the span when the request arrives, putting its context in the request's
//! extensions ([`CallSpan`]: `Publish` makes it the parent of its events' ingest spans,
//! `Subscribe` adds what it delivers as span events), and ending it when the response body
//! ends, from the `grpc-status` it carries, so a `Subscribe` has one span for its whole life.
//! Does not own: the spans of an event's way (`otel`). Health checks and reflection get no
//! span. With tracing off the layer passes requests through untouched.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use opentelemetry::{
    Context as TraceContext, KeyValue,
    propagation::{Extractor, TextMapPropagator as _},
    trace::{SpanKind, Status as SpanStatus, TraceContextExt as _, Tracer as _},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::body::Body;

use super::connections::Connection;
use crate::otel::Tracing;

/// The service whose calls get spans.
const SERVICE: &str = "cloudphone.notify.v1.NotificationService";

/// A call's server span, in its request's extensions when tracing is on.
#[derive(Clone, Debug)]
pub struct CallSpan {
    /// The span, as a context to be the parent of others.
    pub cx: TraceContext,
    /// Whether the caller sent a trace context (`traceparent` metadata) that it continues.
    pub continued: bool,
}

impl CallSpan {
    /// The span of the call whose extensions these are.
    pub fn of(extensions: &http::Extensions) -> Option<&CallSpan> {
        extensions.get::<CallSpan>()
    }
}

/// Starts and ends the RPC spans (see the module docs).
#[derive(Clone, Debug)]
pub struct RpcSpanLayer {
    tracing: Tracing,
}

impl RpcSpanLayer {
    /// Spans recorded with `tracing` (none when it is off).
    pub fn new(tracing: Tracing) -> Self {
        Self { tracing }
    }
}

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpans {
            inner,
            tracing: self.tracing.clone(),
        }
    }
}

/// The service of [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpans<S> {
    inner: S,
    tracing: Tracing,
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for RpcSpans<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(call) = self.start(&request) else {
            return Box::pin(self.inner.call(request));
        };
        let span = call.cx.clone();
        request.extensions_mut().insert(call);
        let answer = self.inner.call(request);
        Box::pin(async move {
            // Ends the span as CANCELLED if this future is dropped before an answer (a client
            // that gave up on a `Publish` still waiting for the journal).
            let mut unanswered = Spanned {
                body: Body::empty(),
                span,
                ended: false,
            };
            let response = answer.await;
            unanswered.ended = true;
            let span = unanswered.span.clone();
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    end(&span, tonic::Code::Unknown as i32);
                    return Err(error);
                }
            };
            // A call refused before its body (trailers-only) carries its status in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                end(&span, code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Spanned {
                    body,
                    span,
                    ended: false,
                })
            }))
        })
    }
}

impl<S> RpcSpans<S> {
    /// The call's span, if tracing is on and the call is one of the service's.
    fn start<B>(&self, request: &http::Request<B>) -> Option<CallSpan> {
        let tracer = self.tracing.tracer()?;
        let path = request.uri().path();
        let method = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE)?
            .strip_prefix('/')?;
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", SERVICE),
            KeyValue::new("rpc.method", method.to_owned()),
        ];
        if let Some(remote) = Connection::of(request.extensions()).and_then(|c| c.remote) {
            attributes.push(KeyValue::new("client.address", remote.ip().to_string()));
            attributes.push(KeyValue::new("client.port", i64::from(remote.port())));
        }
        let span = tracer
            .span_builder(path[1..].to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let continued = parent.span().span_context().is_valid();
        Some(CallSpan {
            cx: parent.with_span(span),
            continued,
        })
    }
}

/// Ends a call's span with its gRPC status code. Server spans count as errors only for the
/// codes the conventions name (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS): a refused token is the client's mistake, not the server's.
fn end(span: &TraceContext, code: i32) {
    let span = span.span();
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.set_status(SpanStatus::error(format!("gRPC status {code}")));
    }
    span.end();
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A response body that ends its call's span when it ends (or is dropped: the client went
/// away, reported as CANCELLED).
struct Spanned {
    body: Body,
    span: TraceContext,
    ended: bool,
}

impl http_body::Body for Spanned {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if !self.ended {
            let code = match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(2))
                }
                Poll::Ready(Some(Err(status))) => Some(status.code() as i32),
                Poll::Ready(None) => Some(0),
                Poll::Pending => None,
            };
            if let Some(code) = code {
                self.ended = true;
                end(&self.span, code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Spanned {
    fn drop(&mut self) {
        if !self.ended {
            end(&self.span, tonic::Code::Cancelled as i32);
        }
    }
}

/// Request headers as the propagator reads them (`traceparent`, `tracestate`).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
