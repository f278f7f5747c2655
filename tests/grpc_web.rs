//! grpc-web over HTTP/1.1 (what browsers speak), through tonic-web's client layer, and CORS.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use notify_backbone::pb::subscribe_response::Kind;
use support::*;

#[tokio::test]
async fn a_grpc_web_client_receives_a_server_stream() {
    let server = TestServer::start().await;
    let mut web = server.grpc_web_client();

    let mut stream = web
        .subscribe(with_token(
            request("web-user"),
            &token("web-user", &["user"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(Kind::CaughtUp(_))), "{first:?}");

    let mut grpc = server.client().await;
    publish_json(
        &mut grpc,
        "device.error",
        &device_error("w1", "web-user", "d1"),
    )
    .await
    .unwrap();
    publish_json(
        &mut grpc,
        "device.error",
        &device_error("w2", "web-user", "d1"),
    )
    .await
    .unwrap();
    for expected in ["w1", "w2"] {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match message.kind {
            Some(Kind::Event(event)) => assert_eq!(event.id, expected),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// The `access-control-allow-origin` a CORS preflight from `origin` gets.
async fn preflight(server: &TestServer, origin: &str) -> Option<String> {
    let url = format!(
        "{}/cloudphone.notify.v1.NotificationService/Subscribe",
        server.url()
    );
    let client =
        Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::builder()
        .method("OPTIONS")
        .uri(url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn cors_preflight_allows_configured_origins_only() {
    let server =
        TestServer::start_with(|c| c.cors_origins = vec!["https://console.example".into()]).await;
    assert_eq!(
        preflight(&server, "https://console.example")
            .await
            .as_deref(),
        Some("https://console.example")
    );
    assert_eq!(preflight(&server, "https://evil.example").await, None);
    // Configured origins replace the development default.
    assert_eq!(preflight(&server, "http://localhost:5173").await, None);
}

#[tokio::test]
async fn dev_mode_allows_localhost_origins_only() {
    let server = TestServer::start_with(|c| c.auth.dev = true).await;
    for origin in [
        "http://localhost:5173",
        "http://127.0.0.1:8080",
        "http://[::1]:3000",
        "https://localhost",
    ] {
        assert_eq!(
            preflight(&server, origin).await.as_deref(),
            Some(origin),
            "{origin}"
        );
    }
    for origin in [
        "https://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "null",
    ] {
        assert_eq!(preflight(&server, origin).await, None, "{origin}");
    }
    // Without --dev and without --cors-origin, no browser origin is allowed.
    let strict = TestServer::start().await;
    assert_eq!(preflight(&strict, "http://localhost:5173").await, None);
}
