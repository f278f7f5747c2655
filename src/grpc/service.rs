//! `NotificationService`: each method is extract → validate → call the domain → convert. The
//! inbox's calls are in `inbox.rs`.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use opentelemetry::{Context as TraceContext, KeyValue, trace::TraceContextExt as _};

use super::{
    codec::EncodedResponse,
    connections::Connection,
    error::{ApiError, rejected},
    limits::{RateLimiter, StreamCounter, StreamPermit},
    publish::PublishPath,
    publish_stream::{self, PublishResponses},
    rpc_span::CallSpan,
};
use crate::{
    auth::{Authenticator, Principal, Wants},
    hub::{Filter, FilterSettings, Hub, StormControl, StreamOptions, Subscription, Users},
    otel::Tracing,
    pb::{self, notification_service_server::NotificationService},
    schema::DecodeSettings,
    store::Cursor,
    telemetry::Metrics,
    write::Writer,
};

/// The service's dependencies and limits.
#[derive(Clone)]
pub struct NotifyService {
    /// The fan-out hub (for `Subscribe`).
    pub hub: Hub,
    /// Where `Publish` hands events: the sequencer, or the cluster's forwarder to its writer.
    pub publisher: Arc<dyn Writer>,
    /// Metrics to count rejections in.
    pub metrics: Arc<Metrics>,
    /// Decoding options (`--strict-schema`, `--max-event-bytes`).
    pub decode: DecodeSettings,
    /// Tokens and who may do what.
    pub auth: Arc<Authenticator>,
    /// `--max-event-types`, `--max-pattern-len`.
    pub filter_limits: FilterSettings,
    /// Open streams per connection and per principal.
    pub streams: Arc<StreamCounter>,
    /// `Publish` calls (and `PublishStream` requests) per principal.
    pub publish_rate: Arc<RateLimiter>,
    /// Inbox marks and preference changes per principal.
    pub inbox_rate: Arc<RateLimiter>,
    /// Cancelled at shutdown: open `PublishStream`s answer what they read and end.
    pub shutdown: CancellationToken,
    /// Ingest spans of published events, when tracing is on.
    pub tracing: Tracing,
}

impl NotifyService {
    /// The caller behind the request's `authorization` metadata.
    fn principal<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, ApiError> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        Ok(self.auth.authenticate(authorization)?)
    }

    /// The filter for what `principal` asks for, once the policy allows it.
    fn authorized_filter(
        &self,
        principal: &Principal,
        user_id: &str,
        admin_feed: bool,
        event_types: &[String],
        device_id: &str,
    ) -> Result<Filter, ApiError> {
        let wants = match user_id {
            "" => Wants::Own,
            "*" => Wants::Firehose,
            user => Wants::User(user),
        };
        self.auth
            .policy
            .may_subscribe(principal, wants, admin_feed)?;
        Ok(Filter::new(
            selection(principal, wants, admin_feed),
            admin_feed,
            event_types,
            device_id,
            self.filter_limits,
        )?)
    }

    async fn list(
        &self,
        principal: &Principal,
        request: &pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, ApiError> {
        let filter = self.authorized_filter(
            principal,
            &request.user_id,
            false,
            &request.event_types,
            &request.device_id,
        )?;
        let after = optional_cursor("after", &request.after)?;
        let before = optional_cursor("before", &request.before)?;
        if request.newest_first && after.is_some() {
            return Err(ApiError::Conflicting(
                "after pages oldest first: with newest_first, continue with before",
            ));
        }
        if !request.newest_first && before.is_some() {
            return Err(ApiError::Conflicting(
                "before pages newest first: set newest_first, or continue with after",
            ));
        }
        let limit = match request.limit {
            0 => LIST_DEFAULT_LIMIT,
            n => usize::try_from(n)
                .unwrap_or(LIST_MAX_LIMIT)
                .min(LIST_MAX_LIMIT),
        };
        let viewer = self.auth.policy.viewer(principal);
        let page = if request.newest_first {
            self.hub.list_newest(filter, viewer, before, limit).await?
        } else {
            self.hub.list(filter, viewer, after, limit).await?
        };
        Ok(pb::ListEventsResponse {
            events: page.events,
            next_cursor: page.next.to_string(),
            end: page.end,
            gap: page.gap,
            head_cursor: page.head.to_string(),
        })
    }

    async fn open(
        &self,
        principal: &Principal,
        connection: Option<SocketAddr>,
        request: pb::SubscribeRequest,
        call: Option<CallSpan>,
    ) -> Result<SubscribeStream, ApiError> {
        let filter = self.authorized_filter(
            principal,
            &request.user_id,
            request.admin_feed,
            &request.event_types,
            &request.device_id,
        )?;
        let resume_after = optional_cursor("resume_after", &request.resume_after)?;
        // Counted from here until the stream is dropped, however it ends.
        let permit = self.streams.open(connection, &principal.user_id)?;
        let viewer = self.auth.policy.viewer(principal);
        let inboxes = self.stream_inboxes(principal, &request).await?;
        let storm = StormControl {
            conflate: request.conflate,
            max_events_per_second: request.max_events_per_second,
        };
        let subscription = self.hub.subscribe_with(
            filter,
            viewer,
            resume_after,
            StreamOptions { inboxes, storm },
        )?;
        // The stream ends when the token does; the client reconnects with a fresh one.
        let valid_for = principal
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(SubscribeStream {
            subscription,
            expires: Box::pin(tokio::time::sleep(valid_for)),
            _permit: permit,
            finished: false,
            call: call.map(|call| call.cx),
        })
    }

    /// The publish path with this service's writer and limits.
    fn publish_path(&self) -> PublishPath {
        PublishPath {
            writer: Arc::clone(&self.publisher),
            decode: self.decode,
            tracing: self.tracing.clone(),
            publish_rate: Arc::clone(&self.publish_rate),
            metrics: Arc::clone(&self.metrics),
        }
    }

    fn reject(&self, error: ApiError) -> Status {
        rejected(&self.metrics, error)
    }
}

/// Whose events a subscription the policy allowed selects. An empty `user_id` means the
/// caller's own events, unless the admin feed alone is asked for (the contract before tokens
/// existed, kept). The caller's own id is taken as it is, never re-read as request text: a
/// token whose subject is `*` selects the user called `*`, not the firehose.
fn selection(principal: &Principal, wants: Wants<'_>, admin_feed: bool) -> Users {
    match wants {
        Wants::Own if admin_feed => Users::None,
        Wants::Own => Users::One(principal.user_id.as_str().into()),
        Wants::User(user) => Users::One(user.into()),
        Wants::Firehose => Users::All,
    }
}

/// `ListEvents` page size when the request says 0, and the most it may ask for.
const LIST_DEFAULT_LIMIT: usize = 100;
const LIST_MAX_LIMIT: usize = 1000;

#[tonic::async_trait]
impl NotificationService for NotifyService {
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        // The hub reads history on its journal readers, off the async workers.
        self.list(&principal, request.get_ref())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        let connection = Connection::of(request.extensions()).and_then(|c| c.remote);
        let call = CallSpan::of(request.extensions()).cloned();
        self.open(&principal, connection, request.into_inner(), call)
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    async fn list_inbox(
        &self,
        request: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.list_inbox(&principal, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    async fn get_inbox_counts(
        &self,
        request: Request<pb::GetInboxCountsRequest>,
    ) -> Result<Response<pb::GetInboxCountsResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.inbox_counts(&principal, request.get_ref())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    async fn mark_inbox(
        &self,
        request: Request<pb::MarkInboxRequest>,
    ) -> Result<Response<pb::MarkInboxResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.mark_inbox(&principal, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::GetPreferencesResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.preferences(&principal, request.get_ref())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    async fn set_preferences(
        &self,
        request: Request<pb::SetPreferencesRequest>,
    ) -> Result<Response<pb::SetPreferencesResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.set_preferences(&principal, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }

    type PublishStreamStream = PublishResponses;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.auth
            .policy
            .may_publish(&principal)
            .map_err(|e| self.reject(e.into()))?;
        // A long-lived call like a subscription: it counts under the same stream limits.
        let connection = Connection::of(request.extensions()).and_then(|c| c.remote);
        let permit = self
            .streams
            .open(connection, &principal.user_id)
            .map_err(|e| self.reject(e.into()))?;
        let call = CallSpan::of(request.extensions()).cloned();
        Ok(Response::new(publish_stream::respond(
            self.publish_path(),
            self.shutdown.clone(),
            principal,
            permit,
            request.into_inner(),
            call,
        )))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let principal = self.principal(&request).map_err(|e| self.reject(e))?;
        self.auth
            .policy
            .may_publish(&principal)
            .map_err(|e| self.reject(e.into()))?;
        self.publish_rate
            .check(&principal.user_id)
            .map_err(|e| self.reject(e.into()))?;
        let call = CallSpan::of(request.extensions()).cloned();
        self.publish_path()
            .publish_one(request.into_inner(), call.as_ref())
            .await
            .map(Response::new)
            .map_err(|e| self.reject(e))
    }
}

/// A subscription as a gRPC response stream: frames as they come, then — if the server ended it
/// — a status that tells the client why and where to resume.
pub struct SubscribeStream {
    subscription: Subscription,
    /// When the subscriber's token expires.
    expires: Pin<Box<tokio::time::Sleep>>,
    /// This stream's place under the stream limits, given back when the stream is dropped.
    _permit: StreamPermit,
    finished: bool,
    /// The call's span (tracing on): sampled events it delivers become its span events.
    call: Option<TraceContext>,
}

impl Stream for SubscribeStream {
    type Item = Result<EncodedResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.expires.as_mut().poll(cx).is_ready() {
            this.finished = true;
            let status = super::error::token_expired_status(this.subscription.last_cursor());
            return Poll::Ready(Some(Err(status)));
        }
        match Pin::new(&mut this.subscription).poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                if let (Some(call), Some(trace)) = (&this.call, &frame.trace)
                    && call.span().is_recording()
                {
                    call.span().add_event(
                        "notify.event",
                        vec![
                            KeyValue::new("notify.event.trace_id", trace.trace_id()),
                            KeyValue::new("notify.delivery", trace.delivery().as_str()),
                        ],
                    );
                }
                Poll::Ready(Some(Ok(EncodedResponse(frame.bytes))))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finished = true;
                let cursor = this.subscription.last_cursor();
                Poll::Ready(
                    this.subscription
                        .end_reason()
                        .map(|reason| Err(super::error::stream_end_status(reason, cursor))),
                )
            }
        }
    }
}

/// The cursor in request field `field`, `None` when it is empty.
fn optional_cursor(field: &'static str, text: &str) -> Result<Option<Cursor>, ApiError> {
    match text {
        "" => Ok(None),
        text => Cursor::parse(text)
            .map(Some)
            .map_err(|reason| ApiError::Cursor { field, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(sub: &str) -> Principal {
        Principal {
            user_id: sub.into(),
            roles: Default::default(),
            permissions: Default::default(),
            expires_at: SystemTime::now(),
        }
    }

    #[test]
    fn a_subject_that_looks_like_a_wildcard_selects_only_itself() {
        assert_eq!(
            selection(&principal("*"), Wants::Own, false),
            Users::One("*".into())
        );
        assert_eq!(
            selection(&principal("u1"), Wants::Own, false),
            Users::One("u1".into())
        );
        assert_eq!(selection(&principal("u1"), Wants::Own, true), Users::None);
        assert_eq!(
            selection(&principal("ops"), Wants::Firehose, false),
            Users::All
        );
        assert_eq!(
            selection(&principal("ops"), Wants::User("u2"), true),
            Users::One("u2".into())
        );
    }
}
