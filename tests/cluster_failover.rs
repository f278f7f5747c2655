//! Cluster failover with real processes and the real broker: three nodes share the journal
//! stream; events are published continuously with publisher confirms, through RabbitMQ and
//! through `Publish` on whichever node is up; the node that writes the stream is `kill -9`ed five
//! times at random moments and restarted. Afterwards every confirmed event is in the stream
//! exactly once, and a firehose subscriber that resumed across all of it (on whichever node was
//! up) saw each once, in the stream's order.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    Confirmation,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use notify_backbone::pb::{
    self, notification_service_client::NotificationServiceClient, publish_request::Body,
};
use rand::Rng as _;
use support::{
    amqp::{Names, Producer},
    process::{
        Logs, Node, Received, broker_args, first, follow_the_firehose, repeated, start_node,
    },
    *,
};
use tokio::{
    sync::{oneshot, watch},
    task::JoinSet,
};
use tokio_stream::StreamExt as _;

const NODES: usize = 3;
const KILLS: usize = 5;
/// How long a node writes before it is killed (after the previous restart was ready).
const KILL_AFTER_MS: std::ops::Range<u64> = 300..1500;
const PUBLISH_EVERY: Duration = Duration::from_millis(4);
/// The bound on everything settling at the end.
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_writer_five_times_loses_and_repeats_nothing() {
    let names = Names::unique("failover");
    let stream = format!("{}.journal", names.exchange);
    let ingest_queue = format!("{}.ingest", names.exchange);
    let args = |node: usize| {
        let mut args = broker_args(&names.other_node(&node.to_string()));
        args.extend(
            [
                "--journal",
                "rabbitmq-stream",
                "--stream",
                &stream,
                "--ingest-queue",
                &ingest_queue,
            ]
            .map(String::from),
        );
        args
    };
    let logs = Logs::default();
    let data: Vec<DataDir> = (0..NODES).map(|_| DataDir::new()).collect();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, dir) in data.iter().enumerate() {
        let node = start_node(&args(i), &dir.0, i, &logs).await;
        node.wait_ready(&logs).await;
        nodes.push(Some(node));
    }
    let urls: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        nodes.iter().flatten().map(|n| n.url.clone()).collect(),
    ));
    let (subscriber_url, subscriber_url_rx) = watch::channel(Some(urls.lock().unwrap()[0].clone()));
    let received = Arc::new(Mutex::new(Received::default()));
    let (caught_up_tx, caught_up) = oneshot::channel();
    let subscriber = follow_the_firehose(subscriber_url_rx, received.clone(), caught_up_tx);
    tokio::time::timeout(PATIENCE, caught_up)
        .await
        .unwrap()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let via_amqp = publish_through_rabbitmq(names.exchange.clone(), stop.clone());
    let via_grpc = publish_through_any_node(urls.clone(), stop.clone());

    let mut pauses = Vec::new();
    for kill in 0..KILLS {
        let ms = rand::rng().random_range(KILL_AFTER_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let writer = the_writer(&nodes, &logs).await;
        let victim = nodes[writer].take().unwrap();
        let killed_url = victim.url.clone();
        let before = received.lock().unwrap().ids.len();
        let killed_at = Instant::now();
        victim.kill(&logs).await;
        urls.lock().unwrap().retain(|url| url != &killed_url);
        if subscriber_url.borrow().as_deref() == Some(killed_url.as_str()) {
            let other = urls.lock().unwrap()[0].clone();
            subscriber_url.send_replace(Some(other));
        }
        // How long the ingest paused: until the subscriber got something new again.
        let deadline = Instant::now() + PATIENCE;
        while received.lock().unwrap().ids.len() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pauses.push(killed_at.elapsed());
        let restarted = start_node(&args(writer), &data[writer].0, NODES + kill, &logs).await;
        restarted.wait_ready(&logs).await;
        urls.lock().unwrap().push(restarted.url.clone());
        nodes[writer] = Some(restarted);
    }
    stop.store(true, Ordering::SeqCst);
    let mut confirmed = via_amqp.await.unwrap();
    confirmed.extend(via_grpc.await.unwrap());
    eprintln!(
        "{} events confirmed; {KILLS} writers killed; from each kill to the next event \
         delivered: {pauses:?}",
        confirmed.len()
    );
    assert!(confirmed.len() > 500, "too few events to prove much");

    // The subscriber gets every confirmed event.
    let expected: HashSet<&String> = confirmed.iter().collect();
    let wait = Wait::within(SETTLE).every(Duration::from_millis(100));
    wait.until("the subscriber has every confirmed event", async || {
        let got: HashSet<String> = received.lock().unwrap().ids.iter().cloned().collect();
        let missing = expected.iter().filter(|id| !got.contains(**id)).count();
        if missing == 0 {
            return Ok(());
        }
        Err(format!(
            "{missing} confirmed events missing; log:\n{}",
            logs.tail(60)
        ))
    })
    .await;
    subscriber.abort();

    // 1. In the stream, every confirmed event is there exactly once. A killed writer's appends
    // still inside the broker must not land after its successor's barrier (the writer appends on
    // its ingest channel, which the broker closes only after handling them); a second copy
    // would mean they did, so the failure shows where the copies and the barriers are.
    let log = stream_log(&stream, confirmed.len()).await;
    let copies = later_copies(&log);
    let barriers: Vec<(u64, &str)> = log
        .iter()
        .filter(|entry| entry.barrier)
        .map(|entry| (entry.offset, entry.id.as_str()))
        .collect();
    assert!(
        copies.is_empty(),
        "{} events are in the stream more than once: {}; barriers: {barriers:?}",
        copies.len(),
        first(&copies, 20)
    );
    let mut seen = HashSet::new();
    let in_stream: Vec<String> = log
        .into_iter()
        .filter(|entry| !entry.barrier && seen.insert(entry.id.clone()))
        .map(|entry| entry.id)
        .collect();
    let stored: HashSet<&String> = in_stream.iter().collect();
    let missing: Vec<&&String> = expected
        .iter()
        .filter(|id| !stored.contains(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} confirmed events are not in the stream: {}",
        missing.len(),
        first(&missing, 20)
    );
    // 2. The subscriber saw each once, in the stream's order, with no gap.
    let received = std::mem::take(&mut *received.lock().unwrap());
    assert!(received.gaps.is_empty(), "gaps: {:?}", received.gaps);
    let twice = repeated(&received.ids);
    assert!(
        twice.is_empty(),
        "{} events reached the subscriber more than once: {}",
        twice.len(),
        first(&twice, 20)
    );
    assert_eq!(
        received.ids, in_stream,
        "the subscriber's order is the stream's"
    );

    for node in nodes.into_iter().flatten() {
        node.kill(&logs).await;
    }
    let producer = Producer::connect().await;
    for queue in [&stream, &ingest_queue] {
        let channel = producer.connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    producer.clean_up(&[&names]).await;
}

/// The node that writes the stream now (`notify_journal_writer` = 1), waiting until one does.
async fn the_writer(nodes: &[Option<Node>], logs: &Logs) -> usize {
    eventually("a node writes the stream", async || {
        for (i, node) in nodes.iter().enumerate() {
            if let Some(node) = node
                && node.metric("notify_journal_writer").await == 1.0
            {
                return Ok(i);
            }
        }
        Err(format!("no writer; log:\n{}", logs.tail(60)))
    })
    .await
}

/// Publishes `failover-amqp-N` through RabbitMQ with confirms until `stop`; the confirmed ids.
fn publish_through_rabbitmq(
    exchange: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let producer = Producer::connect().await;
        let mut confirms = JoinSet::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("failover-amqp-{n:05}");
            n += 1;
            let body = device_error(&id, "u-failover", "d1");
            let confirm = producer
                .start_publish(&exchange, "device.error", body.as_bytes())
                .await;
            confirms.spawn(async move { (id, confirm.await) });
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
        let mut confirmed = Vec::new();
        while let Some(joined) = confirms.join_next().await {
            if let (id, Ok(Confirmation::Ack(None))) = joined.unwrap() {
                confirmed.push(id);
            }
        }
        confirmed
    })
}

/// Publishes `failover-grpc-N` through `Publish`, on the nodes that are up in turn, until
/// `stop`: a call that fails is sent again (same event id) to the next node until one answers.
/// The ids answered OK.
fn publish_through_any_node(
    urls: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let token = service_token();
        let mut confirmed = Vec::new();
        let mut turn = 0_usize;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("failover-grpc-{n:05}");
            n += 1;
            let wait = Wait::within(PATIENCE * 3);
            // The probe owns what it uses, in a spawned task (see `Wait::until`), and hands back
            // the turn that took the event.
            let (urls, token, body) = (
                urls.clone(),
                token.clone(),
                device_error(&id, "u-failover", "d2"),
            );
            turn = wait
                .until(format!("a node takes {id}"), async move || {
                    turn += 1;
                    let url = {
                        let urls = urls.lock().unwrap();
                        urls[turn % urls.len()].clone()
                    };
                    let request = pb::PublishRequest {
                        routing_key: "device.error".into(),
                        body: Some(Body::Json(body.clone().into_bytes())),
                    };
                    let answered = async {
                        let mut client = NotificationServiceClient::connect(url).await.ok()?;
                        client.publish(with_token(request, &token)).await.ok()
                    };
                    tokio::time::timeout(Duration::from_secs(5), answered)
                        .await
                        .ok()
                        .flatten()
                        .map(|_| turn)
                })
                .await;
            confirmed.push(id);
            tokio::time::sleep(PUBLISH_EVERY * 5).await;
        }
        confirmed
    })
}

/// One message of the journal stream, as the test reads it.
#[derive(Debug)]
struct Logged {
    offset: u64,
    /// A writer's barrier (`id` is the barrier's), else one of the test's events.
    barrier: bool,
    id: String,
}

/// The second (and later) copies of events in the stream: (id, first copy's offset, offset).
fn later_copies(log: &[Logged]) -> Vec<(String, u64, u64)> {
    let mut firsts: HashMap<&str, u64> = HashMap::new();
    let mut copies = Vec::new();
    for entry in log.iter().filter(|entry| !entry.barrier) {
        match firsts.get(entry.id.as_str()) {
            Some(&first_offset) => copies.push((entry.id.clone(), first_offset, entry.offset)),
            None => {
                firsts.insert(&entry.id, entry.offset);
            }
        }
    }
    copies
}

/// The stream's barriers and test events, oldest first: read with a consumer of its own, until
/// at least `at_least` distinct events came and then nothing for a second.
async fn stream_log(stream: &str, at_least: usize) -> Vec<Logged> {
    let producer = Producer::connect().await;
    let channel = producer.connection.create_channel().await.unwrap();
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "check".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    let (mut log, mut distinct) = (Vec::new(), HashSet::new());
    let deadline = Instant::now() + SETTLE;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                let headers = delivery.properties.headers().clone().unwrap_or_default();
                let kind = match headers.inner().get("x-notify-kind") {
                    Some(AMQPValue::LongString(kind)) => kind.to_string(),
                    _ => String::new(),
                };
                let offset = match headers.inner().get("x-stream-offset") {
                    Some(AMQPValue::LongLongInt(offset)) => u64::try_from(*offset).unwrap(),
                    Some(AMQPValue::LongUInt(offset)) => u64::from(*offset),
                    other => panic!("a stream delivery without its offset: {other:?}"),
                };
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                // Admin notices have ids of their own; only the published events count.
                if kind == "barrier" || (kind == "event" && id.starts_with("failover-")) {
                    let barrier = kind == "barrier";
                    if !barrier {
                        distinct.insert(id.clone());
                    }
                    log.push(Logged {
                        offset,
                        barrier,
                        id,
                    });
                }
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
            Err(_) if distinct.len() >= at_least => return log,
            other => assert!(
                Instant::now() < deadline,
                "reading the stream: {other:?} after {} entries",
                log.len()
            ),
        }
    }
}
