//! A journal whose disk fills up: writes are refused with a clear reason, the node says it is
//! not ready (readiness, gRPC health, a metric, one log line), reads and open streams go on, and
//! once space returns the node takes events again by itself — every confirmed event stored
//! exactly once, with no restart.
//!
//! The journal lives on a real small file system: a tmpfs mounted for the test (root only; CI
//! runs as root, and a CI run without the permission fails rather than skips).
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::process::Command;

use notify_backbone::pb;
use support::{
    amqp::{Names, Producer, queue_counts},
    process::{Logs, broker_args, http_get, journal_ids, repeated, start_node},
    tmpfs::{Tmpfs, padded_event},
    *,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client};

async fn health_of(url: &str, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = health_client::HealthClient::new(channel);
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits until `/readyz` answers with `status` (a state the node reaches by itself).
async fn wait_readyz(metrics: std::net::SocketAddr, status: &str, logs: &Logs) -> String {
    eventually(format!("/readyz answers {status}"), async || {
        let response = http_get(metrics, "/readyz").await.unwrap();
        if response.starts_with(&format!("HTTP/1.1 {status}")) {
            return Ok(response);
        }
        Err(format!("{response}; log:\n{}", logs.tail(30)))
    })
    .await
}

/// SIGTERM, and the exit code.
async fn terminate(mut node: support::process::Node) -> Option<i32> {
    let pid = node.child.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(PATIENCE * 2, node.child.wait())
        .await
        .expect("SIGTERM stopped the server")
        .unwrap()
        .code()
}

fn count(logs: &Logs, needle: &str) -> usize {
    logs.tail(usize::MAX)
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

#[tokio::test]
async fn a_full_disk_refuses_publishes_reports_not_ready_keeps_reads_and_recovers_by_itself() {
    let Some(tmpfs) = Tmpfs::mount("publish", 16) else {
        return;
    };
    let logs = Logs::default();
    let args = ["--journal-min-free", "1MiB"].map(String::from);
    let node = start_node(&args, &tmpfs.dir.join("data"), 0, &logs).await;
    let mut client =
        pb::notification_service_client::NotificationServiceClient::connect(node.url.clone())
            .await
            .unwrap();
    let mut live = subscribe(&mut client, request("*")).await;
    let filler = tmpfs.fill_leaving(3 << 20);

    // Events until the journal refuses one: about 2 MiB of room above the reserve.
    let mut confirmed = Vec::new();
    let refusal = loop {
        assert!(confirmed.len() < 2000, "the journal never refused a write");
        let id = format!("disk-{}", confirmed.len());
        match publish_json(&mut client, "billing.padding", &padded_event(&id, 8000)).await {
            Ok(answer) => confirmed.push(answer.id),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("disk is full"), "{refusal:?}");
    assert!(!confirmed.is_empty());
    // More refusals: each is answered, none is logged again.
    for n in 0..20 {
        let id = format!("refused-{n}");
        let refused = publish_json(&mut client, "billing.padding", &padded_event(&id, 8000))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
    }

    // Not ready, by every measure; one log line for the change.
    let readyz = wait_readyz(node.metrics, "503", &logs).await;
    assert!(
        readyz.contains("journal refuses writes: disk full"),
        "{readyz}"
    );
    // Alive all the same: it recovers by itself, a restart would not help.
    let healthz = http_get(node.metrics, "/healthz").await.unwrap();
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(healthz.ends_with("alive\n"), "{healthz}");
    assert_eq!(
        health_of(&node.url, "").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        health_of(&node.url, "journal").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(node.metric("notify_journal_writable").await, 0.0);
    assert_eq!(
        count(&logs, "journal: refusing writes"),
        1,
        "{}",
        logs.tail(40)
    );

    // Reads go on: history and the open stream have every confirmed event.
    let (stored, _) = journal_ids(&node.url).await;
    assert_eq!(stored, confirmed);
    for id in &confirmed {
        assert_eq!(&next_event(&mut live).await.id, id);
    }

    // Space returns: the node takes events again without a restart.
    std::fs::remove_file(filler).unwrap();
    wait_readyz(node.metrics, "200", &logs).await;
    assert_eq!(
        health_of(&node.url, "").await,
        ServingStatus::Serving as i32
    );
    assert_eq!(node.metric("notify_journal_writable").await, 1.0);
    let sentinel = publish_json(
        &mut client,
        "billing.padding",
        &padded_event("sentinel", 10),
    )
    .await
    .unwrap();
    // The sentinel is the next event on the live stream: nothing refused was stored after all.
    assert_eq!(next_event(&mut live).await.id, sentinel.id);
    let (stored, _) = journal_ids(&node.url).await;
    let mut expected = confirmed.clone();
    expected.push(sentinel.id);
    assert_eq!(stored, expected);
    assert_eq!(
        count(&logs, "journal: writable again"),
        1,
        "{}",
        logs.tail(40)
    );
    assert_eq!(
        node.metric("notify_journal_unwritable_total{reason=\"disk_full\"}")
            .await,
        1.0
    );

    drop(live);
    assert_eq!(terminate(node).await, Some(0), "{}", logs.tail(20));
}

#[tokio::test]
async fn a_disk_that_fills_mid_commit_reopens_the_journal_and_every_confirmed_event_is_stored_once()
{
    let Some(tmpfs) = Tmpfs::mount("amqp", 16) else {
        return;
    };
    let names = Names::unique("disk-full");
    let producer = Producer::connect().await;
    let logs = Logs::default();
    // No reserve: the disk fills inside a commit, which latches the storage engine's I/O error
    // on its file handle; the journal must reopen its file to read or write again.
    let mut args = broker_args(&names);
    args.extend(["--journal-min-free", "0"].map(String::from));
    let node = start_node(&args, &tmpfs.dir.join("data"), 0, &logs).await;
    node.wait_ready(&logs).await;
    let mut client =
        pb::notification_service_client::NotificationServiceClient::connect(node.url.clone())
            .await
            .unwrap();
    let mut live = subscribe(&mut client, request("*")).await;
    let filler = tmpfs.fill_leaving(2 << 20);

    // 4 MiB of events, every one confirmed by the broker: twice the room left.
    let published: Vec<String> = (0..500).map(|n| format!("amqp-disk-{n}")).collect();
    for id in &published {
        producer
            .publish(
                &names.exchange,
                "billing.padding",
                padded_event(id, 8000).as_bytes(),
            )
            .await;
    }
    let readyz = wait_readyz(node.metrics, "503", &logs).await;
    assert!(readyz.contains("journal refuses writes"), "{readyz}");
    // What was not stored waits in the queue; what was is readable after the reopen.
    let (ready, unacked, _) = queue_counts(&names.queue()).await;
    assert!(ready + unacked > 0, "nothing waits in the queue");
    let (stored_while_full, _) = journal_ids(&node.url).await;
    assert!(stored_while_full.len() < published.len());
    assert_eq!(stored_while_full, published[..stored_while_full.len()]);

    std::fs::remove_file(filler).unwrap();
    wait_readyz(node.metrics, "200", &logs).await;
    producer
        .publish(
            &names.exchange,
            "billing.padding",
            padded_event("amqp-sentinel", 10).as_bytes(),
        )
        .await;
    let mut received = Vec::new();
    loop {
        let event = next_event(&mut live).await;
        if event.id == "amqp-sentinel" {
            break;
        }
        received.push(event.id);
    }
    let diverges = received.iter().zip(&published).position(|(a, b)| a != b);
    assert!(
        received == published,
        "the live stream: each once, in order; {} received of {}, first difference at {diverges:?}: \
         {:?}; log:\n{}",
        received.len(),
        published.len(),
        diverges.map(|at| &received[at.saturating_sub(2)..(at + 3).min(received.len())]),
        logs.tail(30)
    );
    let (stored, _) = journal_ids(&node.url).await;
    assert!(repeated(&stored).is_empty(), "{:?}", repeated(&stored));
    let mut expected = published.clone();
    expected.push("amqp-sentinel".into());
    assert_eq!(stored, expected);
    assert!(
        count(&logs, "journal reopened after a storage failure") >= 1,
        "{}",
        logs.tail(40)
    );
    drop(live);
    assert_eq!(terminate(node).await, Some(0), "{}", logs.tail(20));
    producer.clean_up(&[&names]).await;
}
