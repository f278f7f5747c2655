//! The notification centre against the real server: counts as events arrive (through `Publish`
//! and through RabbitMQ), marks, other users' ids, admins reading and not marking, each admin's
//! own notices, updates in-band on every open stream of the owner, preferences and quiet hours,
//! retention, and marks that survive a restart and a `kill -9`.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use notify_backbone::pb::{self, subscribe_response::Kind};
use support::{
    amqp::{Names, Producer},
    eventually::{Wait, eventually},
    process::{Logs, start_node},
    *,
};
use tonic::{Code, Streaming, transport::Channel};

type Client = pb::notification_service_client::NotificationServiceClient<Channel>;

fn user_token(user: &str) -> String {
    token(user, &["user"])
}

fn admin_token(admin: &str) -> String {
    token(admin, &["admin"])
}

/// Publishes the wire fixture `file` about `user` with event id `id`; returns the id.
async fn publish(client: &mut Client, file: &str, user: &str, id: &str) -> String {
    let (routing_key, body) = fixture_for(file, user);
    let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["eventId"] = id.into();
    publish_json(client, &routing_key, &json.to_string())
        .await
        .unwrap()
        .id
}

async fn counts(
    client: &mut Client,
    token: &str,
    user: &str,
    admin_inbox: bool,
) -> pb::InboxCounts {
    let request = pb::GetInboxCountsRequest {
        user_id: user.into(),
        admin_inbox,
    };
    client
        .get_inbox_counts(with_token(request, token))
        .await
        .unwrap()
        .into_inner()
        .counts
        .unwrap()
}

fn family(counts: &pb::InboxCounts, family: pb::InboxFamily) -> &pb::InboxFamilyCounts {
    counts
        .families
        .iter()
        .find(|f| f.family == family as i32)
        .unwrap()
}

async fn mark(
    client: &mut Client,
    token: &str,
    request: pb::MarkInboxRequest,
) -> Result<pb::MarkInboxResponse, tonic::Status> {
    client
        .mark_inbox(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn read_ids(ids: &[&str]) -> pb::MarkInboxRequest {
    pb::MarkInboxRequest {
        mark: pb::InboxMark::Read.into(),
        ids: ids.iter().map(|&id| id.into()).collect(),
        ..Default::default()
    }
}

async fn list(
    client: &mut Client,
    token: &str,
    request: pb::ListInboxRequest,
) -> Result<pb::ListInboxResponse, tonic::Status> {
    client
        .list_inbox(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn item_ids(page: &pb::ListInboxResponse) -> Vec<String> {
    page.items
        .iter()
        .map(|item| item.event.as_ref().unwrap().id.clone())
        .collect()
}

/// A stream of `user`'s own events with inbox updates, past its `CaughtUp`; returns it and the
/// `STATE` update that follows.
async fn inbox_stream(
    client: &mut Client,
    token: &str,
    admin_feed: bool,
) -> (Streaming<pb::SubscribeResponse>, pb::InboxUpdate) {
    let request = pb::SubscribeRequest {
        admin_feed,
        inbox: true,
        ..Default::default()
    };
    let mut stream = client
        .subscribe(with_token(request, token))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next_kind(&mut stream).await, Kind::CaughtUp(_)));
    match next_kind(&mut stream).await {
        Kind::Inbox(update) => {
            assert_eq!(update.reason, pb::InboxUpdateReason::State as i32);
            (stream, update)
        }
        other => panic!("expected the inbox's state after CaughtUp, got {other:?}"),
    }
}

/// The next inbox update of `stream`, skipping heartbeats and events.
async fn next_update(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::InboxUpdate {
    loop {
        match next_kind(stream).await {
            Kind::Inbox(update) => return update,
            Kind::Heartbeat(_) | Kind::Event(_) => {}
            other => panic!("expected an inbox update, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn counts_follow_events_and_marks_and_another_users_id_is_an_unknown_id() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let u1 = user_token("inbox-u1");
    let pay = publish(
        &mut client,
        "billing.payment_success.flat.json",
        "inbox-u1",
        "pay-1",
    )
    .await;
    let err = publish(
        &mut client,
        "device.error.envelope.json",
        "inbox-u1",
        "err-1",
    )
    .await;
    let app = publish(
        &mut client,
        "app.installed.shape-a.json",
        "inbox-u1",
        "app-1",
    )
    .await;
    let others = publish(
        &mut client,
        "app.installed.shape-a.json",
        "inbox-u2",
        "app-2",
    )
    .await;
    // quota.updated is state, not news: not in the inbox by default.
    publish(
        &mut client,
        "quota.updated.shape-b.json",
        "inbox-u1",
        "quota-1",
    )
    .await;

    let c = counts(&mut client, &u1, "", false).await;
    assert_eq!((c.total, c.unread, c.unseen), (3, 3, 3));
    assert_eq!(family(&c, pb::InboxFamily::Billing).unread, 1);
    assert_eq!(family(&c, pb::InboxFamily::Quota).total, 0);
    let page = list(&mut client, &u1, pb::ListInboxRequest::default())
        .await
        .unwrap();
    assert_eq!(item_ids(&page), [app.clone(), err.clone(), pay.clone()]);
    assert!(page.end);

    // Another user's id and an id that never existed are answered alike.
    let marked = mark(
        &mut client,
        &u1,
        read_ids(&[&pay, &others, "no-such-event"]),
    )
    .await
    .unwrap();
    assert_eq!(marked.changed, 1);
    assert_eq!(
        marked.unknown_ids,
        [others.clone(), "no-such-event".to_owned()]
    );
    assert_eq!(marked.counts.as_ref().unwrap().unread, 2);
    assert_eq!(
        counts(&mut client, &user_token("inbox-u2"), "", false)
            .await
            .unread,
        1
    );

    let unread = list(
        &mut client,
        &u1,
        pb::ListInboxRequest {
            filter: pb::InboxFilter::Unread.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(item_ids(&unread), [app.clone(), err.clone()]);

    // Archive: out of the inbox and its counts, still in history.
    let archived = mark(
        &mut client,
        &u1,
        pb::MarkInboxRequest {
            mark: pb::InboxMark::Archived.into(),
            ids: vec![err.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        archived.counts.as_ref().map(|c| (c.total, c.unread)),
        Some((2, 1))
    );
    let page = list(
        &mut client,
        &u1,
        pb::ListInboxRequest {
            filter: pb::InboxFilter::Archived.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(item_ids(&page), std::slice::from_ref(&err));
    assert!(page.items[0].archived);

    // All read; then one unread again.
    let all = mark(
        &mut client,
        &u1,
        pb::MarkInboxRequest {
            mark: pb::InboxMark::Read.into(),
            all: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        all.counts.as_ref().map(|c| (c.unread, c.unseen)),
        Some((0, 0))
    );
    let again = mark(
        &mut client,
        &u1,
        pb::MarkInboxRequest {
            mark: pb::InboxMark::Unread.into(),
            ids: vec![app.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        again.counts.as_ref().map(|c| (c.unread, c.unseen)),
        Some((1, 0))
    );

    // Bad requests say which field.
    for (request, field) in [
        (
            pb::MarkInboxRequest {
                ids: vec!["x".into()],
                ..Default::default()
            },
            "mark",
        ),
        (
            pb::MarkInboxRequest {
                mark: pb::InboxMark::Read.into(),
                ..Default::default()
            },
            "ids, up_to_cursor or all",
        ),
        (
            pb::MarkInboxRequest {
                mark: pb::InboxMark::Archived.into(),
                all: true,
                ..Default::default()
            },
            "only SEEN and READ",
        ),
        (
            pb::MarkInboxRequest {
                mark: pb::InboxMark::Read.into(),
                ids: (0..101).map(|n| n.to_string()).collect(),
                ..Default::default()
            },
            "at most 100",
        ),
    ] {
        let status = mark(&mut client, &u1, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
}

#[tokio::test]
async fn every_open_stream_of_the_owner_gets_each_change_and_no_one_else_does() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (a, b) = (user_token("tabs-u1"), user_token("tabs-u2"));
    let (mut tab_a, state) = inbox_stream(&mut client, &a, false).await;
    assert_eq!(state.counts.as_ref().unwrap().unread, 0);
    let (mut tab_b, _) = inbox_stream(&mut client, &a, false).await;
    let (mut other, _) = inbox_stream(&mut client, &b, false).await;

    let id = publish(
        &mut client,
        "billing.payment_success.flat.json",
        "tabs-u1",
        "tabs-pay",
    )
    .await;
    for tab in [&mut tab_a, &mut tab_b] {
        // The event first, then the update that counts it.
        assert_eq!(next_event(tab).await.id, id);
        let update = next_update(tab).await;
        assert_eq!(update.reason, pb::InboxUpdateReason::NewItems as i32);
        assert_eq!(update.ids, std::slice::from_ref(&id));
        assert!(!update.quiet);
        assert_eq!(update.counts.as_ref().unwrap().unread, 1);
    }
    mark(&mut client, &a, read_ids(&[&id])).await.unwrap();
    for tab in [&mut tab_a, &mut tab_b] {
        let update = next_update(tab).await;
        assert_eq!(update.reason, pb::InboxUpdateReason::Marked as i32);
        assert_eq!(update.mark, pb::InboxMark::Read as i32);
        assert_eq!(update.ids, std::slice::from_ref(&id));
        assert_eq!(update.counts.as_ref().unwrap().unread, 0);
    }
    // The other user's stream got nothing of it: its next message is its own sentinel event.
    let sentinel = publish(
        &mut client,
        "app.installed.shape-a.json",
        "tabs-u2",
        "tabs-sentinel",
    )
    .await;
    assert_next_is(&mut other, &sentinel, "another user's stream").await;

    // A stream that resumes gets the state as of now, not as of its cursor.
    let request = pb::SubscribeRequest {
        inbox: true,
        resume_after: state_cursor(&mut client, &a).await,
        ..Default::default()
    };
    let mut resumed = client
        .subscribe(with_token(request, &a))
        .await
        .unwrap()
        .into_inner();
    loop {
        match next_kind(&mut resumed).await {
            Kind::CaughtUp(_) => break,
            Kind::Event(_) | Kind::Heartbeat(_) => {}
            other => panic!("expected replay then CaughtUp, got {other:?}"),
        }
    }
    match next_kind(&mut resumed).await {
        Kind::Inbox(update) => {
            assert_eq!(update.reason, pb::InboxUpdateReason::State as i32);
            assert_eq!(
                update.counts.as_ref().map(|c| (c.total, c.unread)),
                Some((1, 0))
            );
        }
        other => panic!("expected the inbox's state, got {other:?}"),
    }
    // Without `inbox`, a stream carries no updates (as before the inbox existed).
    let mut plain = subscribe(&mut client, support::request("tabs-u1")).await;
    mark(
        &mut client,
        &a,
        pb::MarkInboxRequest {
            mark: pb::InboxMark::Unread.into(),
            ids: vec![id.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sentinel = publish(
        &mut client,
        "device.error.envelope.json",
        "tabs-u1",
        "tabs-sentinel-2",
    )
    .await;
    assert_next_is(&mut plain, &sentinel, "a stream without inbox updates").await;
}

/// The oldest retained cursor of `token`'s events, as a resume point that replays them all.
async fn state_cursor(client: &mut Client, token: &str) -> String {
    let request = pb::ListEventsRequest::default();
    let page = client
        .list_events(with_token(request, token))
        .await
        .unwrap()
        .into_inner();
    let first = page.events.first().unwrap().cursor.clone();
    let parsed = notify_backbone::store::Cursor::parse(&first).unwrap();
    notify_backbone::store::Cursor {
        epoch: parsed.epoch,
        position: parsed.position - 1,
    }
    .to_string()
}

#[tokio::test]
async fn an_admin_reads_any_inbox_marks_only_their_own_and_keeps_their_own_notices() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let user = user_token("adm-u1");
    let (root, ops) = (admin_token("adm-root"), admin_token("adm-ops"));
    // A low balance is an admin notice too.
    let id = publish(
        &mut client,
        "billing.low_balance.flat.json",
        "adm-u1",
        "adm-low",
    )
    .await;

    // Support: an admin reads a user's inbox and counts...
    let page = list(
        &mut client,
        &root,
        pb::ListInboxRequest {
            user_id: "adm-u1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(item_ids(&page), std::slice::from_ref(&id));
    assert_eq!(counts(&mut client, &root, "adm-u1", false).await.unread, 1);
    // ...but a mark is always of the caller's own inbox: the user's item is unknown there.
    let marked = mark(&mut client, &root, read_ids(&[&id])).await.unwrap();
    assert_eq!(marked.unknown_ids, std::slice::from_ref(&id));
    assert_eq!(counts(&mut client, &user, "", false).await.unread, 1);
    // A user reads no one else's inbox, and no admin inbox.
    let status = list(
        &mut client,
        &user,
        pb::ListInboxRequest {
            user_id: "adm-u2".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = list(
        &mut client,
        &user,
        pb::ListInboxRequest {
            admin_inbox: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Each admin's admin inbox holds the notices (those from before their first use too), with
    // their own state.
    let notices = list(
        &mut client,
        &root,
        pb::ListInboxRequest {
            admin_inbox: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(notices.items.len(), 1);
    let notice = notices.items[0].event.clone().unwrap();
    assert_eq!(notice.r#type, "admin.notice");
    assert_eq!(notices.items[0].family, pb::InboxFamily::Billing as i32);
    let (mut ops_feed, state) = inbox_stream(&mut client, &ops, true).await;
    assert!(state.admin_inbox);
    assert_eq!(state.counts.as_ref().unwrap().unread, 1);
    let marked = mark(
        &mut client,
        &root,
        pb::MarkInboxRequest {
            admin_inbox: true,
            mark: pb::InboxMark::Read.into(),
            all: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(marked.counts.as_ref().unwrap().unread, 0);
    assert_eq!(counts(&mut client, &ops, "", true).await.unread, 1);
    // A new notice reaches the admin's feed, then its count.
    publish(
        &mut client,
        "quota.exceeded.shape-b.json",
        "adm-u1",
        "adm-exceeded",
    )
    .await;
    let update = next_update(&mut ops_feed).await;
    assert!(update.admin_inbox);
    assert_eq!(update.reason, pb::InboxUpdateReason::NewItems as i32);
    assert_eq!(update.counts.as_ref().unwrap().unread, 2);
    assert_eq!(
        family(update.counts.as_ref().unwrap(), pb::InboxFamily::Quota).unread,
        1
    );
    assert_eq!(counts(&mut client, &root, "", true).await.unread, 1);
}

/// `HH:MM` in Shanghai (UTC+8, no daylight saving) `offset_minutes` from now.
fn shanghai_in(offset_minutes: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let local = (now / 60 + 8 * 60 + offset_minutes).rem_euclid(24 * 60);
    format!("{:02}:{:02}", local / 60, local % 60)
}

#[tokio::test]
async fn preferences_mute_disabled_types_and_quiet_hours_hold_back_alerts_but_not_critical_ones() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let u1 = user_token("pref-u1");
    let preferences = pb::Preferences {
        types: vec![pb::TypePreference {
            event_type: "app.*".into(),
            enabled: false,
            channels: vec!["email".into()],
        }],
        // Quiet from an hour ago to an hour from now, in the user's time zone.
        quiet_hours: Some(pb::QuietHours {
            start: shanghai_in(-60),
            end: shanghai_in(60),
            time_zone: "Asia/Shanghai".into(),
        }),
        critical_types: Vec::new(),
    };
    let stored = client
        .set_preferences(with_token(
            pb::SetPreferencesRequest {
                preferences: Some(preferences.clone()),
            },
            &u1,
        ))
        .await
        .unwrap()
        .into_inner()
        .preferences
        .unwrap();
    assert_eq!(stored.types, preferences.types);
    assert!(stored.critical_types.contains(&"device.error".to_owned()));
    let read = client
        .get_preferences(with_token(pb::GetPreferencesRequest::default(), &u1))
        .await
        .unwrap()
        .into_inner()
        .preferences
        .unwrap();
    assert_eq!(read, stored);

    let (mut stream, _) = inbox_stream(&mut client, &u1, false).await;
    let app = publish(
        &mut client,
        "app.installed.shape-a.json",
        "pref-u1",
        "pref-app",
    )
    .await;
    let pay = publish(
        &mut client,
        "billing.payment_success.flat.json",
        "pref-u1",
        "pref-pay",
    )
    .await;
    let err = publish(
        &mut client,
        "device.error.envelope.json",
        "pref-u1",
        "pref-err",
    )
    .await;
    // The disabled type is not pushed (the next event is the payment) and not counted...
    assert_eq!(next_event(&mut stream).await.id, pay);
    let update = next_update(&mut stream).await;
    assert_eq!(update.ids, std::slice::from_ref(&pay));
    // ...the payment arrived in quiet hours: counted, but not to be alerted...
    assert!(update.quiet);
    assert_eq!(update.counts.as_ref().unwrap().unread, 1);
    // ...and the critical error is alerted whatever the hour.
    assert_eq!(next_event(&mut stream).await.id, err);
    let update = next_update(&mut stream).await;
    assert!(!update.quiet);
    assert_eq!(update.counts.as_ref().unwrap().unread, 2);
    // The disabled type stays in history...
    let history = client
        .list_events(with_token(pb::ListEventsRequest::default(), &u1))
        .await
        .unwrap()
        .into_inner();
    assert!(history.events.iter().any(|e| e.id == app));
    // ...and a stream that resumes from before it replays without it, as it went live.
    let before_all = {
        let first = notify_backbone::store::Cursor::parse(&history.events[0].cursor).unwrap();
        notify_backbone::store::Cursor {
            epoch: first.epoch,
            position: first.position - 1,
        }
        .to_string()
    };
    let request = pb::SubscribeRequest {
        inbox: true,
        resume_after: before_all,
        ..Default::default()
    };
    let mut resumed = client
        .subscribe(with_token(request, &u1))
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    loop {
        match next_kind(&mut resumed).await {
            Kind::Event(event) => replayed.push(event.id),
            Kind::CaughtUp(_) => break,
            other => panic!("expected the replay, got {other:?}"),
        }
    }
    assert_eq!(replayed, [pay.clone(), err.clone()]);

    // Refused: a critical type disabled, a time zone that does not exist.
    for (preferences, field) in [
        (
            pb::Preferences {
                types: vec![pb::TypePreference {
                    event_type: "device.*".into(),
                    enabled: false,
                    channels: vec![],
                }],
                ..Default::default()
            },
            "critical",
        ),
        (
            pb::Preferences {
                quiet_hours: Some(pb::QuietHours {
                    start: "22:00".into(),
                    end: "07:00".into(),
                    time_zone: "Asia/Atlantis".into(),
                }),
                ..Default::default()
            },
            "time_zone",
        ),
    ] {
        let status = client
            .set_preferences(with_token(
                pb::SetPreferencesRequest {
                    preferences: Some(preferences),
                },
                &u1,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
    }
    // Another user's preferences: an admin reads them, a user does not.
    let status = client
        .get_preferences(with_token(
            pb::GetPreferencesRequest {
                user_id: "pref-u1".into(),
            },
            &user_token("pref-u2"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let by_admin = client
        .get_preferences(with_token(
            pb::GetPreferencesRequest {
                user_id: "pref-u1".into(),
            },
            &admin_token("pref-admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_admin.preferences.unwrap().types, preferences.types);
}

#[tokio::test]
async fn retention_removes_an_events_state_with_the_event() {
    let server = TestServer::start_with(|config| {
        config.journal.retention_age = Duration::from_secs(2);
        config.journal.retention_interval = Duration::from_millis(200);
    })
    .await;
    let mut client = server.client().await;
    let u1 = user_token("ret-u1");
    publish(&mut client, "device.error.envelope.json", "ret-u1", "ret-1").await;
    assert_eq!(counts(&mut client, &u1, "", false).await.unread, 1);
    let c = Wait::within(Duration::from_secs(20))
        .until("retention to remove the item", async || {
            let c = counts(&mut client, &u1, "", false).await;
            (c.total == 0).then_some(c)
        })
        .await;
    assert_eq!(c.unread, 0);
    let page = list(
        &mut client,
        &u1,
        pb::ListInboxRequest {
            filter: pb::InboxFilter::All.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn events_through_rabbitmq_are_counted_and_marks_survive_a_restart_and_a_kill() {
    let names = Names::unique("inbox-kill");
    let data = DataDir::new();
    let logs = Logs::default();
    let mut args = support::process::broker_args(&names);
    args.push("--dev".into());
    let node = start_node(&args, &data.0, 1, &logs).await;
    node.wait_ready(&logs).await;
    let producer = Producer::connect().await;
    for n in 0..5 {
        let (routing_key, body) = fixture_for("device.error.envelope.json", "kill-u1");
        let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["eventId"] = format!("kill-{n}").into();
        producer
            .publish(&names.exchange, &routing_key, json.to_string().as_bytes())
            .await;
    }
    let mut client = Client::connect(node.url.clone()).await.unwrap();
    let u1 = user_token("kill-u1");
    eventually("the five events to be counted", async || {
        counts(&mut client, &u1, "", false).await.unread == 5
    })
    .await;
    mark(&mut client, &u1, read_ids(&["kill-0", "kill-1"]))
        .await
        .unwrap();
    mark(
        &mut client,
        &u1,
        pb::MarkInboxRequest {
            mark: pb::InboxMark::Archived.into(),
            ids: vec!["kill-4".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let before = counts(&mut client, &u1, "", false).await;
    assert_eq!((before.total, before.unread), (4, 2));

    // A clean restart, then a kill -9: every mark acknowledged is kept.
    node.stop(&logs).await;
    let node = start_node(&args, &data.0, 2, &logs).await;
    node.wait_ready(&logs).await;
    let mut client = Client::connect(node.url.clone()).await.unwrap();
    assert_eq!(counts(&mut client, &u1, "", false).await, before);
    mark(&mut client, &u1, read_ids(&["kill-2"])).await.unwrap();
    node.kill(&logs).await;
    let node = start_node(&args, &data.0, 3, &logs).await;
    node.wait_ready(&logs).await;
    let mut client = Client::connect(node.url.clone()).await.unwrap();
    let after = counts(&mut client, &u1, "", false).await;
    assert_eq!((after.total, after.unread), (4, 1));
    let page = list(
        &mut client,
        &u1,
        pb::ListInboxRequest {
            filter: pb::InboxFilter::Unread.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(item_ids(&page), ["kill-3"]);
    node.stop(&logs).await;
    // The dead-letter queue has no expiry: without this, every run leaves one behind.
    producer.clean_up(&[&names]).await;
}
