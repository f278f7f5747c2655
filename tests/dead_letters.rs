//! `notify-backbone dead-letters list`, `replay` and `drop` through the binary, against the real
//! broker: poison dead-lettered by a real node, listed without being removed, replayed once each
//! to where it came from or into a node's queue, and kept when it cannot go; chosen by reason,
//! routing key or refusing node; dropped only at the expected count.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use lapin::{
    BasicProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use support::{amqp::*, *};

const BIN: &str = env!("CARGO_BIN_EXE_notify-backbone");

/// What a run of the binary printed, and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

async fn dead_letters(names: &Names, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(BIN)
        .arg("dead-letters")
        .args(args)
        .args([
            "--amqp-url",
            &amqp_url(),
            "--queue",
            &names.dead_letter_queue,
        ])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Waits until `queue` holds exactly `n` ready messages.
async fn wait_ready(producer: &Producer, queue: &str, n: u32) {
    eventually(format!("{queue} holds {n}"), async || {
        let ready = producer.ready(queue).await;
        seen_if(ready == n, ready)
    })
    .await;
}

/// A queue whose messages expire at once into the test's dead-letter exchange: the broker
/// dead-letters what arrives there by itself (with `x-death`).
async fn expiring_queue(producer: &Producer, names: &Names, suffix: &str) -> String {
    let queue = format!("{}.{suffix}", names.exchange);
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(names.dead_letter_exchange.as_str())),
    );
    producer
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    queue
}

#[tokio::test]
async fn list_shows_why_each_was_refused_and_removes_nothing() {
    let names = Names::unique("dl-list");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let missing_user = br#"{"eventId":"e1","eventType":"device.error","payload":{"deviceId":"d1","errorType":"x","errorMessage":"y"},"_trace":{}}"#;
    producer
        .publish(&names.exchange, "device.error", missing_user)
        .await;
    producer
        .publish(&names.exchange, "billing.payment_success", b"{not json\n")
        .await;
    // One the broker dead-letters by itself (an expired message, as a queue with a TTL would):
    // its story is in `x-death`, not in our headers.
    let expiring = expiring_queue(&producer, &names, "expiring").await;
    producer
        .publish_raw(
            "",
            &expiring,
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    wait_ready(&producer, &names.dead_letter_queue, 3).await;

    let run = dead_letters(&names, &["list", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let letters = run.json_lines();
    assert_eq!(letters.len(), 3, "{}", run.stdout);
    let node = format!("node {}", names.node_id);
    assert_eq!(letters[0]["position"], 1);
    assert_eq!(letters[0]["reason"], "missing_field");
    assert_eq!(letters[0]["field"], "payload.userId");
    assert_eq!(letters[0]["routingKey"], "device.error");
    assert_eq!(letters[0]["exchange"], names.exchange.as_str());
    assert_eq!(letters[0]["refusedBy"], node.as_str());
    assert!(letters[0]["detail"].as_str().unwrap().contains("userId"));
    assert!(
        letters[0]["deadLetteredAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(letters[0]["publishedAt"].is_string());
    assert_eq!(letters[0]["replays"], 0);
    assert_eq!(letters[0]["bodyBytes"], missing_user.len());
    assert_eq!(
        letters[0]["bodyPreview"],
        std::str::from_utf8(missing_user).unwrap()
    );
    assert_eq!(letters[1]["reason"], "not_json");
    assert_eq!(letters[1]["routingKey"], "billing.payment_success");
    assert_eq!(letters[1]["bodyPreview"], "{not json\\n");
    assert_eq!(letters[2]["reason"], "expired");
    assert_eq!(letters[2]["routingKey"], expiring.as_str());
    assert_eq!(
        letters[2]["refusedBy"],
        format!("the broker, in queue {expiring}").as_str()
    );
    assert!(run.stderr.contains("3 shown (all) of 3"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing removed"), "{}", run.stderr);
    wait_ready(&producer, &names.dead_letter_queue, 3).await;

    // Text for people, filtered; a second look sees the same queue, in the same order.
    let run = dead_letters(
        &names,
        &["list", "--reason", "missing_field,not_json", "--max", "1"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("#1 missing_field device.error at 20"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("  field     payload.userId\n"));
    assert!(run.stdout.contains(&format!("  refused   {node}\n")));
    assert!(!run.stdout.contains("not_json"), "{}", run.stdout);
    assert!(run.stderr.contains("stopped at --max"), "{}", run.stderr);
    let run = dead_letters(&names, &["list", "--routing-key", "billing.#"]).await;
    assert!(
        run.stdout
            .starts_with("#2 not_json billing.payment_success")
    );
    assert!(run.stderr.contains("1 shown (routing key billing.#) of 3"));
    wait_ready(&producer, &names.dead_letter_queue, 3).await;

    let missing = tokio::process::Command::new(BIN)
        .args(["dead-letters", "list", "--amqp-url", &amqp_url()])
        .args(["--queue", &format!("{}.nothing", names.dead_letter_queue)])
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // The queue named the way `serve` names it: one command line's words work for both.
    let serve_spelling = tokio::process::Command::new(BIN)
        .args(["dead-letters", "list", "--amqp-url", &amqp_url()])
        .args(["--dead-letter-queue", &names.dead_letter_queue])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8(serve_spelling.stderr).unwrap();
    assert_eq!(serve_spelling.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("3 shown (all) of 3"), "{stderr}");

    server.stop_within(PATIENCE).await;
    let _ = producer
        .channel
        .queue_delete(expiring.as_str().into(), QueueDeleteOptions::default())
        .await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn replay_sends_the_chosen_back_once_each_and_keeps_what_cannot_go() {
    let names = Names::unique("dl-replay");
    let producer = Producer::connect().await;
    // Refused under --strict-schema: an event type with no typed schema yet.
    let strict = TestServer::start_amqp(&names, |config| config.strict_schema = true).await;
    for refund in ["r1", "r2"] {
        let body = body::refund_issued("u-replay", refund);
        producer
            .publish(&names.exchange, "billing.refund_issued", body.as_bytes())
            .await;
    }
    producer
        .publish(&names.exchange, "device.started", b"{not json")
        .await;
    wait_ready(&producer, &names.dead_letter_queue, 3).await;
    strict.stop_within(PATIENCE).await;

    // The cause fixed (strict schema off).
    let fixed = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = fixed.client().await;
    let mut user = subscribe(&mut client, request("u-replay")).await;

    // An exchange nothing is bound to: the replay comes back, and the dead letter stays.
    let nowhere = format!("{}.nowhere", names.exchange);
    producer
        .channel
        .exchange_declare(
            nowhere.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let run = dead_letters(&names, &["replay", "--all", "--to-exchange", &nowhere]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout.matches("kept (no queue takes it there)").count(),
        3
    );
    assert!(
        run.stderr
            .contains("3 chosen dead letters could not be replayed")
    );
    wait_ready(&producer, &names.dead_letter_queue, 3).await;
    let run = dead_letters(
        &names,
        &["replay", "--all", "--to-exchange", "no-such-exchange-here"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    // Choosing is required: a bare replay is a usage error, and moves nothing.
    let run = dead_letters(&names, &["replay"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    wait_ready(&producer, &names.dead_letter_queue, 3).await;

    // The first by reason, back to the exchange it came from (its header says which).
    let run = dead_letters(
        &names,
        &["replay", "--reason", "untyped_strict", "--max", "1"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "replayed: #1 billing.refund_issued (untyped_strict) to exchange {}\n",
            names.exchange
        )
    );
    let event = next_event(&mut user).await;
    assert_eq!(event.r#type, "billing.refund_issued");
    assert!(format!("{event:?}").contains("\"r1\""), "{event:?}");

    // The second straight into the node's queue: it keeps its event type.
    let run = dead_letters(
        &names,
        &[
            "replay",
            "--reason",
            "untyped_strict",
            "--routing-key",
            "billing.#",
            "--to-node",
            &names.node_id,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .ends_with(&format!("to queue {}\n", names.queue())),
        "{}",
        run.stdout
    );
    let event = next_event(&mut user).await;
    assert_eq!(event.r#type, "billing.refund_issued");
    assert!(format!("{event:?}").contains("\"r2\""), "{event:?}");
    wait_ready(&producer, &names.dead_letter_queue, 1).await;
    // Nothing left to choose: nothing happens.
    let run = dead_letters(&names, &["replay", "--reason", "untyped_strict"]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("0 replayed"), "{}", run.stderr);

    // Each once per run: replayed into a queue that dead-letters at once (a TTL of 0), the
    // message is back in the dead-letter queue before the run could read on, and the run still
    // replays it once and ends.
    let bounce = expiring_queue(&producer, &names, "bounce").await;
    let run = dead_letters(
        &names,
        &["replay", "--all", "--to-queue", &bounce, "--max", "50"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    wait_ready(&producer, &names.dead_letter_queue, 1).await;
    let run = dead_letters(&names, &["list", "--json"]).await;
    let letters = run.json_lines();
    assert_eq!(letters.len(), 1, "{}", run.stdout);
    assert_eq!(letters[0]["reason"], "expired");
    assert_eq!(letters[0]["replays"], 1);
    // The event type survived the trip through a queue: it is in x-notify-routing-key.
    assert_eq!(letters[0]["routingKey"], "device.started");
    let _ = producer
        .channel
        .queue_delete(bounce.as_str().into(), QueueDeleteOptions::default())
        .await;

    // The subscriber saw exactly the two replayed events: the next one is this sentinel.
    let sentinel = device_error("dl-sentinel", "u-replay", "d-sentinel");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut user, "dl-sentinel", "u-replay").await;
    fixed.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

/// `drop` discards what can never be fixed, choosing as `replay` does, and only when `--expect`
/// says how many the selection matches: any other count removes nothing and says how many
/// match. The queue can be named as `serve` names it (`--dead-letter-queue`) as well as
/// `--queue`.
#[tokio::test]
async fn drop_discards_the_chosen_only_at_the_expected_count() {
    let names = Names::unique("dl-drop");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    producer
        .publish(&names.exchange, "device.started", b"{not json")
        .await;
    let missing_user = br#"{"eventId":"e1","eventType":"device.error","payload":{"deviceId":"d1","errorType":"x","errorMessage":"y"},"_trace":{}}"#;
    producer
        .publish(&names.exchange, "device.error", missing_user)
        .await;
    producer
        .publish(&names.exchange, "billing.payment_success", b"{nope")
        .await;
    wait_ready(&producer, &names.dead_letter_queue, 3).await;
    let reasons = |run: &Run| -> Vec<String> {
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json_lines()
            .iter()
            .map(|letter| letter["reason"].as_str().unwrap().to_owned())
            .collect()
    };

    // A count that is not the selection's: nothing goes, and it says how many would have.
    let run = dead_letters(&names, &["drop", "--reason", "not_json", "--expect", "1"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("nothing dropped: 2 match (reason not_json) of 3"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert!(
        run.stdout
            .starts_with("chosen: #1 device.started (not_json), refused by node "),
        "{}",
        run.stdout
    );
    wait_ready(&producer, &names.dead_letter_queue, 3).await;
    let run = dead_letters(&names, &["list", "--json"]).await;
    assert_eq!(reasons(&run), ["not_json", "missing_field", "not_json"]);
    // Choosing is required, and so is the count: usage errors, nothing moves.
    for args in [&["drop", "--expect", "3"][..], &["drop", "--all"][..]] {
        let run = dead_letters(&names, args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
    }

    // The right count, the queue named the way `serve` names it.
    let output = tokio::process::Command::new(BIN)
        .args([
            "dead-letters",
            "drop",
            "--reason",
            "not_json",
            "--expect",
            "2",
        ])
        .args(["--amqp-url", &amqp_url()])
        .args(["--dead-letter-queue", &names.dead_letter_queue])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("2 dropped (reason not_json) of 3"),
        "{stderr}"
    );
    wait_ready(&producer, &names.dead_letter_queue, 1).await;
    let run = dead_letters(&names, &["list", "--json"]).await;
    assert_eq!(reasons(&run), ["missing_field"]);

    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

/// `--node` chooses by the node that refused a message (`x-notify-node`), for `list`, `replay`
/// and `drop` alike; a message the broker dead-lettered by itself names no node. Two nodes
/// consume the same exchange here, so each poison message is refused twice, once by each.
#[tokio::test]
async fn node_chooses_what_one_node_refused() {
    let names = Names::unique("dl-node");
    let other = names.other_node("b");
    let producer = Producer::connect().await;
    let first = TestServer::start_amqp(&names, |_| {}).await;
    let second = TestServer::start_amqp(&other, |_| {}).await;
    producer
        .publish(&names.exchange, "device.started", b"{not json")
        .await;
    wait_ready(&producer, &names.dead_letter_queue, 2).await;
    let refused_by = |run: &Run| -> Vec<String> {
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json_lines()
            .iter()
            .map(|letter| letter["refusedBy"].as_str().unwrap().to_owned())
            .collect()
    };
    let by = |names: &Names| format!("node {}", names.node_id);

    let run = dead_letters(&names, &["list", "--json", "--node", &other.node_id]).await;
    assert_eq!(refused_by(&run), [by(&other)]);
    assert!(
        run.stderr
            .contains(&format!("1 shown (node {}) of 2", other.node_id)),
        "{}",
        run.stderr
    );
    let both = format!("{},{}", names.node_id, other.node_id);
    let run = dead_letters(&names, &["list", "--json", "--node", &both]).await;
    assert_eq!(refused_by(&run).len(), 2, "{}", run.stdout);

    // The first node's copy replayed into a queue that dead-letters at once: it comes back as
    // the broker's, which no node selects.
    let bounce = expiring_queue(&producer, &names, "bounce").await;
    let run = dead_letters(
        &names,
        &["replay", "--node", &names.node_id, "--to-queue", &bounce],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    wait_ready(&producer, &names.dead_letter_queue, 2).await;
    let run = dead_letters(&names, &["list", "--json"]).await;
    assert_eq!(
        refused_by(&run),
        [by(&other), format!("the broker, in queue {bounce}")]
    );
    let run = dead_letters(&names, &["list", "--node", &names.node_id]).await;
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("0 shown"), "{}", run.stderr);

    let run = dead_letters(&names, &["drop", "--node", &other.node_id, "--expect", "1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("1 dropped (node {}) of 2", other.node_id)),
        "{}",
        run.stderr
    );
    wait_ready(&producer, &names.dead_letter_queue, 1).await;
    let run = dead_letters(&names, &["list", "--json"]).await;
    assert_eq!(refused_by(&run), [format!("the broker, in queue {bounce}")]);

    first.stop_within(PATIENCE).await;
    second.stop_within(PATIENCE).await;
    let _ = producer
        .channel
        .queue_delete(bounce.as_str().into(), QueueDeleteOptions::default())
        .await;
    producer.clean_up(&[&names, &other]).await;
}

/// A dead letter replayed straight into a node's queue arrives through the default exchange,
/// which names none. Refused again, it still says where it came from: `list` shows the
/// producers' exchange, and a later replay goes back there.
#[tokio::test]
async fn a_dead_letter_replayed_into_a_node_and_refused_again_keeps_its_exchange() {
    let names = Names::unique("dl-home");
    let producer = Producer::connect().await;
    // Still refused after the replay: --strict-schema stays on.
    let strict = TestServer::start_amqp(&names, |config| config.strict_schema = true).await;
    let body = body::refund_issued("u-home", "r1");
    producer
        .publish(&names.exchange, "billing.refund_issued", body.as_bytes())
        .await;
    wait_ready(&producer, &names.dead_letter_queue, 1).await;

    let run = dead_letters(&names, &["replay", "--all", "--to-node", &names.node_id]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The replayed one was removed before the run ended: this is the node's new copy.
    wait_ready(&producer, &names.dead_letter_queue, 1).await;
    let run = dead_letters(&names, &["list", "--json"]).await;
    let letters = run.json_lines();
    assert_eq!(letters.len(), 1, "{}", run.stdout);
    assert_eq!(letters[0]["replays"], 1, "{}", letters[0]);
    assert_eq!(letters[0]["reason"], "untyped_strict");
    assert_eq!(letters[0]["routingKey"], "billing.refund_issued");
    assert_eq!(
        letters[0]["refusedBy"],
        format!("node {}", names.node_id).as_str()
    );
    assert_eq!(letters[0]["exchange"], names.exchange.as_str());

    let run = dead_letters(&names, &["replay", "--reason", "untyped_strict"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "replayed: #1 billing.refund_issued (untyped_strict) to exchange {}\n",
            names.exchange
        )
    );
    strict.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}
