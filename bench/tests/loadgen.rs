//! `notify-bench` through its binary, against a server in the test process: each scenario's
//! report says what the server really did.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

#[path = "../../tests/support/mod.rs"]
mod support;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_notify-bench");

/// Runs `notify-bench --server <server> --jwt-secret <test secret> <args> --json` and returns
/// its report, failing the test if it exits unsuccessfully or prints no JSON.
async fn bench_report(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(BIN)
        .args(["--server", &server.url(), "--jwt-secret", TEST_SECRET])
        .args(args)
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"))
}

#[tokio::test]
async fn replay_counts_the_whole_backlog() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 0..50 {
        publish_json(
            &mut client,
            "device.error",
            &device_error(&format!("b{i}"), "u1", "d"),
        )
        .await
        .unwrap();
    }
    let report = bench_report(&server, &["--scenario", "replay"]).await;
    assert_eq!(report["events"], 50, "{report}");
    assert_eq!(report["gaps"], 0, "{report}");
    assert!(report["events_per_s"].as_f64().unwrap() > 0.0, "{report}");
}

#[tokio::test]
async fn keeps_slow_subscribers_out_of_the_figures_and_the_server_keeps_them_fed() {
    // A tiny queue, so the slow stream lags and continues from the journal.
    let server = TestServer::start_with(|c| c.subscriber_queue_len = 4).await;
    let report = bench_report(
        &server,
        &[
            "--scenario",
            "firehose",
            "--subscribers",
            "3",
            "--connections",
            "1",
            "--slow-subscribers",
            "1",
            "--slow-read-delay",
            "20ms",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "1s",
        ],
    )
    .await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["streams"]["dropped"], 0, "{report}");
    let slow = report["streams"]["slow_events_read"].as_u64().unwrap();
    assert!(slow > 0, "{report}");
    assert_eq!(report["parameters"]["slow_subscribers"], 1, "{report}");
}

#[tokio::test]
async fn publishes_on_publish_streams() {
    let server = TestServer::start().await;
    let report = bench_report(
        &server,
        &[
            "--scenario",
            "per-user",
            "--subscribers",
            "20",
            "--connections",
            "2",
            "--publishers",
            "2",
            "--publish-mode",
            "stream",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "1s",
        ],
    )
    .await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["parameters"]["publish_mode"], "stream", "{report}");
    assert_eq!(report["publish"]["errors"], 0, "{report}");
    let published = report["publish"]["ok"].as_u64().unwrap();
    assert!(published >= 400, "{report}");
    // Each published event was journaled and delivered: the server saw them as events in.
    let events_in = server
        .metric("notify_events_in_total{type=\"device.error\"}")
        .await;
    assert!(events_in >= published as f64, "{events_in} < {published}");
}

#[tokio::test]
async fn fills_inboxes_then_times_their_calls_on_the_same_journal() {
    let server = TestServer::start().await;
    // 200 events over 10 users: 20 items each, a full page of 20.
    let fill = bench_report(
        &server,
        &[
            "--scenario",
            "inbox",
            "--journal-events",
            "200",
            "--users",
            "10",
            "--publishers",
            "2",
            "--fill-only",
        ],
    )
    .await;
    assert_eq!(fill["valid"], true, "{fill}");
    assert_eq!(fill["fill"]["publish"]["ok"], 200, "{fill}");
    assert_eq!(fill["journal"]["head_after_fill"], 200, "{fill}");
    assert!(fill["calls"].is_null(), "{fill}");

    // The journal holds enough: no fill, only the window, with publishing mixed in.
    let report = bench_report(
        &server,
        &[
            "--scenario",
            "inbox",
            "--journal-events",
            "200",
            "--users",
            "10",
            "--publishers",
            "1",
            "--inbox-publish",
            "--rate",
            "50",
            "--inbox-counts-rate",
            "40",
            "--inbox-list-rate",
            "40",
            "--inbox-mark-rate",
            "10",
            "--duration",
            "2s",
            "--warmup",
            "1s",
        ],
    )
    .await;
    assert_eq!(report["valid"], true, "{report}");
    assert!(report["fill"].is_null(), "{report}");
    for call in ["counts", "list", "mark_all"] {
        let calls = &report["calls"][call];
        assert_eq!(calls["errors"], 0, "{report}");
        assert!(
            calls["ok_measured"].as_u64().unwrap() >= 15,
            "{call}: {report}"
        );
        assert!(calls["latency_ms"]["p99"].as_f64().is_some(), "{report}");
    }
    // Every user's newest page is full, whatever the marks did to it.
    assert_eq!(report["calls"]["list"]["items_per_call"], 20.0, "{report}");
    assert!(
        report["publish"]["ok_measured"].as_u64().unwrap() >= 90,
        "{report}"
    );
    let end = report["journal"]["head_at_end"].as_u64().unwrap();
    assert!(end >= 300, "{report}");
}
