//! Resume by cursor over gRPC: replay of exactly the missed events the caller may see, then
//! `CaughtUp`, then live events; gaps in-band; the journal survives a restart.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use notify_backbone::pb::{self, subscribe_response::Kind};
use support::*;
use tonic::Streaming;

/// Everything up to and including `CaughtUp`: (event ids, gaps, the CaughtUp cursor).
async fn until_caught_up(
    stream: &mut Streaming<pb::SubscribeResponse>,
) -> (Vec<String>, Vec<pb::Gap>, String) {
    let (mut ids, mut gaps) = (Vec::new(), Vec::new());
    loop {
        match next_kind(stream).await {
            Kind::Event(event) => ids.push(event.id),
            Kind::Gap(gap) => gaps.push(gap),
            Kind::CaughtUp(caught_up) => return (ids, gaps, caught_up.cursor),
            Kind::Heartbeat(_) | Kind::Inbox(_) => {}
            Kind::Conflated(c) => panic!("a stream without conflation skipped {c:?}"),
        }
    }
}

fn resume(user: &str, after: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        user_id: user.into(),
        resume_after: after.into(),
        ..Default::default()
    }
}

/// Publishes `count` device errors alternating between u1 and u2; returns u1's (id, cursor)s.
async fn publish_alternating(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
    prefix: &str,
    count: usize,
) -> Vec<(String, String)> {
    let mut mine = Vec::new();
    for i in 0..count {
        let user = if i % 2 == 0 { "u1" } else { "u2" };
        let id = format!("{prefix}-{i}");
        let published = publish_json(client, "device.error", &device_error(&id, user, "d1"))
            .await
            .unwrap();
        if user == "u1" {
            mine.push((published.id, published.cursor));
        }
    }
    mine
}

#[tokio::test]
async fn resuming_anywhere_replays_exactly_what_was_missed_then_goes_live() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // The cursor of an empty journal: what a client that has seen nothing keeps.
    let mut first = open_stream(&mut client, request("u1")).await;
    let Kind::CaughtUp(start) = next_kind(&mut first).await else {
        panic!("CaughtUp first");
    };
    drop(first);
    let mut mine = publish_alternating(&mut client, "r", 20).await;
    let head = mine.last().unwrap().1.clone();

    // (cursor to resume after, how many of u1's events that skips): the start, the first
    // event, the middle, the head.
    let points = [
        (start.cursor.clone(), 0),
        (mine[0].1.clone(), 1),
        (mine[4].1.clone(), 5),
        (head.clone(), mine.len()),
    ];
    for (after, skip) in points {
        let mut stream = open_stream(&mut client, resume("u1", &after)).await;
        let (ids, gaps, caught_up) = until_caught_up(&mut stream).await;
        let expected: Vec<String> = mine[skip..].iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, expected, "resume after {after}");
        assert!(gaps.is_empty(), "{gaps:?}");
        let newest = &mine.last().unwrap().1;
        assert!(caught_up >= *newest, "CaughtUp {caught_up} before {newest}");
        // Then live, nothing twice. (It is stored too: later resumes replay it.)
        let live = format!("live-{skip}");
        let published = publish_json(
            &mut client,
            "device.error",
            &device_error(&live, "u1", "d1"),
        )
        .await
        .unwrap();
        assert_eq!(next_event(&mut stream).await.id, live);
        mine.push((published.id, published.cursor));
        // Nothing twice: the next event published is the next to arrive.
        let next = format!("next-{skip}");
        let published = publish_json(
            &mut client,
            "device.error",
            &device_error(&next, "u1", "d1"),
        )
        .await
        .unwrap();
        assert_next_is(&mut stream, &next, &format!("resumed after {after}")).await;
        mine.push((published.id, published.cursor));
    }
}

#[tokio::test]
async fn replay_applies_authorization_and_filters() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut first = open_stream(&mut client, request("u1")).await;
    let Kind::CaughtUp(start) = next_kind(&mut first).await else {
        panic!("CaughtUp first");
    };
    publish_alternating(&mut client, "a", 6).await;
    publish_json(
        &mut client,
        "billing.payment_success",
        &body::payment_success("u1", "p1"),
    )
    .await
    .unwrap();
    // u1's own stream, billing only: exactly the payment, none of u2's events.
    let request = pb::SubscribeRequest {
        event_types: vec!["billing.*".into()],
        ..resume("u1", &start.cursor)
    };
    let mut stream = open_stream(&mut client, request).await;
    let (ids, _, _) = until_caught_up(&mut stream).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    // An admin's firehose replays everyone's.
    let mut firehose = open_stream(&mut client, resume("*", &start.cursor)).await;
    let (ids, _, _) = until_caught_up(&mut firehose).await;
    assert_eq!(ids.len(), 7, "{ids:?}");
}

#[tokio::test]
async fn a_cursor_of_another_journal_gets_a_gap_then_everything_retained() {
    let other = TestServer::start().await;
    let mut other_client = other.client().await;
    let foreign = publish_json(
        &mut other_client,
        "device.error",
        &device_error("elsewhere", "u1", "d1"),
    )
    .await
    .unwrap()
    .cursor;

    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mine = publish_alternating(&mut client, "e", 4).await;
    let mut stream = open_stream(&mut client, resume("u1", &foreign)).await;
    let (ids, gaps, _) = until_caught_up(&mut stream).await;
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].from_cursor, foreign);
    assert_eq!(gaps[0].reason, i32::from(pb::GapReason::EpochChanged));
    let expected: Vec<String> = mine.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, expected, "the oldest retained events follow the gap");
}

#[tokio::test]
async fn the_journal_survives_a_restart_and_resume_continues_across_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let before = publish_alternating(&mut client, "before", 6).await;
    let data = server.stop_within(Duration::from_secs(10)).await;

    let server = TestServer::restart_on(&data, |_| {}).await;
    let mut client = server.client().await;
    let after = publish_alternating(&mut client, "after", 4).await;
    // The same epoch: positions continue, a cursor from before the restart resumes cleanly.
    let mut stream = open_stream(&mut client, resume("u1", &before[0].1)).await;
    let (ids, gaps, _) = until_caught_up(&mut stream).await;
    assert!(gaps.is_empty(), "{gaps:?}");
    let expected: Vec<String> = before[1..]
        .iter()
        .chain(&after)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids, expected);
    // And what was stored before is still recognised: a re-send is a duplicate.
    let again = publish_json(
        &mut client,
        "device.error",
        &device_error("before-0", "u1", "d1"),
    )
    .await
    .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.cursor, before[0].1);
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_a_gap_then_the_oldest_retained_events() {
    let server = TestServer::start_with(|c| {
        c.journal.retention_age = Duration::from_secs(1);
        c.journal.retention_interval = Duration::from_millis(50);
    })
    .await;
    let mut client = server.client().await;
    let old = publish_alternating(&mut client, "old", 4).await;
    // Wait until retention has removed all of them (on a loaded machine they age one by one):
    // a resume from the first then starts with a gap past the last.
    let gap = eventually("retention removes all the old events", async || {
        let mut stream = open_stream(&mut client, resume("u1", &old[0].1)).await;
        let (_, gaps, _) = until_caught_up(&mut stream).await;
        match gaps.into_iter().next() {
            Some(gap) if gap.to_cursor >= old.last().unwrap().1 => Ok(gap),
            gap => Err(gap),
        }
    })
    .await;
    assert_eq!(gap.reason, i32::from(pb::GapReason::Retention));
    assert_eq!(gap.from_cursor, old[0].1);
    // Events stored after the prune are replayed after the gap; the stream stays open.
    let fresh = publish_alternating(&mut client, "fresh", 2).await;
    let mut stream = open_stream(&mut client, resume("u1", &old[0].1)).await;
    let (ids, gaps, _) = until_caught_up(&mut stream).await;
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0].to_cursor >= old.last().unwrap().1, "{gaps:?}");
    assert_eq!(ids, [fresh[0].0.clone()]);
    publish_json(
        &mut client,
        "device.error",
        &device_error("still-open", "u1", "d"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut stream).await.id, "still-open");
}

async fn list(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
    request: pb::ListEventsRequest,
    token: &str,
) -> Result<pb::ListEventsResponse, tonic::Status> {
    client
        .list_events(with_token(request, token))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn list_events_pages_through_history_with_the_same_rules_as_subscribe() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mine = publish_alternating(&mut client, "h", 15).await;
    let u1 = token("u1", &["user"]);

    // Pages of 3 of u1's own events (user_id empty = own), oldest first, until the end.
    let (mut ids, mut after, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = list(
            &mut client,
            pb::ListEventsRequest {
                after: after.clone(),
                limit: 3,
                ..Default::default()
            },
            &u1,
        )
        .await
        .unwrap();
        assert!(page.gap.is_none());
        assert!(page.events.len() <= 3);
        assert!(page.events.iter().all(|e| e.user_id == "u1"));
        ids.extend(page.events.into_iter().map(|e| e.id));
        after = page.next_cursor;
        pages += 1;
        if page.end {
            break;
        }
        assert!(pages < 20, "never reached the end");
    }
    let expected: Vec<String> = mine.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, expected);
    // The last page's cursor is a valid resume point: nothing missed, nothing repeated.
    let mut stream = open_stream(&mut client, resume("u1", &after)).await;
    let (replayed, gaps, _) = until_caught_up(&mut stream).await;
    assert!(replayed.is_empty() && gaps.is_empty());

    // The same authorization as Subscribe.
    let status = list(
        &mut client,
        pb::ListEventsRequest {
            user_id: "u2".into(),
            ..Default::default()
        },
        &u1,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = client
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = list(
        &mut client,
        pb::ListEventsRequest {
            after: "garbage".into(),
            ..Default::default()
        },
        &u1,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // An admin lists everyone's, filtered by type.
    let page = list(
        &mut client,
        pb::ListEventsRequest {
            user_id: "*".into(),
            event_types: vec!["device.*".into()],
            limit: 100,
            ..Default::default()
        },
        &token("ops", &["admin"]),
    )
    .await
    .unwrap();
    assert_eq!(page.events.len(), 15);
    assert!(page.end);
}

#[tokio::test]
async fn newest_first_history_then_live_from_its_head_has_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mine = publish_alternating(&mut client, "n", 15).await;
    let u1 = token("u1", &["user"]);

    // First paint: the newest 3 of u1's events, newest first.
    let first = list(
        &mut client,
        pb::ListEventsRequest {
            newest_first: true,
            limit: 3,
            ..Default::default()
        },
        &u1,
    )
    .await
    .unwrap();
    let newest: Vec<String> = mine
        .iter()
        .rev()
        .take(3)
        .map(|(id, _)| id.clone())
        .collect();
    let shown: Vec<String> = first.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(shown, newest);
    assert!(!first.end && first.gap.is_none());
    assert!(!first.head_cursor.is_empty());

    // Older pages, with `before`, reach the oldest and end: every one of u1's events once.
    let (mut ids, mut before) = (shown.clone(), first.next_cursor.clone());
    for pages in 0.. {
        assert!(pages < 20, "never reached the end");
        let page = list(
            &mut client,
            pb::ListEventsRequest {
                newest_first: true,
                before: before.clone(),
                limit: 3,
                ..Default::default()
            },
            &u1,
        )
        .await
        .unwrap();
        assert!(page.events.iter().all(|e| e.user_id == "u1"));
        ids.extend(page.events.into_iter().map(|e| e.id));
        before = page.next_cursor;
        if page.end {
            break;
        }
    }
    let mut expected: Vec<String> = mine.iter().map(|(id, _)| id.clone()).collect();
    expected.reverse();
    assert_eq!(ids, expected);

    // An event published after the first page was read, before the console subscribes: live
    // from the page's head, it arrives, and nothing of the history comes again.
    publish_json(
        &mut client,
        "device.error",
        &device_error("after-paint", "u1", "d1"),
    )
    .await
    .unwrap();
    let mut stream = open_stream(&mut client, resume("u1", &first.head_cursor)).await;
    let (replayed, gaps, _) = until_caught_up(&mut stream).await;
    assert!(gaps.is_empty());
    assert_eq!(replayed, ["after-paint"]);

    // The directions do not mix.
    for request in [
        pb::ListEventsRequest {
            newest_first: true,
            after: first.next_cursor.clone(),
            ..Default::default()
        },
        pb::ListEventsRequest {
            before: first.next_cursor.clone(),
            ..Default::default()
        },
    ] {
        let status = list(&mut client, request, &u1).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    // A cursor that does not parse is named by its field.
    let status = list(
        &mut client,
        pb::ListEventsRequest {
            newest_first: true,
            before: "garbage".into(),
            ..Default::default()
        },
        &u1,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("before: "), "{status:?}");
}
