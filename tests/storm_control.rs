//! Storm control over gRPC (`SubscribeRequest.conflate`): a console catching up gets the latest
//! of each quota with every skip reported, a service without the option gets every event, and
//! an admin console gets one notice for a burst of device errors decoded from the producers'
//! JSON, then single notices again.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use notify_backbone::pb::{self, event::Payload, subscribe_response::Kind};
use serde_json::json;
use support::{body::payment_success, *};
use tonic::Streaming;

/// Everything up to and including `CaughtUp`: the events, the skips `Conflated` reported, the
/// CaughtUp cursor.
async fn until_caught_up(
    stream: &mut Streaming<pb::SubscribeResponse>,
) -> (Vec<pb::Event>, u64, String) {
    let (mut events, mut skipped) = (Vec::new(), 0);
    loop {
        match next_kind(stream).await {
            Kind::Event(event) => events.push(event),
            Kind::Conflated(conflated) => skipped += conflated.skipped,
            Kind::CaughtUp(caught_up) => return (events, skipped, caught_up.cursor),
            Kind::Heartbeat(_) | Kind::Inbox(_) | Kind::Gap(_) => {}
        }
    }
}

/// A `quota.updated` body whose usage says which version of the quota it is.
fn quota_version(user: &str, quota: &str, version: u32) -> String {
    json!({
        "userId": user, "quotaId": quota, "type": "updated",
        "limits": {}, "usage": {"currentDevices": version}, "status": "active",
        "_trace": {}
    })
    .to_string()
}

#[tokio::test]
async fn a_conflating_subscriber_catches_up_with_the_latest_of_each_quota() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut first = open_stream(&mut client, request("u1")).await;
    let Kind::CaughtUp(start) = next_kind(&mut first).await else {
        panic!("CaughtUp first");
    };
    drop(first);
    // 5 quotas, 40 versions each, and payments in between, which are never skipped.
    let mut payments = 0;
    for version in 0..40 {
        for quota in 0..5 {
            publish_json(
                &mut client,
                "quota.updated",
                &quota_version("u1", &format!("q{quota}"), version),
            )
            .await
            .unwrap();
        }
        if version % 10 == 0 {
            let body = payment_success("u1", &format!("pay-{version}"));
            publish_json(&mut client, "billing.payment_success", &body)
                .await
                .unwrap();
            payments += 1;
        }
    }
    let resume = |conflate| pb::SubscribeRequest {
        user_id: "u1".into(),
        resume_after: start.cursor.clone(),
        conflate,
        ..Default::default()
    };
    let mut plain = open_stream(&mut client, resume(false)).await;
    let (all, none_skipped, plain_end) = until_caught_up(&mut plain).await;
    assert_eq!((all.len(), none_skipped), (200 + payments, 0));

    let mut console = open_stream(&mut client, resume(true)).await;
    let (latest, skipped, end) = until_caught_up(&mut console).await;
    assert_eq!(end, plain_end, "both end at the same cursor");
    assert_eq!(
        skipped as usize + latest.len(),
        all.len(),
        "every skip reported"
    );
    let quotas: Vec<_> = latest
        .iter()
        .filter_map(|event| match &event.payload {
            Some(Payload::QuotaUpdated(quota)) => Some(quota),
            _ => None,
        })
        .collect();
    assert_eq!(quotas.len(), 5, "one per quota");
    for quota in quotas {
        let devices = quota.usage.as_ref().and_then(|u| u.current_devices);
        assert_eq!(devices, Some(39.0), "{} is not its latest", quota.quota_id);
    }
    let paid = latest
        .iter()
        .filter(|e| e.r#type == "billing.payment_success")
        .count();
    assert_eq!(paid, payments);
}

/// An urgent device error of `error_type` on device `device` (it makes an admin notice).
fn device_failed(id: &str, device: &str, error_type: &str) -> String {
    json!({
        "eventId": id, "eventType": "device.error", "timestamp": "2025-11-20T10:00:00.000Z",
        "priority": "high",
        "payload": {
            "deviceId": device, "deviceName": device, "userId": "u1",
            "errorType": error_type, "errorMessage": "host h7 is down",
            "occurredAt": "2025-11-20T10:00:00.000Z"
        }
    })
    .to_string()
}

fn notice_of(event: &pb::Event) -> &pb::AdminNotice {
    match &event.payload {
        Some(Payload::AdminNotice(notice)) => notice,
        other => panic!("not an admin notice: {other:?}"),
    }
}

#[tokio::test]
async fn an_admin_console_gets_one_notice_for_a_burst_of_device_errors_then_single_ones() {
    // A window long enough for a slow machine to publish the whole burst within it.
    let server = TestServer::start_with(|config| {
        config.notice_coalesce_window = Duration::from_secs(4);
    })
    .await;
    let mut client = server.client().await;
    let admin = |conflate| pb::SubscribeRequest {
        admin_feed: true,
        event_types: vec!["admin.notice".into()],
        conflate,
        ..Default::default()
    };
    let mut console = subscribe(&mut client, admin(true)).await;
    let mut service = subscribe(&mut client, admin(false)).await;
    for n in 0..50 {
        let body = device_failed(&format!("err-{n}"), &format!("d{n}"), "host_down");
        publish_json(&mut client, "device.error", &body)
            .await
            .unwrap();
    }
    let coalesced = next_event(&mut console).await;
    let notice = notice_of(&coalesced);
    assert_eq!(notice.count, 50);
    assert_eq!(notice.source_event_type, "device.error");
    assert_eq!(notice.cause, "host_down");
    assert_eq!(notice.sample_event_ids.len(), 10);
    assert_eq!(notice.sample_event_ids[0], "err-0");
    // The service without `conflate` had every one.
    for n in 0..50 {
        let single = next_event(&mut service).await;
        assert_eq!(notice_of(&single).source_event_id, format!("err-{n}"));
    }
    // The burst is over: the next error is a notice of its own.
    let body = device_failed("later", "d99", "host_down");
    publish_json(&mut client, "device.error", &body)
        .await
        .unwrap();
    let single = next_event(&mut console).await;
    let notice = notice_of(&single);
    assert_eq!(
        (notice.count, notice.source_event_id.as_str()),
        (0, "later")
    );
}
