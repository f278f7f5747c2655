//! `PublishStream`: many `Publish` requests on one call, for services that publish continuously.
//! The token is checked once, when the stream opens (by the service), instead of on every call.
//!
//! Owns: reading the requests in order, answering each one in the same order once its event is
//! journaled or refused, keeping at most [`IN_FLIGHT`] requests unanswered, and ending the call
//! when the client stops sending, the token expires or the server shuts down. Does not own: what
//! makes a request valid or how it is published (`publish`'s `submit_one`, the same path as
//! `Publish`), or the status codes (`error`).
//!
//! Flow control: a reader task reads a request only when there is room among the unanswered
//! ones. A client that sends faster than events are journaled, or does not read its answers,
//! is held back by HTTP/2 flow control: the server never buffers more than [`IN_FLIGHT`]
//! requests of one stream.

use std::{pin::Pin, sync::Arc, time::SystemTime};

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Code, Status, Streaming};

use tokio_util::sync::CancellationToken;

use super::{
    error::ApiError,
    limits::{LimitError, StreamPermit},
    publish::{PublishPath, published_response},
    rpc_span::CallSpan,
};
use crate::{
    auth::Principal,
    pb::{self, publish_stream_response::Result as Outcome},
    write::Receipt,
};

/// Requests of one stream read and not answered yet. Past it, the stream's requests wait in
/// the client's HTTP/2 window. Large enough to keep the journal's batches full at the rates one
/// service publishes (the sequencer journals up to its whole queue in one commit).
pub const IN_FLIGHT: usize = 1024;

/// The answers of one `PublishStream`.
pub type PublishResponses =
    Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send>>;

/// What the reader hands to the answering side, in request order.
enum Pending {
    /// A request: handed to the writer (its receipt) or refused.
    Request(Result<Receipt, ApiError>),
    /// The stream ends with this status after everything before it was answered.
    End(Status),
}

/// Starts reading `requests` and returns the stream of answers; `shutdown` ends the stream.
/// `call` is the stream's span (tracing on): the parent of its events' ingest spans.
pub(super) fn respond(
    service: PublishPath,
    shutdown: CancellationToken,
    principal: Arc<Principal>,
    permit: StreamPermit,
    requests: Streaming<pb::PublishStreamRequest>,
    call: Option<CallSpan>,
) -> PublishResponses {
    let (pending, answers) = mpsc::channel(IN_FLIGHT);
    let metrics = Arc::clone(&service.metrics);
    let reader = Reader {
        service,
        shutdown,
        principal,
        _permit: permit,
    };
    tokio::spawn(read(reader, requests, pending, call));
    Box::pin(ReceiverStream::new(answers).then(move |pending| {
        let metrics = Arc::clone(&metrics);
        async move {
            let outcome = match pending {
                Pending::Request(Ok(receipt)) => receipt.await.map_err(ApiError::from),
                Pending::Request(Err(error)) => Err(error),
                Pending::End(status) => return Err(status),
            };
            let result = match outcome {
                Ok(published) => Outcome::Published(published_response(published)),
                Err(error) => {
                    metrics.record_rejected(error.reason());
                    let reason = error.reason().to_owned();
                    let status = Status::from(error);
                    Outcome::Error(pb::PublishError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        reason,
                    })
                }
            };
            Ok(pb::PublishStreamResponse {
                result: Some(result),
            })
        }
    }))
}

/// What the reader of one stream holds while it reads.
struct Reader {
    service: PublishPath,
    shutdown: CancellationToken,
    principal: Arc<Principal>,
    /// The stream's place under the stream limits, given back when the reader ends.
    _permit: StreamPermit,
}

/// Reads the requests in order and hands each to the writer, until the client has sent its
/// last one, the stream breaks, the token expires or the server shuts down.
async fn read(
    reader: Reader,
    mut requests: Streaming<pb::PublishStreamRequest>,
    pending: mpsc::Sender<Pending>,
    call: Option<CallSpan>,
) {
    // A long-lived stream's events are children of its span only if the caller continued a
    // trace: otherwise each starts its own (or continues its body's `_trace`), rather than all
    // landing in one ever-growing trace.
    let call = call.filter(|call| call.continued);
    let (service, principal) = (&reader.service, &reader.principal);
    let valid_for = principal
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let expired = tokio::time::sleep(valid_for);
    tokio::pin!(expired);
    let end = loop {
        // Room for one more answer first: this is what bounds the unanswered requests.
        let permit = tokio::select! {
            permit = pending.reserve() => match permit {
                Ok(permit) => permit,
                // The client is gone: nobody reads the answers.
                Err(_) => return,
            },
            () = reader.shutdown.cancelled() => return,
        };
        let request = tokio::select! {
            biased;
            () = reader.shutdown.cancelled() => break Some(Status::unavailable(
                "server is shutting down; requests without an answer were not published: \
                 send them again on a new stream",
            )),
            () = &mut expired => break Some(Status::unauthenticated(
                "token expired; requests without an answer were not published: open a new \
                 stream with a fresh token and send them again",
            )),
            request = requests.message() => request,
        };
        match request {
            Ok(Some(request)) => {
                // A request without its `publish` is refused like a `Publish` without a body.
                let request = request.publish.unwrap_or_default();
                let submitted = service.submit_one(principal, request, call.as_ref()).await;
                permit.send(Pending::Request(submitted));
            }
            // The client has sent everything: the answers end once the last is sent.
            Ok(None) => break None,
            // A request message over the size the server reads at all: the stream cannot
            // skip it (its bytes would have to be read), so it ends here.
            Err(status) if status.code() == Code::OutOfRange => {
                break Some(service.reject(ApiError::Limit(LimitError::MessageTooLarge)));
            }
            // The request stream broke (reset, bad frame): nobody to answer.
            Err(_) => return,
        }
    };
    if let Some(status) = end {
        // After everything read so far is answered (the answers are in order).
        let _ = pending.send(Pending::End(status)).await;
    }
}
