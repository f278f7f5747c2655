//! Storm control: a conflating catch-up delivers the latest of each key and reports every skip,
//! a paced stream keeps its rate without losing a change, an admin stream coalesces a burst of
//! notices; the cursors stay exact.

use std::time::Duration;

use super::*;
use crate::{hub::StormControl, pb::event::Payload};

fn quota(user: &str, quota_id: &str, version: u64) -> pb::Event {
    pb::Event {
        r#type: "quota.updated".into(),
        user_id: user.into(),
        payload: Some(Payload::QuotaUpdated(pb::QuotaUpdated {
            quota_id: quota_id.into(),
            status_text: version.to_string(),
            ..pb::QuotaUpdated::default()
        })),
        ..pb::Event::default()
    }
}

fn typed(event_type: &str, user: &str, device: &str) -> pb::Event {
    pb::Event {
        r#type: event_type.into(),
        user_id: user.into(),
        device_id: device.into(),
        ..pb::Event::default()
    }
}

fn notice(source_id: &str, cause: &str) -> pb::Event {
    pb::Event {
        r#type: schema::ADMIN_NOTICE_TYPE.into(),
        device_id: "d1".into(),
        payload: Some(Payload::AdminNotice(pb::AdminNotice {
            title: "Device error".into(),
            source_event_type: "device.error".into(),
            source_event_id: source_id.into(),
            cause: cause.into(),
            ..pb::AdminNotice::default()
        })),
        ..pb::Event::default()
    }
}

fn subscribe(hub: &Hub, filter: Filter, from: Option<u64>, storm: StormControl) -> Subscription {
    hub.subscribe_with(
        filter,
        Viewer::Admin,
        from.map(|position| Cursor {
            epoch: EPOCH,
            position,
        }),
        StreamOptions {
            storm,
            ..StreamOptions::default()
        },
    )
    .expect("subscribe")
}

const CONFLATE: StormControl = StormControl {
    conflate: true,
    max_events_per_second: 0,
};

fn position(cursor: &str) -> u64 {
    Cursor::parse(cursor).expect("a cursor").position
}

fn caught_up_at(kinds: &[Kind]) -> u64 {
    kinds
        .iter()
        .find_map(|k| match k {
            Kind::CaughtUp(c) => Some(position(&c.cursor)),
            _ => None,
        })
        .expect("CaughtUp")
}

/// The positions a stream's messages carry, in order (events, `Conflated`, `CaughtUp`).
fn positions(kinds: &[Kind]) -> Vec<u64> {
    kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Event(e) => Some(position(&e.cursor)),
            Kind::Conflated(c) => Some(position(&c.up_to_cursor)),
            Kind::CaughtUp(c) => Some(position(&c.cursor)),
            _ => None,
        })
        .collect()
}

fn skipped(kinds: &[Kind]) -> u64 {
    kinds
        .iter()
        .map(|k| match k {
            Kind::Conflated(c) => c.skipped,
            _ => 0,
        })
        .sum()
}

#[test]
fn a_conflating_catch_up_of_a_quota_storm_delivers_the_latest_of_each_quota() {
    let (hub, journal) = hub_with_journal(64);
    let mut publisher = Publisher::new(&hub, &journal);
    // 100,000 updates of 1,000 quotas, each quota updated 100 times, interleaved.
    for version in 0..100_u64 {
        for q in 0..1000 {
            publisher.send_event(quota("u1", &format!("q{q}"), version));
        }
    }
    let mut plain = subscribe(
        &hub,
        filter("u1", false, &[], ""),
        Some(0),
        StormControl::default(),
    );
    let mut conflating = subscribe(&hub, filter("u1", false, &[], ""), Some(0), CONFLATE);
    let all = drain(&mut plain);
    let latest = drain(&mut conflating);

    assert_eq!(event_ids(&all).len(), 100_000);
    let delivered: Vec<&pb::Event> = latest
        .iter()
        .filter_map(|k| match k {
            Kind::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(delivered.len() <= 1000, "{} deliveries", delivered.len());
    // The latest value of every quota, each once.
    let mut seen = std::collections::HashSet::new();
    for event in &delivered {
        let Some(Payload::QuotaUpdated(q)) = &event.payload else {
            panic!("not a quota: {event:?}");
        };
        assert_eq!(
            q.status_text, "99",
            "quota {} is not its latest",
            q.quota_id
        );
        assert!(seen.insert(q.quota_id.clone()));
    }
    assert_eq!(seen.len(), 1000);
    // Every skip reported; both streams end at the same cursor, in order.
    assert_eq!(skipped(&latest) + delivered.len() as u64, 100_000);
    assert_eq!(caught_up_at(&all), 100_000);
    assert_eq!(caught_up_at(&latest), 100_000);
    assert_eq!(conflating.last_cursor(), plain.last_cursor());
    assert_eq!(hub.shared.metrics.conflated.get(), 99_000);
    let order = positions(&latest);
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "cursors go back");
}

#[test]
fn a_conflating_catch_up_never_skips_a_change_and_resumes_exactly_from_a_conflated_cursor() {
    let (hub, journal) = hub_with_journal(64);
    let mut publisher = Publisher::new(&hub, &journal);
    let mut payments = Vec::new();
    for n in 0..2000_u64 {
        publisher.send_event(quota("u1", &format!("q{}", n % 10), n));
        if n % 7 == 0 {
            let mut payment = typed("billing.payment_success", "u1", "");
            payment.id = format!("pay{n}");
            payments.push(payment.id.clone());
            publisher.send_event(payment);
        }
        publisher.send_event(typed(
            if n % 2 == 0 {
                "device.started"
            } else {
                "device.stopped"
            },
            "u1",
            "d1",
        ));
    }
    let head = publisher.position;
    let mut conflating = subscribe(&hub, filter("u1", false, &[], ""), Some(0), CONFLATE);
    let kinds = drain(&mut conflating);
    let ids = event_ids(&kinds);
    let got: Vec<&String> = ids.iter().filter(|id| id.starts_with("pay")).collect();
    assert_eq!(got.len(), payments.len(), "every payment, in order");
    assert!(got.iter().zip(&payments).all(|(a, b)| *a == b));
    assert_eq!(caught_up_at(&kinds), head);
    assert_eq!(skipped(&kinds) + ids.len() as u64, head);
    // The latest device state (the last event published) arrived.
    assert_eq!(
        ids.last().map(String::as_str),
        Some(format!("e{head}").as_str())
    );

    // Resuming from a `Conflated` cursor: nothing after it is missing from the journal's view.
    let cut = kinds
        .iter()
        .find_map(|k| match k {
            Kind::Conflated(c) => Some(position(&c.up_to_cursor)),
            _ => None,
        })
        .expect("a Conflated report");
    let mut resumed = subscribe(
        &hub,
        filter("u1", false, &[], ""),
        Some(cut),
        StormControl::default(),
    );
    let after = event_ids(&drain(&mut resumed));
    assert_eq!(after.len() as u64, head - cut);
}

#[tokio::test(start_paused = true)]
async fn a_paced_stream_sends_at_most_its_rate_loses_no_change_and_ends_on_the_last_state() {
    let (hub, journal) = hub_with_journal(1024);
    let paced = subscribe(
        &hub,
        filter("u1", false, &[], ""),
        None,
        StormControl {
            conflate: false,
            max_events_per_second: 10,
        },
    );
    let (sent, mut received) = tokio::sync::mpsc::channel(4096);
    let reader = tokio::spawn(async move {
        let mut paced = paced;
        while let Some(frame) = tokio_stream::StreamExt::next(&mut paced).await {
            let kind = pb::SubscribeResponse::decode(frame.bytes)
                .unwrap()
                .kind
                .unwrap();
            if sent
                .send((tokio::time::Instant::now(), kind))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut publisher = Publisher::new(&hub, &journal);
    // A device flapping every 10 ms for 3 s, a payment in the middle.
    for n in 0..300_u64 {
        let state = if n % 2 == 0 {
            "device.started"
        } else {
            "device.stopped"
        };
        publisher.send_event(typed(state, "u1", "d1"));
        if n == 150 {
            let mut payment = typed("billing.payment_success", "u1", "");
            payment.id = "the-payment".into();
            publisher.send_event(payment);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut last = typed("device.stopped", "u1", "d1");
    last.id = "the-last-state".into();
    let last_position = publisher.send_event(last);

    let mut events = Vec::new();
    let mut skips = 0;
    while let Some((at, kind)) = received.recv().await {
        match kind {
            Kind::Event(event) => {
                let done = event.id == "the-last-state";
                events.push((at, event.id));
                if done {
                    break;
                }
            }
            Kind::Conflated(c) => skips += c.skipped,
            _ => {}
        }
    }
    reader.abort();
    // At most 10 in any second.
    for pair in events.windows(11) {
        assert!(
            pair[10].0 - pair[0].0 >= Duration::from_secs(1),
            "11 events within {:?}",
            pair[10].0 - pair[0].0
        );
    }
    assert!(events.iter().any(|(_, id)| id == "the-payment"));
    assert!(
        events.len() < 60,
        "{} events: the flapping was not conflated",
        events.len()
    );
    assert_eq!(skips + events.len() as u64, last_position);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_device_errors_is_one_notice_for_a_conflating_admin_then_single_ones() {
    let (hub, journal) = hub_with_journal(1024);
    let mut console = subscribe(&hub, filter("", true, &[], ""), None, CONFLATE);
    let mut service = subscribe(
        &hub,
        filter("", true, &[], ""),
        None,
        StormControl::default(),
    );
    let mut publisher = Publisher::new(&hub, &journal);
    let first = publisher.send_event(notice("err-0", "host_down"));
    for n in 1..400 {
        publisher.send_event(notice(&format!("err-{n}"), "host_down"));
    }
    // What the admin feed gets besides notices (every user's quota) waits behind the burst,
    // then comes in order.
    let mut update = quota("u1", "q1", 1);
    update.id = "the-update".into();
    publisher.send_event(update);

    let next_event = |kind: Option<Kind>| match kind {
        Some(Kind::Event(event)) => event,
        other => panic!("not an event: {other:?}"),
    };
    assert!(matches!(
        next_kind_of(&mut console).await,
        Some(Kind::CaughtUp(_))
    ));
    let coalesced = next_event(next_kind_of(&mut console).await);
    let Some(Payload::AdminNotice(content)) = &coalesced.payload else {
        panic!("not a notice: {coalesced:?}");
    };
    assert_eq!(content.count, 400);
    assert_eq!(content.sample_event_ids.len(), 10);
    assert_eq!(content.sample_event_ids[0], "err-0");
    assert_eq!(hub.shared.metrics.coalesced_notices.get(), 399);
    assert_eq!(position(&coalesced.cursor), first, "where the burst began");
    assert_eq!(
        next_event(next_kind_of(&mut console).await).id,
        "the-update"
    );

    // The burst is over: the next notices, seconds apart, come one by one.
    for n in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        publisher.send_event(notice(&format!("later-{n}"), "host_down"));
        let single = next_event(next_kind_of(&mut console).await);
        let Some(Payload::AdminNotice(content)) = &single.payload else {
            panic!("not a notice");
        };
        assert_eq!(
            (content.count, content.source_event_id.as_str()),
            (0, format!("later-{n}").as_str())
        );
    }
    // A stream without `conflate` got every notice.
    let all = drain(&mut service);
    assert_eq!(event_ids(&all).len(), 403, "400 + 2 notices and the update");
}

#[test]
fn skips_up_to_caught_up_are_reported_before_it_when_a_live_event_supersedes_the_last_replayed() {
    let (hub, journal) = hub_with_journal(64);
    let mut publisher = Publisher::new(&hub, &journal);
    for version in 0..10 {
        for q in 0..3 {
            publisher.send_event(quota("u1", &format!("q{q}"), version));
        }
    }
    let head = publisher.position;
    let mut console = subscribe(&hub, filter("u1", false, &[], ""), Some(0), CONFLATE);
    // Live, before the stream is read: it supersedes the last replayed event (q2).
    publisher.send_event(quota("u1", "q2", 10));
    let kinds = drain(&mut console);
    let at = kinds
        .iter()
        .position(|k| matches!(k, Kind::CaughtUp(_)))
        .expect("CaughtUp");
    let (before, after) = kinds.split_at(at);
    assert_eq!(
        skipped(before) + event_ids(before).len() as u64,
        head,
        "every replayed event delivered or reported before CaughtUp: {kinds:?}"
    );
    assert_eq!(event_ids(after).len(), 1, "the live update");
    let order = positions(&kinds);
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "cursors go back: {order:?}"
    );
}

#[tokio::test]
async fn a_conflating_catch_up_kept_waiting_by_the_journal_says_it_is_alive_at_its_last_cursor() {
    let (hub, journal) = pooled_hub_beating(Duration::from_millis(100));
    let mut publisher = Publisher::new(&hub, &journal);
    for q in 0..10 {
        publisher.send_event(quota("u1", &format!("q{q}"), 0));
    }
    // More than one read's worth of others' events: the second read waits at the gate.
    for _ in 0..(2 * REPLAY_SCAN_LIMIT) {
        publisher.send("quota.updated", "someone-else", "");
    }
    let (open, gate) = std::sync::mpsc::channel::<()>();
    *journal.gate.lock().unwrap() = Some(gate);
    journal.gate_after.store(1, Ordering::Relaxed);
    let mut console = subscribe(&hub, filter("u1", false, &[], ""), Some(0), CONFLATE);
    // The ten quotas are held (the catch-up is not over), the source's own heartbeats carry a
    // cursor past them: the stream's heartbeat says where it really is.
    let Some(Kind::Heartbeat(beat)) = next_kind_of(&mut console).await else {
        panic!("a heartbeat first");
    };
    assert_eq!(position(&beat.cursor), 0);
    drop(open);
    let mut quotas = 0;
    loop {
        match next_kind_of(&mut console).await {
            Some(Kind::Event(_)) => quotas += 1,
            Some(Kind::CaughtUp(c)) => {
                assert_eq!(position(&c.cursor), publisher.position);
                break;
            }
            Some(_) => {}
            None => panic!("ended"),
        }
    }
    assert_eq!(quotas, 10);
}
