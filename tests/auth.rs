//! Authentication and access control end to end: bad tokens are refused on every path, users
//! see only their own events, admins see everything, only publishers publish, grpc-web gets the
//! same checks, and a stream ends when its token does.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use notify_backbone::{
    auth::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER, PUBLISH_PERMISSION},
    pb::{
        self, event::Payload, notification_service_client::NotificationServiceClient,
        publish_request::Body, subscribe_response::Kind,
    },
};
use support::*;
use tonic::{Code, Status, Streaming, transport::Channel};

const ALICE: &str = "user-a";
const BOB: &str = "user-b";

// ---------------------------------------------------------------------------------------------
// 1. Bad tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_kind_of_bad_token_is_unauthenticated_on_subscribe_and_publish() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;

    // Each token, were it accepted, could both subscribe (to its own user) and publish.
    let good = claims("victim", &["service"]);
    let mut expired = good.clone();
    expired.exp = now() - 3600;
    let mut early = good.clone();
    early.nbf = Some(now() + 3600);
    let mut issuer = good.clone();
    issuer.iss = "someone-else".into();
    let mut audience = good.clone();
    audience.aud = "other-users".into();
    let mut nobody = good.clone();
    nobody.sub = String::new();
    let valid = hs256(&good);
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &good,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no authorization metadata", None, "missing"),
        ("garbage", Some("Bearer abc".into()), "malformed"),
        ("wrong scheme", Some("Basic xyz".into()), "missing"),
        (
            "a valid token without a scheme",
            Some(valid.clone()),
            "missing",
        ),
        (
            "a valid token under Basic",
            Some(format!("Basic {valid}")),
            "missing",
        ),
        (
            "wrong secret",
            Some(bearer(&sign(
                &good,
                Algorithm::HS256,
                b"not-the-test-secret-at-all",
            ))),
            "signature",
        ),
        (
            "expired an hour ago",
            Some(bearer(&hs256(&expired))),
            "expired",
        ),
        (
            "not valid for another hour",
            Some(bearer(&hs256(&early))),
            "not yet valid",
        ),
        ("wrong issuer", Some(bearer(&hs256(&issuer))), "issuer"),
        (
            "wrong audience",
            Some(bearer(&hs256(&audience))),
            "audience",
        ),
        ("empty subject", Some(bearer(&hs256(&nobody))), "malformed"),
        ("alg none", Some(bearer(&alg_none(&good))), ""),
        (
            "HS512 with the right secret (algorithm is pinned)",
            Some(bearer(&hs512)),
            "",
        ),
    ];
    for (index, (case, authorization, keyword)) in cases.iter().enumerate() {
        let status = client
            .subscribe(authorized(request("victim"), authorization.as_deref()))
            .await
            .expect_err(case);
        assert_unauthenticated(case, &status, authorization.as_deref(), keyword);

        // A valid body: only the token stands between this and a published event.
        let publish = device_publish(&format!("bad-token-{index}"), "victim");
        let status = client
            .publish(authorized(publish, authorization.as_deref()))
            .await
            .expect_err(case);
        assert_unauthenticated(case, &status, authorization.as_deref(), keyword);
    }
    // None of the refused publishes got through: a good one, published after them all, is the
    // first event the firehose receives.
    let control = client
        .publish(authorized(
            device_publish("control", "victim"),
            Some(&bearer(&valid)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_next_is(&mut firehose, &control.id, "firehose").await;
    // The victim's own stream works, and gets nothing but what follows.
    let mut own = open(&mut client, request("victim"), &valid).await.unwrap();
    let sentinel = client
        .publish(authorized(
            device_publish("control-own", "victim"),
            Some(&bearer(&valid)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_next_is(&mut own, &sentinel.id, "the victim's own stream").await;
}

#[tokio::test]
async fn an_rs256_server_refuses_hs256_keyed_with_its_public_key_and_accepts_real_rs256() {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, public_path) = rsa_key_pair(dir.path());
    let public_pem = std::fs::read(&public_path).unwrap();
    let server = TestServer::start_with(|config| {
        config.auth.jwt_secret = None;
        config.auth.jwt_public_key = Some(public_path.clone());
    })
    .await;
    let mut client = server.client().await;
    let rsa = EncodingKey::from_rsa_pem(&private_pem).unwrap();
    let rs256 = |claims: &Claims| {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &rsa).unwrap()
    };

    // The genuine article works, so the refusals below are not vacuous.
    let root = rs256(&claims("root", &["admin"]));
    let mut firehose = open(&mut client, request("*"), &root).await.unwrap();
    let service = rs256(&claims("victim", &["service"]));
    let mut own = open(&mut client, request(""), &service).await.unwrap();
    let published = client
        .publish(authorized(
            device_publish("rs-ok", "victim"),
            Some(&bearer(&service)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut own).await.id, published.id);
    assert_eq!(next_event(&mut firehose).await.id, published.id);

    let good = claims("victim", &["service", "admin"]);
    let trimmed = String::from_utf8(public_pem.clone()).unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "HS256 keyed with the PEM public key",
            sign(&good, Algorithm::HS256, &public_pem),
        ),
        (
            "HS256 keyed with the trimmed PEM public key",
            sign(&good, Algorithm::HS256, trimmed.trim().as_bytes()),
        ),
        (
            "HS256 with the test secret",
            sign(&good, Algorithm::HS256, TEST_SECRET.as_bytes()),
        ),
        ("alg none", alg_none(&good)),
    ];
    for (index, (case, token)) in cases.iter().enumerate() {
        let authorization = bearer(token);
        let status = client
            .subscribe(authorized(request("*"), Some(&authorization)))
            .await
            .expect_err(case);
        assert_unauthenticated(case, &status, Some(&authorization), "");
        let status = client
            .publish(authorized(
                device_publish(&format!("rs-bad-{index}"), "victim"),
                Some(&authorization),
            ))
            .await
            .expect_err(case);
        assert_unauthenticated(case, &status, Some(&authorization), "");
    }
    // None of the refused publishes got through: a genuine one after them all is the next
    // event on both streams.
    let sentinel = client
        .publish(authorized(
            device_publish("rs-sentinel", "victim"),
            Some(&bearer(&service)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_next_is(&mut own, &sentinel.id, "own").await;
    assert_next_is(&mut firehose, &sentinel.id, "firehose").await;
}

// ---------------------------------------------------------------------------------------------
// 2. Isolation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_user_never_receives_another_users_or_userless_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let alice = token(ALICE, &["user"]);

    // Every way Alice can legitimately ask.
    let mut own = open(&mut client, request(""), &alice).await.unwrap();
    let mut by_name = open(&mut client, request(ALICE), &alice).await.unwrap();
    let mut any_type = open(&mut client, with_types("", &["*"]), &alice)
        .await
        .unwrap();
    let mut billing = open(&mut client, with_types(ALICE, &["billing.*"]), &alice)
        .await
        .unwrap();
    let bobs_device = pb::SubscribeRequest {
        device_id: "dev-b".into(),
        ..Default::default()
    };
    let mut on_bobs_device = open(&mut client, bobs_device, &alice).await.unwrap();
    // Bob's own stream: proves Bob's events really flow.
    let mut bob = open(&mut client, request(BOB), &token(BOB, &["user"]))
        .await
        .unwrap();

    // Every way Alice can ask for more than her own: refused outright.
    let refused: Vec<(&str, pb::SubscribeRequest)> = vec![
        ("bob by name", request(BOB)),
        ("bob by name, all types", with_types(BOB, &["*"])),
        ("the firehose", request("*")),
        (
            "the firehose, billing only",
            with_types("*", &["billing.*"]),
        ),
        ("the admin feed alone", admin_feed("")),
        ("the admin feed with her own events", admin_feed(ALICE)),
        ("the admin feed with bob's events", admin_feed(BOB)),
    ];
    for (case, request) in refused {
        let status = client
            .subscribe(with_token(request, &alice))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
        assert!(
            !status.message().contains(BOB) && !status.message().is_empty(),
            "{case}: {status:?}"
        );
    }

    // Every wire fixture, once for Bob and once for Alice; user-less ones once.
    let mut alices: Vec<(String, String)> = Vec::new(); // (id, routing key)
    let mut bobs: Vec<String> = Vec::new();
    let mut userless = 0;
    for (routing_key, name, body) in wire_fixtures() {
        let Some(for_bob) = for_user(&body, BOB) else {
            let published = publish_json(&mut client, &routing_key, &body)
                .await
                .unwrap_or_else(|s| panic!("{name}: {s:?}"));
            userless += u32::from(!published.duplicate);
            continue;
        };
        let published = publish_json(&mut client, &routing_key, &for_bob)
            .await
            .unwrap_or_else(|s| panic!("{name} for bob: {s:?}"));
        if !published.duplicate {
            bobs.push(published.id);
        }
        let for_alice = for_user(&body, ALICE).unwrap();
        let published = publish_json(&mut client, &routing_key, &for_alice)
            .await
            .unwrap_or_else(|s| panic!("{name} for alice: {s:?}"));
        if !published.duplicate {
            alices.push((published.id, routing_key));
        }
    }
    assert!(userless >= 1, "no user-less fixture (app.updated catalog)");
    let published = publish_json(
        &mut client,
        "device.error",
        &device_error("dev-b-1", BOB, "dev-b"),
    )
    .await
    .unwrap();
    bobs.push(published.id);
    // Alice's last: anything of Bob's leaking to her would arrive before it.
    let published = publish_json(
        &mut client,
        "device.error",
        &device_error("dev-a-1", ALICE, "dev-a"),
    )
    .await
    .unwrap();
    alices.push((published.id, "device.error".into()));

    let all: Vec<&str> = alices.iter().map(|(id, _)| id.as_str()).collect();
    let billing_only: Vec<&str> = alices
        .iter()
        .filter(|(_, key)| key.starts_with("billing."))
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(billing_only.len() >= 5, "{billing_only:?}");
    for (case, stream, expected) in [
        ("own", &mut own, &all),
        ("by name", &mut by_name, &all),
        ("any type", &mut any_type, &all),
        ("billing.*", &mut billing, &billing_only),
    ] {
        for id in expected.iter() {
            let event = next_event(stream).await;
            assert_eq!(
                (event.id.as_str(), event.user_id.as_str()),
                (*id, ALICE),
                "{case}: {event:?}"
            );
            assert!(
                !matches!(event.payload, Some(Payload::AdminNotice(_))),
                "{case}: {event:?}"
            );
        }
    }
    for id in &bobs {
        assert_eq!(&next_event(&mut bob).await.id, id);
    }
    // Nothing more is on its way to any of them: after everything above, one sentinel each
    // stream selects, and that is the next event it receives. Alice's on Bob's device reaches
    // her unfiltered streams and her device-filtered one; her billing stream needs a billing
    // event; Bob's needs one of Bob's.
    let on_device_b = publish_json(
        &mut client,
        "device.error",
        &device_error("sentinel-a-dev-b", ALICE, "dev-b"),
    )
    .await
    .unwrap();
    let alices_billing = publish_json(
        &mut client,
        "billing.payment_success",
        &body::payment_success(ALICE, "p-sentinel"),
    )
    .await
    .unwrap();
    let bobs_last = publish_json(
        &mut client,
        "device.error",
        &device_error("sentinel-b", BOB, "dev-b"),
    )
    .await
    .unwrap();
    tokio::join!(
        assert_next_is(&mut own, &on_device_b.id, "own"),
        assert_next_is(&mut by_name, &on_device_b.id, "by name"),
        assert_next_is(&mut any_type, &on_device_b.id, "any type"),
        assert_next_is(&mut billing, &alices_billing.id, "billing.*"),
        assert_next_is(&mut on_bobs_device, &on_device_b.id, "on bob's device"),
        assert_next_is(&mut bob, &bobs_last.id, "bob"),
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Admins
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admins_see_other_users_the_firehose_and_the_admin_feed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut streams = Vec::new();
    for role in ["admin", "super_admin"] {
        let root = token(&format!("root-{role}"), &[role]);
        let user_b = open(&mut client, request(BOB), &root).await.unwrap();
        let firehose = open(&mut client, request("*"), &root).await.unwrap();
        let feed = open(&mut client, admin_feed(""), &root).await.unwrap();
        streams.push((role, user_b, firehose, feed));
    }

    let from_alice = publish_json(
        &mut client,
        "device.error",
        &device_error("adm-a", ALICE, "d-a"),
    )
    .await
    .unwrap();
    let from_bob = publish_json(
        &mut client,
        "device.error",
        &device_error("adm-b", BOB, "d-b"),
    )
    .await
    .unwrap();
    let catalog = fixture("app.updated.catalog.json");
    let userless = publish_json(&mut client, "app.updated", &catalog)
        .await
        .unwrap();
    let low_balance = for_user(&fixture("billing.low_balance.flat.json"), ALICE).unwrap();
    let low = publish_json(&mut client, "billing.low_balance", &low_balance)
        .await
        .unwrap();

    for (role, user_b, firehose, feed) in &mut streams {
        let event = next_event(user_b).await;
        assert_eq!(
            (event.id.as_str(), event.user_id.as_str()),
            (from_bob.id.as_str(), BOB),
            "{role}"
        );

        for (id, user) in [
            (&from_alice.id, ALICE),
            (&from_bob.id, BOB),
            (&userless.id, ""),
            (&low.id, ALICE),
        ] {
            let event = next_event(firehose).await;
            assert_eq!(
                (&event.id, event.user_id.as_str()),
                (id, user),
                "{role} firehose"
            );
        }

        let notice = next_event(feed).await;
        assert_eq!(notice.r#type, "admin.notice", "{role}");
        match notice.payload {
            Some(Payload::AdminNotice(n)) => {
                assert_eq!(n.subject_user_id, ALICE, "{role}");
                assert_eq!(n.source_event_type, "billing.low_balance", "{role}");
                assert_eq!(n.source_event_id, low.id, "{role}");
            }
            other => panic!("{role}: expected an admin notice, got {other:?}"),
        }
    }
    // Nothing more is on its way: one of Bob's events is next on his stream and the firehose,
    // and a quota update (which the admin feed carries as it is) is next on the feed.
    let bobs_last = publish_json(
        &mut client,
        "device.error",
        &device_error("adm-sentinel-b", BOB, "d-b"),
    )
    .await
    .unwrap();
    let update = body::quota_updated(BOB, "q-sentinel");
    let quota = publish_json(&mut client, "quota.updated", &update)
        .await
        .unwrap();
    for (role, user_b, firehose, feed) in &mut streams {
        assert_next_is(user_b, &bobs_last.id, &format!("{role} user b")).await;
        assert_next_is(firehose, &bobs_last.id, &format!("{role} firehose")).await;
        assert_next_is(feed, &quota.id, &format!("{role} admin feed")).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Publish
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn only_publisher_roles_or_the_publish_permission_may_publish() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;
    let mut permitted = claims("billing-service", &[]);
    permitted.permissions = vec![PUBLISH_PERMISSION.into()];
    let mut other_permission = claims("reader", &["user"]);
    other_permission.permissions = vec!["notification.read".into()];

    let cases: Vec<(&str, String, bool)> = vec![
        ("role user", token("pub-user", &["user"]), false),
        ("role admin alone", token("pub-admin", &["admin"]), false),
        (
            "role tenant_admin",
            token("pub-tenant", &["tenant_admin"]),
            false,
        ),
        ("no roles", token("pub-none", &[]), false),
        ("another permission", hs256(&other_permission), false),
        (
            "permission notification.publish, no roles",
            hs256(&permitted),
            true,
        ),
        ("role service", token("pub-service", &["service"]), true),
        (
            "role super_admin",
            token("pub-root", &["super_admin"]),
            true,
        ),
    ];
    let mut delivered = Vec::new();
    for (index, (case, token, allowed)) in cases.iter().enumerate() {
        let publish = device_publish(&format!("pub-{index}"), "u-pub");
        let answer = client.publish(with_token(publish, token)).await;
        if *allowed {
            let published = answer
                .unwrap_or_else(|s| panic!("{case}: {s:?}"))
                .into_inner();
            delivered.push(published.id);
        } else {
            let status = answer.expect_err(case);
            assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
            assert!(status.message().contains("publish"), "{case}: {status:?}");
        }
    }
    // Permission is checked before the body: an invalid body from a user is still refused as
    // PERMISSION_DENIED, not validated.
    let garbage = pb::PublishRequest {
        routing_key: "nonsense".into(),
        body: Some(Body::Json(b"not json".to_vec())),
    };
    let status = client
        .publish(with_token(garbage, &token("pub-user", &["user"])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    for id in &delivered {
        assert_eq!(&next_event(&mut firehose).await.id, id);
    }
    // Nothing refused was stored: a publish after them all is the next event.
    let sentinel = client
        .publish(with_token(
            device_publish("pub-sentinel", "u-pub"),
            &service_token(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_next_is(&mut firehose, &sentinel.id, "firehose").await;
}

// ---------------------------------------------------------------------------------------------
// 5. grpc-web
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn grpc_web_gets_the_same_checks() {
    let server = TestServer::start().await;
    let mut web = server.grpc_web_client();
    let alice = token(ALICE, &["user"]);

    let status = web.subscribe(request(ALICE)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let expired = {
        let mut c = claims(ALICE, &["user"]);
        c.exp = now() - 3600;
        hs256(&c)
    };
    let status = web
        .subscribe(with_token(request(ALICE), &expired))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains(&expired), "{status:?}");
    for refused in [request(BOB), request("*"), admin_feed("")] {
        let status = web
            .subscribe(with_token(refused.clone(), &alice))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{refused:?}: {status:?}"
        );
    }
    let status = web
        .publish(with_token(device_publish("web-pub", ALICE), &alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = web
        .publish(device_publish("web-pub", ALICE))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut stream = web
        .subscribe(with_token(request(""), &alice))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next_kind(&mut stream).await, Kind::CaughtUp(_)));
    let mut grpc = server.client().await;
    publish_json(&mut grpc, "device.error", &device_error("wb", BOB, "d2"))
        .await
        .unwrap();
    let userless = fixture("app.updated.catalog.json");
    publish_json(&mut grpc, "app.updated", &userless)
        .await
        .unwrap();
    publish_json(&mut grpc, "device.error", &device_error("wa", ALICE, "d1"))
        .await
        .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!((event.id.as_str(), event.user_id.as_str()), ("wa", ALICE));
    // Nothing of the others' follows: Alice's next event is the next thing she receives.
    publish_json(
        &mut grpc,
        "device.error",
        &device_error("wa-sentinel", ALICE, "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut stream, "wa-sentinel", "grpc-web").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Token expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_ends_unauthenticated_when_its_token_expires_and_says_where_to_resume() {
    let server = TestServer::start_with(|config| config.auth.jwt_leeway = Duration::ZERO).await;
    let mut client = server.client().await;

    // Nothing has to happen before the token expires but opening the stream. A machine too
    // slow even for that (the token refused as expired, or the stream ending before its first
    // message) tries again with a token valid for longer.
    let mut valid_for = 2; // seconds, on top of the current (whole) second
    let (mut stream, expires_at, mut last_cursor) = loop {
        assert!(
            valid_for <= 64,
            "could not open a stream with a token valid for {} s",
            valid_for / 2
        );
        let mut short = claims(ALICE, &["user"]);
        short.exp = now() + valid_for;
        valid_for *= 2;
        let expires_at = UNIX_EPOCH + Duration::from_secs(short.exp);
        let mut stream = match client
            .subscribe(with_token(request(""), &hs256(&short)))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                assert_expired_not_before(&status, expires_at);
                continue;
            }
        };
        let first = tokio::time::timeout(until(expires_at) + PATIENCE, stream.message())
            .await
            .expect("the stream's first message in time");
        match first {
            Ok(Some(pb::SubscribeResponse {
                kind: Some(Kind::CaughtUp(caught_up)),
            })) => break (stream, expires_at, caught_up.cursor),
            Err(status) => assert_expired_not_before(&status, expires_at),
            other => panic!("expected CaughtUp first, got {other:?}"),
        }
    };

    // An event for the stream. Whether it is delivered before the token expires does not
    // matter: the status must name the cursor of the last message the stream did deliver.
    let published = publish_json(
        &mut client,
        "device.error",
        &device_error("before-expiry", ALICE, "d1"),
    )
    .await
    .unwrap();
    let mut delivered = Vec::new();
    let ended = tokio::time::timeout(until(expires_at) + PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(pb::SubscribeResponse { kind: Some(kind) })) => match kind {
                    Kind::Event(event) => {
                        last_cursor = event.cursor;
                        delivered.push(event.id);
                    }
                    Kind::Heartbeat(beat) => last_cursor = beat.cursor,
                    other => panic!("expected events and heartbeats, got {other:?}"),
                },
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended in time");
    let status = ended.expect_err("the stream ends with an error status");
    assert_expired_not_before(&status, expires_at);
    assert!(
        delivered.is_empty() || delivered == [published.id.clone()],
        "{delivered:?}"
    );
    let resume_hint = format!("resume_after={last_cursor}");
    assert!(status.message().contains(&resume_hint), "{status:?}");
    assert!(matches!(stream.message().await, Ok(None)), "stream over");

    // The hint works: a fresh token resumes from there with no gap and nothing twice (the event
    // is replayed exactly if the first stream did not deliver it), then sees what follows.
    let resume = pb::SubscribeRequest {
        resume_after: last_cursor.clone(),
        ..Default::default()
    };
    let mut resumed = client
        .subscribe(with_token(resume, &token(ALICE, &["user"])))
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    loop {
        match next_kind(&mut resumed).await {
            Kind::Event(event) => replayed.push(event.id),
            Kind::CaughtUp(_) => break,
            Kind::Heartbeat(_) => {}
            other => panic!("resumed after {last_cursor}: {other:?}"),
        }
    }
    let missed = if delivered.is_empty() {
        vec![published.id.clone()]
    } else {
        Vec::new()
    };
    assert_eq!(replayed, missed, "resumed after {last_cursor}");
    let after = publish_json(
        &mut client,
        "device.error",
        &device_error("after-expiry", ALICE, "d1"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut resumed).await.id, after.id);
}

/// How long until `at` (zero if it has passed).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// `status` says the token expired, and came no earlier than `expires_at` (the server's timer
/// has millisecond granularity).
fn assert_expired_not_before(status: &Status, expires_at: SystemTime) {
    assert!(
        SystemTime::now() + Duration::from_millis(50) >= expires_at,
        "ended early: {status:?}"
    );
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Platform-shaped claims for `sub` with `roles`, valid for an hour.
fn claims(sub: &str, roles: &[&str]) -> Claims {
    Claims {
        sub: sub.into(),
        username: sub.into(),
        roles: roles.iter().map(|&r| r.into()).collect(),
        permissions: Vec::new(),
        tenant_id: Some("tenant-1".into()),
        iss: DEFAULT_ISSUER.into(),
        aud: DEFAULT_AUDIENCE.into(),
        exp: now() + 3600,
        iat: now(),
        nbf: None,
    }
}

fn sign(claims: &Claims, algorithm: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Signed as the test servers expect.
fn hs256(claims: &Claims) -> String {
    sign(claims, Algorithm::HS256, TEST_SECRET.as_bytes())
}

/// `{"alg":"none"}`, the claims, and an empty signature.
fn b64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn alg_none(claims: &Claims) -> String {
    let header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64url_encode(serde_json::to_string(claims).unwrap().as_bytes());
    format!("{header}.{body}.")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `message` with `authorization` set to exactly `value`, or without it.
fn authorized<T>(message: T, value: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = value {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

/// Refused as UNAUTHENTICATED with a short message that names the reason (`keyword`, if any)
/// and does not echo the token.
fn assert_unauthenticated(case: &str, status: &Status, authorization: Option<&str>, keyword: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
    let message = status.message();
    assert!(
        !message.is_empty() && message.len() <= 80,
        "{case}: {message:?}"
    );
    assert!(message.contains(keyword), "{case}: {message:?}");
    let token = authorization.unwrap_or_default();
    let token = token.split_once(' ').map_or(token, |(_, t)| t);
    for part in std::iter::once(token).chain(token.split('.')) {
        assert!(
            part.len() < 8 || !message.contains(part),
            "{case}: the message echoes the token: {message:?}"
        );
    }
}

/// Opens a stream with `token` and consumes its leading `CaughtUp`.
async fn open(
    client: &mut NotificationServiceClient<Channel>,
    request: pb::SubscribeRequest,
    token: &str,
) -> Result<Streaming<pb::SubscribeResponse>, Status> {
    let mut stream = client
        .subscribe(with_token(request, token))
        .await?
        .into_inner();
    match next_kind(&mut stream).await {
        Kind::CaughtUp(_) => Ok(stream),
        other => panic!("expected CaughtUp first, got {other:?}"),
    }
}

fn with_types(user: &str, types: &[&str]) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        user_id: user.into(),
        event_types: types.iter().map(|&t| t.into()).collect(),
        ..Default::default()
    }
}

fn admin_feed(user: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        user_id: user.into(),
        admin_feed: true,
        ..Default::default()
    }
}

/// A valid `device.error` publish for `user`.
fn device_publish(id: &str, user: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        routing_key: "device.error".into(),
        body: Some(Body::Json(device_error(id, user, "d1").into_bytes())),
    }
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wire")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// `body` rewritten to be about `user` (every `userId`), with its `eventId`s made unique to
/// `user`; `None` if the body names no user.
fn for_user(body: &str, user: &str) -> Option<String> {
    fn walk(value: &mut serde_json::Value, user: &str, found: &mut bool) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match (key.as_str(), &*value) {
                        ("userId", serde_json::Value::String(_)) => {
                            *value = user.into();
                            *found = true;
                        }
                        ("eventId", serde_json::Value::String(id)) => {
                            *value = format!("{id}-{user}").into();
                        }
                        _ => walk(value, user, found),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|v| walk(v, user, found));
            }
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
    let mut found = false;
    walk(&mut value, user, &mut found);
    found.then(|| value.to_string())
}

/// An RSA key pair made with `openssl` in `dir`: (private key PEM, public key file).
fn rsa_key_pair(dir: &Path) -> (Vec<u8>, PathBuf) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "RSA".as_ref(),
        "-pkeyopt".as_ref(),
        "rsa_keygen_bits:2048".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ]);
    run(&[
        "pkey".as_ref(),
        "-pubout".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}
