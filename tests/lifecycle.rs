//! Health, reflection, heartbeats and shutdown.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use notify_backbone::pb::subscribe_response::Kind;
use support::*;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const SERVICE: &str = "cloudphone.notify.v1.NotificationService";

#[tokio::test]
async fn health_is_serving_then_not_serving_as_shutdown_starts() {
    // A long grace: the test fails by timeout if the open watch held shutdown.
    let server = TestServer::start_with(|c| c.shutdown_grace = Duration::from_secs(60)).await;
    let mut health = HealthClient::new(server.channel().await);
    let check = HealthCheckRequest {
        service: SERVICE.into(),
    };
    let status = health
        .check(check.clone())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut watch = health.watch(check).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.shutdown.cancel();
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reflection_lists_the_service() {
    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SERVICE), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn shutdown_ends_open_streams_within_the_grace_period() {
    // A grace far longer than the test's patience: streams waited out instead of ended would
    // fail the timeouts below, however fast or slow the machine.
    let server = TestServer::start_with(|c| c.shutdown_grace = Duration::from_secs(60)).await;
    let mut client = server.client().await;
    let mut streams = Vec::new();
    for user in ["a", "b", "*"] {
        streams.push(subscribe(&mut client, request(user)).await);
    }
    let shutdown = server.shutdown.clone();
    shutdown.cancel();
    for mut stream in streams {
        let status = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("stream ended in time")
            .expect_err("ended with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("resume_after="), "{status:?}");
    }
    // Well inside the grace: streams were ended, not waited out.
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("the server stopped well inside the grace period")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn idle_streams_receive_heartbeats() {
    let server =
        TestServer::start_with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("quiet")).await;
    match next_kind(&mut stream).await {
        Kind::Heartbeat(beat) => assert_eq!(beat.cursor.len(), 32),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
}
