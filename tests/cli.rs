//! The README's tour: the `subscribe` and `publish` commands against a running server.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_notify-backbone");

#[tokio::test]
async fn subscribe_prints_what_publish_sends_as_json_lines() {
    let server = TestServer::start().await;
    let mut subscriber = tokio::process::Command::new(BIN)
        .args([
            "subscribe",
            "--token",
            &token("u1", &["user"]),
            "--server",
            &server.url(),
            "--user",
            "u1",
            "--types",
            "billing.*",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let next_line = async |lines: &mut tokio::io::Lines<_>| -> serde_json::Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let first = next_line(&mut lines).await;
    assert!(first["caughtUp"]["cursor"].is_string(), "{first}");

    let body = r#"{"userId":"u1","paymentId":"p1","paymentMethod":"alipay","amount":99.9,"newBalance":120.5,"_trace":{}}"#;
    let output = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--token",
            &service_token(),
            "--server",
            &server.url(),
            "billing.payment_success",
            body,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let published: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(published["duplicate"], false);

    let event = next_line(&mut lines).await;
    assert_eq!(event["event"]["id"], published["id"], "{event}");
    assert_eq!(event["event"]["cursor"], published["cursor"], "{event}");
    assert_eq!(event["event"]["type"], "billing.payment_success");
    assert_eq!(
        event["event"]["billingPaymentSuccess"]["amount"]["value"],
        "99.9"
    );
}

#[tokio::test]
async fn publish_reports_bad_input_and_fails() {
    let server = TestServer::start().await;
    let output = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--token",
            &service_token(),
            "--server",
            &server.url(),
            "device.started",
            "[1]",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not an object"), "{stderr}");
}
