//! Who gets an event: a user's own, the firehose, the admin feed, the type and device filters,
//! the viewer's limits on top of routing, and leaving the index.

use super::*;

#[test]
fn a_user_receives_only_their_own_events() {
    let (hub, journal) = hub_with_journal(16);
    let mut alice = hub
        .subscribe(filter("alice", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut bob = hub
        .subscribe(filter("bob", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let a = publisher.send("billing.payment_success", "alice", "");
    let b = publisher.send("billing.payment_success", "bob", "");
    publisher.send("app.updated", "", "");
    assert_eq!(event_ids(&drain(&mut alice)), vec![a]);
    assert_eq!(event_ids(&drain(&mut bob)), vec![b]);
}

#[test]
fn the_firehose_receives_every_user_event_and_userless_ones() {
    let (hub, journal) = hub_with_journal(16);
    let mut firehose = hub
        .subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let ids = vec![
        publisher.send("quota.updated", "u1", ""),
        publisher.send("device.started", "u2", "d2"),
        publisher.send("app.updated", "", ""),
    ];
    publisher.send(crate::schema::ADMIN_NOTICE_TYPE, "", "");
    assert_eq!(event_ids(&drain(&mut firehose)), ids);
}

#[test]
fn the_admin_feed_gets_notices_and_quota_updates_once() {
    let (hub, journal) = hub_with_journal(16);
    let mut admin_only = hub
        .subscribe(filter("", true, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut admin_and_firehose = hub
        .subscribe(filter("*", true, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut user = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let update = publisher.send("quota.updated", "u1", "");
    let other = publisher.send("device.started", "u1", "d1");
    let notice = publisher.send(crate::schema::ADMIN_NOTICE_TYPE, "", "");
    assert_eq!(
        event_ids(&drain(&mut admin_only)),
        vec![update.clone(), notice.clone()]
    );
    // Selected twice (firehose and admin feed), delivered once.
    assert_eq!(
        event_ids(&drain(&mut admin_and_firehose)),
        vec![update.clone(), other.clone(), notice]
    );
    assert_eq!(event_ids(&drain(&mut user)), vec![update, other]);
}

#[test]
fn type_and_device_filters_narrow_the_stream() {
    let (hub, journal) = hub_with_journal(16);
    let mut billing = hub
        .subscribe(filter("u1", false, &["billing.*"], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut device = hub
        .subscribe(filter("u1", false, &[], "d1"), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let pay = publisher.send("billing.payment_success", "u1", "");
    let start = publisher.send("device.started", "u1", "d1");
    publisher.send("device.started", "u1", "d2");
    assert_eq!(event_ids(&drain(&mut billing)), vec![pay]);
    assert_eq!(event_ids(&drain(&mut device)), vec![start]);
}

#[test]
fn the_viewer_stops_what_routing_would_deliver() {
    // A user's viewer on a firehose filter (which the gRPC edge never allows): the hub still
    // hands it only that user's own events, and no admin notice.
    let (hub, journal) = hub_with_journal(8);
    let mut alice = hub
        .subscribe(
            filter("*", true, &[], ""),
            Viewer::User("alice".into()),
            None,
        )
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("billing.low_balance", "bob", "");
    publisher.send("billing.low_balance", "alice", "");
    publisher.send("app.updated", "", "");
    publisher.send(schema::ADMIN_NOTICE_TYPE, "alice", "");
    let events: Vec<_> = drain(&mut alice)
        .into_iter()
        .filter_map(|kind| match kind {
            Kind::Event(event) => Some((event.r#type, event.user_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [("billing.low_balance".to_owned(), "alice".to_owned())]
    );
}

#[test]
fn dropping_a_subscription_unsubscribes() {
    let hub = hub(16);
    let subscription = hub
        .subscribe(filter("u1", true, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    assert_eq!(hub.subscriber_count(), 1);
    drop(subscription);
    assert_eq!(hub.subscriber_count(), 0);
    let index = hub.shared.read();
    assert!(index.by_user.is_empty() && index.admin.is_empty());
}
