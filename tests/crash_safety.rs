//! Crash safety with the real process and the real broker: events are published continuously
//! through RabbitMQ while the `notify-backbone` binary is `kill -9`ed at random moments (in the
//! steady flow, in the middle of a burst, while catching up a backlog) and restarted on the
//! same journal and queue. Afterwards every message the broker confirmed is in the journal
//! exactly once, and a subscriber that kept resuming from its last cursor across the crashes
//! received exactly the journal, in its order: nothing missed, nothing twice, no gap.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::Confirmation;
use rand::Rng as _;
use support::{
    amqp::{Names, Producer, queue_counts},
    process::{
        Logs, Received, broker_args, first, follow_the_firehose, journal_ids, repeated, start_node,
    },
    *,
};
use tokio::{
    sync::{oneshot, watch},
    task::JoinSet,
};

/// Events published through the broker, one every [`PUBLISH_EVERY`] plus the bursts: at least
/// this many, and more for as long as the kills go on (about 5,000 in 4 to 5 s in all).
const MIN_EVENTS: usize = 2000;
/// Events published after the last restart, whatever the count: the last run ingests live too.
const TAIL_EVENTS: usize = 200;
const PUBLISH_EVERY: Duration = Duration::from_millis(3);
/// How many times the server is killed.
const KILLS: usize = 6;
/// How long a killed server's successor ran (after it was ready) before it is killed in turn.
const KILL_AFTER_MS: std::ops::Range<u64> = 200..900;
/// Events published back to back in a burst (see [`Moment`]).
const BURST: usize = 1000;
/// How long after a restart onto a backlog the run is killed.
const CATCHING_UP_MS: std::ops::Range<u64> = 0..100;
/// The bound on waiting for the queue to empty and the subscriber to catch up at the end.
const SETTLE: Duration = Duration::from_secs(60);

/// Where a kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// In the steady flow, [`KILL_AFTER_MS`] after the run got ready.
    Steady,
    /// At a random point of a burst of [`BURST`] events the run is ingesting live, after
    /// [`KILL_AFTER_MS`]: many deliveries are between receipt, journal commit and ack.
    Burst,
    /// [`CATCHING_UP_MS`] after a restart onto a backlog (a burst published while no node ran),
    /// while the run is catching up: the broker delivers as fast as the prefetch allows.
    CatchingUp,
}

/// The kills' moments, in turn.
const MOMENTS: [Moment; 3] = [Moment::Steady, Moment::Burst, Moment::CatchingUp];

/// One kill, for the report.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Kill {
    moment: Moment,
    /// Events published before it.
    published: usize,
    /// Of those, how many the subscriber had not received yet.
    behind: usize,
    /// How long the killed run had been ready.
    ran: Duration,
}

/// Asks the producer for a burst of [`BURST`] events and waits until `into` of them are out.
async fn burst(pace: &Pace, into: usize) {
    let target = pace.published.load(Ordering::SeqCst) + into;
    pace.burst.store(BURST, Ordering::SeqCst);
    let wait = Wait::within(PATIENCE).every(Duration::from_millis(1));
    wait.until("the burst gets going", async || {
        let published = pace.published.load(Ordering::SeqCst);
        seen_if(published >= target, published)
    })
    .await;
}

/// Shared between the producer and the kill schedule.
#[derive(Default)]
struct Pace {
    /// Events published so far.
    published: AtomicUsize,
    /// Set by the kill schedule: this many events back to back, then the steady pace again.
    burst: AtomicUsize,
    /// Set once the last kill is done: publish [`TAIL_EVENTS`] more and stop.
    kills_done: AtomicBool,
}

/// Publishes events `crash-00000`... one every [`PUBLISH_EVERY`] (and in bursts when asked),
/// persistent and mandatory, with publisher confirms (waited for concurrently, so the pace
/// does not depend on the broker's confirm latency): at least [`MIN_EVENTS`], and until
/// [`TAIL_EVENTS`] after the kills are done. Returns the ids the broker confirmed as routed to
/// a queue and the ones it did not, with why.
fn publish_steadily(exchange: String, pace: Arc<Pace>) -> tokio::task::JoinHandle<Confirms> {
    tokio::spawn(async move {
        let producer = Producer::connect().await;
        let mut confirms = JoinSet::new();
        let mut ticker = tokio::time::interval(PUBLISH_EVERY);
        // After a burst, the steady pace again (not a catch-up of the ticks the burst took).
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut tail, mut burst_left) = (None, 0);
        for n in 0.. {
            if tail.is_none() && pace.kills_done.load(Ordering::SeqCst) {
                tail = Some(n + TAIL_EVENTS);
            }
            if n >= MIN_EVENTS && tail.is_some_and(|end| n >= end) {
                break;
            }
            if burst_left == 0 {
                burst_left = pace.burst.swap(0, Ordering::SeqCst);
            }
            if burst_left > 0 {
                burst_left -= 1;
            } else {
                ticker.tick().await;
            }
            let id = format!("crash-{n:05}");
            let body = device_error(&id, "u-crash", &format!("d{}", n % 16));
            let confirm = producer
                .start_publish(&exchange, "device.error", body.as_bytes())
                .await;
            confirms.spawn(async move { (id, confirm.await) });
            pace.published.store(n + 1, Ordering::SeqCst);
        }
        let (mut confirmed, mut refused) = (Vec::new(), Vec::new());
        while let Some(joined) = confirms.join_next().await {
            match joined.unwrap() {
                (id, Ok(Confirmation::Ack(None))) => confirmed.push(id),
                (id, Ok(Confirmation::Ack(Some(_)))) => refused.push((id, "unroutable".into())),
                (id, other) => refused.push((id, format!("{other:?}"))),
            }
        }
        confirmed.sort();
        drop(producer);
        Confirms { confirmed, refused }
    })
}

/// The broker's answers to the publishes.
struct Confirms {
    /// Ids of the events it confirmed as routed to a queue, sorted.
    confirmed: Vec<String>,
    /// Those it did not, with its answer.
    refused: Vec<(String, String)>,
}

#[tokio::test]
async fn kill_9_mid_ingest_loses_and_repeats_nothing_in_the_journal_or_for_resuming_subscribers() {
    let began = Instant::now();
    let names = Names::unique("crash");
    // Without a broker this fails here, as every broker test does.
    let admin = Producer::connect().await;
    let data = DataDir::new();
    let logs = Logs::default();

    let mut node = start_node(&broker_args(&names), &data.0, 0, &logs).await;
    // Ready means the queue is declared and bound: nothing published from now on is unroutable.
    node.wait_ready(&logs).await;
    let (urls, urls_rx) = watch::channel(Some(node.url.clone()));
    let received = Arc::new(Mutex::new(Received::default()));
    let (caught_up_tx, caught_up) = oneshot::channel();
    let subscriber = follow_the_firehose(urls_rx, received.clone(), caught_up_tx);
    tokio::time::timeout(PATIENCE, caught_up)
        .await
        .expect("the subscriber got its first CaughtUp in time")
        .unwrap();

    let pace = Arc::new(Pace::default());
    let publishing = publish_steadily(names.exchange.clone(), pace.clone());
    let published = || pace.published.load(Ordering::SeqCst);
    let behind = || published().saturating_sub(received.lock().unwrap().ids.len());
    let mut kills = Vec::new();
    let mut duplicates = 0.0;
    let mut consumed = 0.0;
    let mut ready_at = Instant::now();
    for run in 1..=KILLS {
        let moment = MOMENTS[(run - 1) % MOMENTS.len()];
        match moment {
            Moment::Steady => {
                let pause = rand::rng().random_range(KILL_AFTER_MS);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Moment::Burst => {
                let pause = rand::rng().random_range(KILL_AFTER_MS);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let into = rand::rng().random_range(BURST / 5..BURST * 4 / 5);
                burst(&pace, into).await;
            }
            Moment::CatchingUp => {
                let pause = rand::rng().random_range(CATCHING_UP_MS);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        // What the run counted; redeliveries it recognised come from the previous kill.
        duplicates += node.metric("notify_duplicates_total").await;
        consumed += node.metric("notify_ingest_consumed_total").await;
        urls.send_replace(None);
        kills.push(Kill {
            moment,
            published: published(),
            behind: behind(),
            ran: ready_at.elapsed(),
        });
        node.kill(&logs).await;
        if run < KILLS && MOMENTS[run % MOMENTS.len()] == Moment::CatchingUp {
            // Down for a while: a backlog builds up for the next run.
            burst(&pace, BURST).await;
        }
        node = start_node(&broker_args(&names), &data.0, run, &logs).await;
        node.wait_ready(&logs).await;
        ready_at = Instant::now();
        urls.send_replace(Some(node.url.clone()));
    }
    pace.kills_done.store(true, Ordering::SeqCst);
    let kills_done = began.elapsed();

    let Confirms { confirmed, refused } = tokio::time::timeout(SETTLE, publishing)
        .await
        .expect("publishing finished in time")
        .unwrap();
    let published_in = began.elapsed();
    assert!(
        refused.is_empty(),
        "the broker did not take every publish: {}",
        first(&refused, 10)
    );
    let events = published();
    assert_eq!(confirmed.len(), events);
    assert!(
        kills
            .iter()
            .all(|kill| 0 < kill.published && kill.published < events),
        "every kill must come while events are being published, or the test proves less: \
         {kills:#?}"
    );

    // The last run ingests what is left: nothing ready, nothing unacknowledged.
    let queue = names.queue();
    let wait = Wait::within(SETTLE).every(Duration::from_millis(200));
    wait.until("the queue drains", async || {
        let (ready, unacked, _) = queue_counts(&queue).await;
        if (ready, unacked) == (0, 0) {
            return Ok(());
        }
        Err(format!(
            "{ready} ready, {unacked} unacked; log:\n{}",
            logs.tail(40)
        ))
    })
    .await;
    let (journal, newest) = journal_ids(&node.url).await;

    // The subscriber gets to the newest event of the journal.
    let what = format!("the subscriber reaches the journal's newest event {newest}");
    let wait = Wait::within(SETTLE).every(Duration::from_millis(50));
    wait.until(what, async || {
        let received = received.lock().unwrap();
        if received.last_cursor == newest {
            return Ok(());
        }
        Err(format!(
            "{} of the journal's {} events over {} streams; endings: {:?}; log:\n{}",
            received.ids.len(),
            journal.len(),
            received.streams,
            received.endings,
            logs.tail(40)
        ))
    })
    .await;
    // Nothing more can come: the queue is drained and the journal ends at `newest`.
    subscriber.abort();
    duplicates += node.metric("notify_duplicates_total").await;
    consumed += node.metric("notify_ingest_consumed_total").await;
    node.kill(&logs).await;
    let received = std::mem::take(&mut *received.lock().unwrap());
    eprintln!(
        "{events} events, {KILLS} kills {kills:#?}; kills done after \
         {kills_done:?}, publishing after {published_in:?}, all settled after {:?}; \
         {consumed} deliveries consumed, {duplicates} recognised as duplicates; the subscriber \
         used {} streams; {} warnings or errors logged",
        began.elapsed(),
        received.streams,
        logs.trouble().len()
    );
    for line in logs.trouble() {
        eprintln!("{line}");
    }

    // 1. Every message the broker confirmed is in the journal exactly once, and nothing else.
    let twice = repeated(&journal);
    assert!(
        twice.is_empty(),
        "{} events stored more than once: {}",
        twice.len(),
        first(&twice, 20)
    );
    let stored: HashSet<&String> = journal.iter().collect();
    let missing: Vec<&String> = confirmed.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} confirmed events missing from the journal: {}",
        missing.len(),
        first(&missing, 20)
    );
    let expected: HashSet<&String> = confirmed.iter().collect();
    let extra: Vec<&String> = journal.iter().filter(|id| !expected.contains(id)).collect();
    assert!(
        extra.is_empty(),
        "the journal holds events nobody published: {}",
        first(&extra, 20)
    );

    // 2. The subscriber, resuming from its last cursor after every crash, got exactly the
    //    journal in its order: no gap, nothing twice.
    assert!(
        received.gaps.is_empty(),
        "the subscriber was sent gaps: {:?}",
        received.gaps
    );
    assert!(
        received.streams > KILLS,
        "the subscriber resumed only {} times",
        received.streams - 1
    );
    let twice = repeated(&received.ids);
    assert!(
        twice.is_empty(),
        "the subscriber received {} events more than once: {}",
        twice.len(),
        first(&twice, 20)
    );
    if received.ids != journal {
        let at = received
            .ids
            .iter()
            .zip(&journal)
            .position(|(got, stored)| got != stored)
            .unwrap_or(received.ids.len().min(journal.len()));
        let around = |ids: &[String]| first(&ids[at.saturating_sub(2)..], 6);
        panic!(
            "the subscriber's events differ from the journal's at index {at} (received {}, \
             stored {}): received {} vs stored {}",
            received.ids.len(),
            journal.len(),
            around(&received.ids),
            around(&journal)
        );
    }
    // The kills hit while stored events were still unacknowledged, so the broker redelivered
    // some that were already in the journal: dedupe across a crash was exercised.
    assert!(
        duplicates >= 1.0,
        "no redelivery was recognised as a duplicate over {KILLS} kills: the test did not \
         exercise dedupe across a crash"
    );

    admin.clean_up(&[&names]).await;
}
