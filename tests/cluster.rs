//! Cluster mode (`--journal rabbitmq-stream`): nodes share one journal on a RabbitMQ stream. Any
//! node serves any cursor, and an event published anywhere reaches subscribers everywhere, in
//! the same order with the same cursors.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use notify_backbone::{
    config::{JournalKind, ServeConfig},
    pb::{self, subscribe_response::Kind},
    store::Cursor,
};
use support::{
    amqp::{Names, Producer, close_connections, connection_pids_named},
    process::{Logs, Node, broker_args, start_node_logging},
    *,
};

/// One cluster's broker names: a test's own exchange, dead letters, stream and ingest queue.
struct Cluster {
    names: Names,
    stream: String,
    ingest_queue: String,
}

impl Cluster {
    fn unique(test: &str) -> Self {
        let names = Names::unique(test);
        Self {
            stream: format!("{}.journal", names.exchange),
            ingest_queue: format!("{}.ingest", names.exchange),
            names,
        }
    }

    /// Points `config` at this cluster as node `node`.
    fn apply(&self, config: &mut ServeConfig, node: &str) {
        self.names.apply(config);
        config.amqp.node_id = Some(format!("{}-{node}", self.names.node_id));
        config.cluster.journal = JournalKind::RabbitmqStream;
        config.cluster.stream = self.stream.clone();
        config.cluster.ingest_queue = self.ingest_queue.clone();
    }

    /// The command line of node `node` of this cluster, for a node process.
    fn args(&self, node: &str) -> Vec<String> {
        let mut args = broker_args(&self.names.other_node(node));
        args.extend(
            [
                "--journal",
                "rabbitmq-stream",
                "--stream",
                &self.stream,
                "--ingest-queue",
                &self.ingest_queue,
            ]
            .map(String::from),
        );
        args
    }

    async fn node(&self, node: &str) -> TestServer {
        let server = TestServer::start_with(|config| self.apply(config, node)).await;
        server.wait_ready().await;
        server
    }

    async fn clean_up(&self, producer: &Producer) {
        for queue in [&self.stream, &self.ingest_queue] {
            let channel = producer.connection.create_channel().await.unwrap();
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        producer.clean_up(&[&self.names]).await;
    }
}

/// The next event's id and cursor.
async fn next_id_and_cursor(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> (String, String) {
    let event = next_event(stream).await;
    (event.id, event.cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_anywhere_reach_every_node_in_the_same_order_with_the_same_cursors() {
    let cluster = Cluster::unique("cluster-fanout");
    let producer = Producer::connect().await;
    let nodes = [
        cluster.node("a").await,
        cluster.node("b").await,
        cluster.node("c").await,
    ];
    let mut firehoses = Vec::new();
    for node in &nodes {
        let mut client = node.client().await;
        firehoses.push(subscribe(&mut client, request("*")).await);
    }
    // Through RabbitMQ, as the producers publish, and through Publish on node b.
    producer
        .publish(
            &cluster.names.exchange,
            "device.error",
            device_error("via-amqp", "u1", "d1").as_bytes(),
        )
        .await;
    let mut b = nodes[1].client().await;
    let published = publish_json(&mut b, "device.error", &device_error("via-b", "u2", "d2"))
        .await
        .unwrap();
    assert!(!published.duplicate);
    let mut seen = Vec::new();
    for firehose in &mut firehoses {
        let first = next_id_and_cursor(firehose).await;
        let second = next_id_and_cursor(firehose).await;
        seen.push([first, second]);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:#?}");
    let ids: Vec<&str> = seen[0].iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        ids.contains(&"via-amqp") && ids.contains(&"via-b"),
        "{ids:?}"
    );
    // Publish answered with the cursor the subscribers got.
    let via_b = seen[0].iter().find(|(id, _)| id == "via-b").unwrap();
    assert_eq!(published.cursor, via_b.1);
    // The same event again, on another node: a duplicate, with the first cursor, delivered once.
    let mut c = nodes[2].client().await;
    let again = publish_json(&mut c, "device.error", &device_error("via-b", "u2", "d2"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.cursor, published.cursor);
    let sentinel = publish_json(
        &mut c,
        "device.error",
        &device_error("sentinel", "u3", "d3"),
    )
    .await
    .unwrap();
    for firehose in &mut firehoses {
        assert_next_is(firehose, &sentinel.id, "a node's firehose").await;
    }
    cluster.clean_up(&producer).await;
}

/// A subscriber reads some events on node a, disconnects, and resumes on node c with its
/// cursor: exactly the rest, then CaughtUp, no gap, no duplicate; with a filter, as a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_one_node_resumes_on_another() {
    let cluster = Cluster::unique("cluster-resume");
    let producer = Producer::connect().await;
    let a = cluster.node("a").await;
    let c = cluster.node("c").await;
    let mut client_a = a.client().await;
    let filtered = pb::SubscribeRequest {
        user_id: "alice".into(),
        event_types: vec!["device.*".into()],
        ..Default::default()
    };
    let mut on_a = subscribe(&mut client_a, filtered.clone()).await;
    let mut expected = Vec::new();
    for i in 0..10 {
        // Alice's device events, with others' and other types between them.
        let mine = publish_json(
            &mut client_a,
            "device.error",
            &device_error(&format!("mine-{i}"), "alice", "d1"),
        )
        .await
        .unwrap();
        expected.push(mine.id);
        publish_json(
            &mut client_a,
            "device.error",
            &device_error(&format!("bob-{i}"), "bob", "d9"),
        )
        .await
        .unwrap();
    }
    let mut last = String::new();
    for id in &expected[..4] {
        let event = next_event(&mut on_a).await;
        assert_eq!(&event.id, id);
        last = event.cursor;
    }
    drop(on_a);
    let mut client_c = c.client().await;
    let resume = pb::SubscribeRequest {
        resume_after: last,
        ..filtered
    };
    let mut on_c = client_c
        .subscribe(with_token(resume, &token("alice", &["user"])))
        .await
        .unwrap()
        .into_inner();
    for id in &expected[4..] {
        assert_eq!(&next_event(&mut on_c).await.id, id);
    }
    match next_kind(&mut on_c).await {
        Kind::CaughtUp(caught_up) => {
            let head = Cursor::parse(&caught_up.cursor).unwrap();
            assert!(head.position >= 20, "{caught_up:?}");
        }
        other => panic!("expected CaughtUp, got {other:?}"),
    }
    // Live from node c afterwards.
    let after = publish_json(
        &mut client_a,
        "device.error",
        &device_error("after", "alice", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut on_c, &after.id, "alice on node c").await;
    tokio::time::sleep(Duration::ZERO).await;
    cluster.clean_up(&producer).await;
}

/// Publishes `n` events for `user` through `Publish` on `node`; their ids.
async fn publish_many(node: &TestServer, user: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut client = node.client().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        publish_json(&mut client, "device.error", &device_error(&id, user, "d1"))
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// The stream keeps what retention allows: a node that joins later holds only that, and a
/// cursor from before it gets `Gap(RETENTION)`, then the oldest events it still has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_below_the_streams_retention_gets_a_gap() {
    let cluster = Cluster::unique("cluster-retention");
    let producer = Producer::connect().await;
    let small = |config: &mut ServeConfig| {
        // Segments of 4 KiB, at most 16 KiB kept: a few dozen events.
        config.cluster.stream_segment_bytes = Some(4096);
        config.journal.retention_bytes = 16 * 1024;
    };
    let a = TestServer::start_with(|config| {
        cluster.apply(config, "a");
        small(config);
    })
    .await;
    a.wait_ready().await;
    let first = publish_many(&a, "u1", "old", 1).await;
    let mut client = a.client().await;
    let oldest = client
        .list_events(with_token(
            pb::ListEventsRequest {
                user_id: "*".into(),
                ..Default::default()
            },
            &token("ops", &["admin"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(oldest.events[0].id, first[0]);
    let first_cursor = oldest.events[0].cursor.clone();
    // Enough to fill many segments: the first ones go.
    publish_many(&a, "u1", "more", 300).await;
    // A node that joins now reads what the stream still has.
    let d = TestServer::start_with(|config| {
        cluster.apply(config, "d");
        small(config);
    })
    .await;
    d.wait_ready().await;
    let mut on_d = d.client().await;
    let mut live = subscribe(&mut on_d, request("u1")).await;
    let sentinel = publish_many(&d, "u1", "sentinel", 1).await;
    assert_next_is(&mut live, &sentinel[0], "u1 on the new node").await;
    let resume = pb::SubscribeRequest {
        resume_after: first_cursor.clone(),
        ..Default::default()
    };
    let mut resumed = on_d
        .subscribe(with_token(resume, &token("u1", &["user"])))
        .await
        .unwrap()
        .into_inner();
    match next_kind(&mut resumed).await {
        Kind::Gap(gap) => {
            assert_eq!(gap.reason, i32::from(pb::GapReason::Retention), "{gap:?}");
            assert_eq!(gap.from_cursor, first_cursor);
        }
        other => panic!("expected a Gap, got {other:?}"),
    }
    let after_gap = next_event(&mut resumed).await;
    assert!(after_gap.id.starts_with("more-"), "{after_gap:?}");
    cluster.clean_up(&producer).await;
}

/// A stream deleted under a node stops it (rather than have it serve a journal that is gone);
/// started again, it follows the re-created stream under a new epoch, and an old cursor gets
/// `Gap(EPOCH_CHANGED)`, never a silent wrong replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_stream_is_a_new_epoch() {
    let cluster = Cluster::unique("cluster-epoch");
    let producer = Producer::connect().await;
    let a = cluster.node("a").await;
    publish_many(&a, "u1", "before", 3).await;
    let mut client = a.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    let marker = publish_many(&a, "u1", "marker", 1).await;
    let old = next_event(&mut stream).await;
    assert_eq!(old.id, marker[0]);
    let channel = producer.connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            cluster.stream.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    // The node stops, with the reason.
    let ended = tokio::time::timeout(PATIENCE, a.task)
        .await
        .expect("node a stopped");
    let error = ended.unwrap().expect_err("it stops with an error");
    assert!(format!("{error:#}").contains("deleted"), "{error:#}");
    // Started again on the same data, it follows the new stream.
    let again = TestServer::restart_on(&a.data, |config| cluster.apply(config, "a")).await;
    again.wait_ready().await;
    let fresh = publish_many(&again, "u1", "after", 1).await;
    let mut client = again.client().await;
    let resume = pb::SubscribeRequest {
        resume_after: old.cursor.clone(),
        ..Default::default()
    };
    let mut resumed = client
        .subscribe(with_token(resume, &token("u1", &["user"])))
        .await
        .unwrap()
        .into_inner();
    match next_kind(&mut resumed).await {
        Kind::Gap(gap) => {
            assert_eq!(
                gap.reason,
                i32::from(pb::GapReason::EpochChanged),
                "{gap:?}"
            );
        }
        other => panic!("expected a Gap, got {other:?}"),
    }
    assert_eq!(next_event(&mut resumed).await.id, fresh[0]);
    cluster.clean_up(&producer).await;
}

/// The broker closes the connection a node reads the stream on: the node's subscribers' streams
/// stay open, and what was published meanwhile reaches them, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_connection_costs_subscribers_nothing() {
    let cluster = Cluster::unique("cluster-reconnect");
    let producer = Producer::connect().await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut on_b = b.client().await;
    let mut stream = subscribe(&mut on_b, request("u1")).await;
    let before = publish_many(&a, "u1", "before", 3).await;
    for id in &before {
        assert_eq!(&next_event(&mut stream).await.id, id);
    }
    let b_node = format!("{}-b", cluster.names.node_id);
    let follower = format!("notify-backbone {b_node} follower");
    support::amqp::close_connections(support::amqp::connection_pids_named(&follower).await).await;
    let during = publish_many(&a, "u1", "during", 20).await;
    for id in &during {
        assert_eq!(&next_event(&mut stream).await.id, id, "in order, none lost");
    }
    cluster.clean_up(&producer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_up_stops_being_ready_and_catches_up_by_itself() {
    let Some(tmpfs) = support::tmpfs::Tmpfs::mount("cluster", 16) else {
        return;
    };
    let cluster = Cluster::unique("cluster-disk-full");
    let producer = Producer::connect().await;
    // Node a first: it becomes the writer (the ingest queue's first, single active consumer),
    // so the stream takes events while b's replica cannot.
    let a = cluster.node("a").await;
    let replica = tmpfs.dir.join("data");
    let b = TestServer::start_with(|config| {
        cluster.apply(config, "b");
        config.journal.data_dir = replica;
        config.journal.journal_min_free = 1 << 20;
    })
    .await;
    b.wait_ready().await;
    let mut client = b.client().await;
    let mut live = subscribe(&mut client, request("*")).await;
    let mut on_a = subscribe(&mut a.client().await, request("*")).await;
    let filler = tmpfs.fill_leaving(2 << 20);

    let published: Vec<String> = (0..300).map(|n| format!("replica-{n}")).collect();
    for id in &published {
        let body = support::tmpfs::padded_event(id, 8000);
        producer
            .publish(&cluster.names.exchange, "billing.padding", body.as_bytes())
            .await;
    }
    // b cannot keep its replica: not ready, while a has every event.
    eventually("b not ready", async || {
        let readyz = b.http_get("/readyz").await;
        seen_if(!readyz.starts_with("HTTP/1.1 200"), readyz)
    })
    .await;
    for id in &published {
        assert_eq!(&next_event(&mut on_a).await.id, id);
    }

    // Room again: b reads on from its replica's head, by itself.
    std::fs::remove_file(filler).unwrap();
    b.wait_ready().await;
    let sentinel = support::tmpfs::padded_event("replica-sentinel", 10);
    producer
        .publish(
            &cluster.names.exchange,
            "billing.padding",
            sentinel.as_bytes(),
        )
        .await;
    let mut received = Vec::new();
    loop {
        let event = next_event(&mut live).await;
        if event.id == "replica-sentinel" {
            break;
        }
        received.push(event.id);
    }
    assert_eq!(received, published, "b's subscriber: each once, in order");
    cluster.clean_up(&producer).await;
}

/// A client of a node process.
async fn client_of(
    node: &Node,
) -> pb::notification_service_client::NotificationServiceClient<tonic::transport::Channel> {
    pb::notification_service_client::NotificationServiceClient::connect(node.url.clone())
        .await
        .unwrap()
}

/// Three nodes start (two at the same moment, as a deployment starts them), one event goes
/// through the writer, and they stop: nothing in any log an operator would be paged for,
/// neither with the server's default log filter (nodes a and b) nor with lapin's own lines
/// shown (node c: our code gives it no cause for an error either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_start_and_stop_logs_no_warning_and_no_error() {
    let cluster = Cluster::unique("cluster-quiet");
    let producer = Producer::connect().await;
    let logs = Logs::default();
    let data: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let (args_a, args_b) = (cluster.args("a"), cluster.args("b"));
    let (a, b) = tokio::join!(
        start_node_logging(&args_a, &data[0].0, 0, &logs, None),
        start_node_logging(&args_b, &data[1].0, 1, &logs, None),
    );
    a.wait_ready(&logs).await;
    b.wait_ready(&logs).await;
    let c = start_node_logging(
        &cluster.args("c"),
        &data[2].0,
        2,
        &logs,
        Some("info,lapin=warn"),
    )
    .await;
    c.wait_ready(&logs).await;
    let mut on_a = client_of(&a).await;
    let mut firehose = subscribe(&mut on_a, request("*")).await;
    let mut on_c = client_of(&c).await;
    let published = publish_json(
        &mut on_c,
        "device.error",
        &device_error("quiet", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut firehose, &published.id, "node a's firehose").await;
    drop(firehose);
    for node in [c, b, a] {
        node.stop(&logs).await;
    }
    let trouble = logs.trouble();
    assert!(trouble.is_empty(), "{trouble:#?}");
    cluster.clean_up(&producer).await;
}

/// The broker closes the connection a node reads the stream on: the node says so once, as a
/// warning with the broker's reason, and reconnects; lapin's own account of the same closing
/// (an ERROR of its own) does not reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_broker_closes_is_one_warning_and_no_error() {
    let cluster = Cluster::unique("cluster-forced");
    let producer = Producer::connect().await;
    let logs = Logs::default();
    let data = DataDir::new();
    let a = start_node_logging(&cluster.args("a"), &data.0, 0, &logs, None).await;
    a.wait_ready(&logs).await;
    let follower = format!("notify-backbone {}-a follower", cluster.names.node_id);
    close_connections(connection_pids_named(&follower).await).await;
    // Publish answers once the event was read back from the stream: the follower is back.
    let mut client = client_of(&a).await;
    let mut firehose = subscribe(&mut client, request("*")).await;
    let published = publish_json(
        &mut client,
        "device.error",
        &device_error("after", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut firehose, &published.id, "the firehose").await;
    drop(firehose);
    a.stop(&logs).await;
    let trouble = logs.trouble();
    assert!(
        trouble.iter().all(|line| !line.contains(" ERROR ")),
        "{trouble:#?}"
    );
    assert_eq!(trouble.len(), 1, "{trouble:#?}");
    assert!(
        trouble[0].contains("notify_backbone::cluster::follower")
            && trouble[0].contains("CONNECTION_FORCED"),
        "{trouble:#?}"
    );
    cluster.clean_up(&producer).await;
}

/// A stream of that name exists already with other arguments (another deployment's, or this
/// cluster's before its retention flags changed): the node stops with the reason instead of
/// retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_declared_with_other_arguments_stops_the_node_with_the_reason() {
    let cluster = Cluster::unique("cluster-conflict");
    let producer = Producer::connect().await;
    let channel = producer.connection.create_channel().await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("stream".into()),
    );
    arguments.insert(
        "x-max-age".into(),
        lapin::types::AMQPValue::LongString("1h".into()),
    );
    channel
        .queue_declare(
            cluster.stream.as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .unwrap();
    let node = TestServer::start_with(|config| cluster.apply(config, "a")).await;
    let ended = tokio::time::timeout(PATIENCE, node.task)
        .await
        .expect("the node stops");
    let error = format!("{:#}", ended.unwrap().expect_err("with an error"));
    assert!(
        error.contains("exists with other arguments") && error.contains("inequivalent arg"),
        "{error}"
    );
    cluster.clean_up(&producer).await;
}

/// Waits until `node`'s `notify_journal_writer` is `value`.
async fn wait_for_writer_gauge(node: &Node, value: f64, logs: &Logs) {
    let what = format!("run {}: notify_journal_writer is {value}", node.run);
    eventually(what, async || {
        let gauge = node.metric("notify_journal_writer").await;
        seen_if(gauge == value, format!("{gauge}; log:\n{}", logs.tail(40)))
    })
    .await;
}

/// No event is published at all: the node that became the ingest queue's active consumer says
/// it is the cluster's writer (the gauge and one log line) at once, and when it stops, the node
/// that takes over says so too, while the stopped one said it no longer is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_says_so_before_any_event_and_again_after_a_hand_over() {
    let cluster = Cluster::unique("cluster-writer");
    let producer = Producer::connect().await;
    let logs = Logs::default();
    let data: Vec<DataDir> = (0..2).map(|_| DataDir::new()).collect();
    let a = start_node_logging(&cluster.args("a"), &data[0].0, 0, &logs, None).await;
    a.wait_ready(&logs).await;
    wait_for_writer_gauge(&a, 1.0, &logs).await;
    let b = start_node_logging(&cluster.args("b"), &data[1].0, 1, &logs, None).await;
    b.wait_ready(&logs).await;
    let is_writer = "this node is the cluster's writer";
    let said = logs.containing(is_writer);
    assert!(
        said.len() == 1 && said[0].starts_with("[run 0]"),
        "{said:#?}"
    );
    // b is ready, and its probe went to a: b is not the writer.
    assert_eq!(b.metric("notify_journal_writer").await, 0.0);
    a.stop(&logs).await;
    wait_for_writer_gauge(&b, 1.0, &logs).await;
    let said = logs.containing(is_writer);
    assert!(
        said.len() == 2 && said[1].starts_with("[run 1]"),
        "{said:#?}"
    );
    let no_longer = logs.containing("no longer the cluster's writer");
    assert!(
        no_longer.len() == 1 && no_longer[0].starts_with("[run 0]"),
        "{no_longer:#?}"
    );
    b.stop(&logs).await;
    cluster.clean_up(&producer).await;
}

/// The value of `field=` in a log line.
fn field<'a>(line: &'a str, field: &str) -> &'a str {
    let (_, rest) = line
        .split_once(&format!(" {field}="))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    rest.split_whitespace().next().unwrap()
}

/// A node says at start which journal it joins: a new one on an empty stream; the one the
/// stream holds (its epoch, first and last offsets) when another node wrote it already, so a
/// node started on names another deployment uses does not join that journal without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_says_at_start_which_journal_it_joins() {
    let cluster = Cluster::unique("cluster-joins");
    let producer = Producer::connect().await;
    let logs = Logs::default();
    let data: Vec<DataDir> = (0..2).map(|_| DataDir::new()).collect();
    let a = start_node_logging(&cluster.args("a"), &data[0].0, 0, &logs, None).await;
    a.wait_ready(&logs).await;
    let new = logs.containing("a new journal begins");
    assert!(new.len() == 1 && new[0].starts_with("[run 0]"), "{new:#?}");
    assert!(
        new[0].contains(&format!("stream={}", cluster.stream)),
        "{new:?}"
    );
    let mut client = client_of(&a).await;
    let mut last = None;
    for i in 0..3 {
        let event = device_error(&format!("joins-{i}"), "u1", "d1");
        last = Some(
            publish_json(&mut client, "device.error", &event)
                .await
                .unwrap(),
        );
    }
    let last = Cursor::parse(&last.unwrap().cursor).unwrap();
    let b = start_node_logging(&cluster.args("b"), &data[1].0, 1, &logs, None).await;
    b.wait_ready(&logs).await;
    let joins = logs.containing("joining the journal the stream holds");
    assert!(
        joins.len() == 1 && joins[0].starts_with("[run 1]"),
        "{joins:#?}"
    );
    assert_eq!(field(&joins[0], "epoch"), format!("{:016x}", last.epoch));
    assert_eq!(field(&joins[0], "first_offset"), "0");
    // The last event's offset is its position - 1; node a's stream holds no more after it.
    let last_offset: u64 = field(&joins[0], "last_offset").parse().unwrap();
    assert_eq!(last_offset, last.position - 1, "{joins:?}");
    b.stop(&logs).await;
    a.stop(&logs).await;
    cluster.clean_up(&producer).await;
}

/// `serve --check` of a cluster node with its broker given says what the broker holds under its
/// names: nothing yet, then (a node running) the stream's epoch and offsets and the ingest
/// queue's consumer; a broker it cannot reach is reported, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_check_says_whether_the_cluster_names_are_in_use() {
    let cluster = Cluster::unique("cluster-check");
    let producer = Producer::connect().await;
    let data = DataDir::new();
    let check = |url: String| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-backbone"));
        command
            .args(["serve", "--check", "--jwt-secret", "s", "--data-dir"])
            .arg(&data.0)
            .args(["--journal", "rabbitmq-stream", "--amqp-url", &url])
            .args(["--stream", &cluster.stream])
            .args(["--ingest-queue", &cluster.ingest_queue])
            .env_remove("RUST_LOG");
        async move {
            let output = command.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
        }
    };
    let before = check(support::amqp::amqp_url()).await;
    for expected in [
        format!("journal stream {}: does not exist", cluster.stream),
        format!("ingest queue {}: does not exist", cluster.ingest_queue),
        "these names are not in use".to_owned(),
    ] {
        assert!(before.contains(&expected), "{expected:?} in {before}");
    }
    let a = cluster.node("a").await;
    let mut client = a.client().await;
    let published = publish_json(&mut client, "device.error", &device_error("c1", "u1", "d1"))
        .await
        .unwrap();
    let cursor = Cursor::parse(&published.cursor).unwrap();
    let after = check(support::amqp::amqp_url()).await;
    for expected in [
        format!("journal stream {}: exists", cluster.stream),
        format!(
            "epoch {:016x}, offsets 0 to {}",
            cursor.epoch,
            cursor.position - 1
        ),
        format!("ingest queue {}: exists", cluster.ingest_queue),
        "1 consumers (nodes running on it)".to_owned(),
        "these names are in use".to_owned(),
    ] {
        assert!(after.contains(&expected), "{expected:?} in {after}");
    }
    assert!(!data.0.exists(), "--check creates nothing");
    let unreachable = check("amqp://guest:guest@127.0.0.1:1/%2f".into()).await;
    assert!(
        unreachable.starts_with("configuration OK") && unreachable.contains("unreachable"),
        "{unreachable}"
    );
    cluster.clean_up(&producer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_a_different_event_is_refused_on_any_node() {
    let cluster = Cluster::unique("cluster-conflicting-id");
    let producer = Producer::connect().await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut on_b = b.client().await;
    let first = publish_json(
        &mut on_b,
        "device.error",
        &device_error("reused", "u1", "d1"),
    )
    .await
    .unwrap();
    // Through the other node, another user's event under the same id: refused by the writer,
    // said as on one node, without the stored event's cursor.
    let mut on_a = a.client().await;
    let refused = publish_json(
        &mut on_a,
        "device.error",
        &device_error("reused", "u2", "d2"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(!refused.message().contains(&first.cursor), "{refused:?}");
    // A true re-send is still a duplicate at the first cursor.
    let again = publish_json(
        &mut on_a,
        "device.error",
        &device_error("reused", "u1", "d1"),
    )
    .await
    .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.cursor, first.cursor);
    cluster.clean_up(&producer).await;
}

/// The inbox in cluster mode: events through RabbitMQ become items on every node; a mark on
/// node a reaches the owner's stream on node c at once and gives the same counts on every node;
/// an admin's own notices likewise. Every node derives the state from the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_on_one_node_gives_the_same_counts_and_updates_on_every_node() {
    let cluster = Cluster::unique("cluster-inbox");
    let producer = Producer::connect().await;
    let nodes = [
        cluster.node("a").await,
        cluster.node("b").await,
        cluster.node("c").await,
    ];
    let user = token("ci-u1", &["user"]);
    let admin = token("ci-root", &["admin"]);
    let mut on_c = nodes[2].client().await;
    let request = pb::SubscribeRequest {
        inbox: true,
        ..Default::default()
    };
    let mut stream = on_c
        .subscribe(with_token(request, &user))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next_kind(&mut stream).await, Kind::CaughtUp(_)));
    assert!(matches!(next_kind(&mut stream).await, Kind::Inbox(_)));
    for id in ["ci-1", "ci-2", "ci-3"] {
        producer
            .publish(
                &cluster.names.exchange,
                "device.error",
                device_error(id, "ci-u1", "d1").as_bytes(),
            )
            .await;
    }
    let mut last = None;
    for _ in 0..3 {
        loop {
            if let Kind::Inbox(update) = next_kind(&mut stream).await {
                last = Some(update);
                break;
            }
        }
    }
    assert_eq!(last.unwrap().counts.unwrap().unread, 3);

    // Marked on node a: a's answer, c's stream and every node's counts agree.
    let mut on_a = nodes[0].client().await;
    let marked = on_a
        .mark_inbox(with_token(
            pb::MarkInboxRequest {
                mark: pb::InboxMark::Read.into(),
                ids: vec!["ci-1".into(), "ci-2".into()],
                ..Default::default()
            },
            &user,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(marked.changed, 2);
    let after = marked.counts.unwrap();
    assert_eq!(after.unread, 1);
    let update = loop {
        if let Kind::Inbox(update) = next_kind(&mut stream).await {
            break update;
        }
    };
    assert_eq!(update.reason, pb::InboxUpdateReason::Marked as i32);
    assert_eq!(update.counts.as_ref(), Some(&after));
    for node in &nodes {
        let mut client = node.client().await;
        let counts = client
            .get_inbox_counts(with_token(pb::GetInboxCountsRequest::default(), &user))
            .await
            .unwrap()
            .into_inner()
            .counts
            .unwrap();
        assert_eq!(counts, after, "node {}", node.url());
    }

    // An admin's first use on node b creates their admin inbox everywhere, with the notices
    // from before; a mark on c is seen on a.
    for n in 0..3 {
        let (routing_key, body) = fixture_for("billing.low_balance.flat.json", &format!("ci-{n}"));
        producer
            .publish(&cluster.names.exchange, &routing_key, body.as_bytes())
            .await;
    }
    // Through the same ingest queue, after them: once it is answered, the notices are in the
    // stream, and the admin's first use (which follows) comes after them there.
    let after_notices = publish_json(
        &mut on_a,
        "device.error",
        &device_error("ci-after-notices", "ci-u1", "d1"),
    )
    .await
    .unwrap();
    assert!(!after_notices.duplicate);
    let mut on_b = nodes[1].client().await;
    let notices = on_b
        .get_inbox_counts(with_token(
            pb::GetInboxCountsRequest {
                admin_inbox: true,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .counts
        .unwrap();
    assert_eq!(notices.unread, 3);
    on_c.mark_inbox(with_token(
        pb::MarkInboxRequest {
            admin_inbox: true,
            mark: pb::InboxMark::Read.into(),
            all: true,
            ..Default::default()
        },
        &admin,
    ))
    .await
    .unwrap();
    let on_a_admin = on_a
        .get_inbox_counts(with_token(
            pb::GetInboxCountsRequest {
                admin_inbox: true,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .counts
        .unwrap();
    // Node a may read the stream a moment after c applied the mark: wait for it, never for
    // different numbers.
    let on_a_admin = if on_a_admin.unread == 0 {
        on_a_admin
    } else {
        support::eventually::eventually("node a to apply the admin's mark", async || {
            let counts = on_a
                .get_inbox_counts(with_token(
                    pb::GetInboxCountsRequest {
                        admin_inbox: true,
                        ..Default::default()
                    },
                    &admin,
                ))
                .await
                .unwrap()
                .into_inner()
                .counts
                .unwrap();
            (counts.unread == 0).then_some(counts)
        })
        .await
    };
    assert_eq!(on_a_admin.total, 3);
    cluster.clean_up(&producer).await;
}
