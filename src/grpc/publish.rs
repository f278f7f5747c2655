//! The publish path of the gRPC port, shared by `Publish` and `PublishStream`: the request's
//! rate check, validation and decoding (a producer's JSON or a typed event), its ingest span,
//! and the hand-off to the node's writer.
//!
//! Owns: [`PublishPath`] and what a published event's answer says ([`published_response`]).
//! Does not own: the token's check (the service, once per call or stream), the writer (any
//! [`Writer`]: the sequencer, or in cluster mode the forwarder), or the status codes (`error`).
//! Its own module so that `service` (the RPCs) and `publish_stream` (one stream's requests and
//! answers) both use it without importing each other.

use std::{sync::Arc, time::SystemTime};

use tonic::Status;

use super::{
    error::{ApiError, rejected},
    limits::RateLimiter,
    rpc_span::CallSpan,
};
use crate::{
    auth::Principal,
    otel::{self, EventTrace, Tracing},
    pb::{self, publish_request::Body},
    schema::{self, DecodeSettings, Decoded, Properties},
    telemetry::Metrics,
    write::{self, Published, Receipt, Writer},
};

/// What publishing through the gRPC port needs; cheap to clone.
#[derive(Clone)]
pub(super) struct PublishPath {
    /// Where accepted events go: the sequencer, or the cluster's writer.
    pub writer: Arc<dyn Writer>,
    /// Decoding options (`--strict-schema`, `--max-event-bytes`).
    pub decode: DecodeSettings,
    /// Ingest spans of published events, when tracing is on.
    pub tracing: Tracing,
    /// `Publish` calls (and `PublishStream` requests) per principal.
    pub publish_rate: Arc<RateLimiter>,
    /// Metrics to count rejections in.
    pub metrics: Arc<Metrics>,
}

impl PublishPath {
    /// One `Publish` call's request (the caller's token and rate were checked): decoded and
    /// handed to the writer; answers once the event is journaled.
    pub(super) async fn publish_one(
        &self,
        request: pb::PublishRequest,
        call: Option<&CallSpan>,
    ) -> Result<pb::PublishResponse, ApiError> {
        let (decoded, trace) = self.decode_request(request, call)?;
        let published = write::publish(&*self.writer, decoded, trace).await?;
        Ok(published_response(published))
    }

    /// One request of a `PublishStream` from `principal`, checked like a `Publish` call (the
    /// token was checked when the stream opened) and handed to the writer: the receipt
    /// resolves once the event is journaled. Waits only while the writer's queue is full.
    pub(super) async fn submit_one(
        &self,
        principal: &Principal,
        request: pb::PublishRequest,
        call: Option<&CallSpan>,
    ) -> Result<Receipt, ApiError> {
        self.publish_rate.check(&principal.user_id)?;
        let (decoded, trace) = self.decode_request(request, call)?;
        Ok(self.writer.submit_traced(decoded, trace).await?)
    }

    /// Validates and decodes a `PublishRequest` body, as a producer's JSON or a typed event;
    /// with tracing on, records its ingest span under `call` (the RPC's span).
    fn decode_request(
        &self,
        request: pb::PublishRequest,
        call: Option<&CallSpan>,
    ) -> Result<(Decoded, Option<EventTrace>), ApiError> {
        let props = Properties {
            timestamp_ms: None,
            received_at: SystemTime::now(),
        };
        // Measured only for the ingest span.
        let body_len = match &request.body {
            _ if !self.tracing.is_on() => 0,
            Some(Body::Json(json)) => json.len(),
            Some(Body::Event(event)) => prost::Message::encoded_len(event),
            None => 0,
        };
        let decoded = match request.body {
            None => Err(ApiError::Missing("body (json or event)")),
            Some(Body::Json(_)) if request.routing_key.is_empty() => {
                Err(ApiError::Missing("routing_key"))
            }
            Some(Body::Json(json)) => {
                schema::decode(&request.routing_key, &json, &props, self.decode)
                    .map_err(ApiError::from)
            }
            Some(Body::Event(event)) => {
                schema::accept_typed(&request.routing_key, event, &props, self.decode)
                    .map_err(ApiError::from)
            }
        };
        if !self.tracing.is_on() {
            return Ok((decoded?, None));
        }
        let source = otel::Source::Rpc {
            routing_key: &request.routing_key,
            body_len,
            call: call.map(|call| &call.cx),
            continued: call.is_some_and(|call| call.continued),
        };
        match decoded {
            Ok(mut decoded) => {
                let trace = self
                    .tracing
                    .ingested(&source, props.received_at, &mut decoded);
                Ok((decoded, trace))
            }
            Err(error) => {
                self.tracing.refused(
                    &source,
                    props.received_at,
                    &[],
                    error.reason(),
                    &error.to_string(),
                );
                Err(error)
            }
        }
    }

    /// Counts a refused request and gives its status.
    pub(super) fn reject(&self, error: ApiError) -> Status {
        rejected(&self.metrics, error)
    }
}

/// What `Publish` (and each answer of `PublishStream`) says of a published event.
pub(super) fn published_response(published: Published) -> pb::PublishResponse {
    pb::PublishResponse {
        id: published.id,
        cursor: published.cursor.to_string(),
        duplicate: published.duplicate,
    }
}
