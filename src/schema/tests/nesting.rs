//! The nesting bound: every accepted event decodes, in the `SubscribeResponse` (or
//! `ListEventsResponse`) that carries it, with prost's default recursion limit, which is protobuf's
//! default too; a body one level deeper is refused as `too_deep`.

use proptest::prelude::*;
use prost::Message;
use prost_types::{ListValue, Struct, Value, value::Kind};

use super::{decode_json, props};
use crate::pb::{self, event::Payload};
use crate::schema::{
    DECODER_NESTING_LIMIT, DecodeError, DecodeSettings, Decoded, MAX_BODY_DEPTH, MAX_EVENT_NESTING,
    accept_typed, nesting::struct_reach,
};

/// One level of nesting below a body's top level.
#[derive(Debug, Clone, Copy)]
enum Level {
    Object,
    Array,
}

/// JSON text of `levels` nested in one another, holding a scalar at the bottom when
/// `scalar_at_bottom` (else the innermost one is empty).
fn nested(levels: &[Level], scalar_at_bottom: bool) -> String {
    let Some((first, rest)) = levels.split_first() else {
        return "1".to_owned();
    };
    let inner = (scalar_at_bottom || !rest.is_empty()).then(|| nested(rest, scalar_at_bottom));
    match (first, inner) {
        (Level::Object, Some(inner)) => format!(r#"{{"k":{inner}}}"#),
        (Level::Object, None) => "{}".to_owned(),
        (Level::Array, Some(inner)) => format!("[{inner}]"),
        (Level::Array, None) => "[]".to_owned(),
    }
}

/// An untyped body whose objects and arrays nest `1 + levels.len()` deep (its top level is 1).
fn body(levels: &[Level], scalar_at_bottom: bool) -> String {
    format!(
        r#"{{"userId":"u1","x":{}}}"#,
        nested(levels, scalar_at_bottom)
    )
}

/// Both frames that carry `event` to clients decode with prost's default limit.
fn assert_clients_decode(event: &pb::Event) {
    let frame = crate::store::encode_event_frame(event);
    let response = pb::SubscribeResponse::decode(frame).expect("a SubscribeResponse decodes");
    assert!(matches!(
        response.kind,
        Some(pb::subscribe_response::Kind::Event(_))
    ));
    let page = pb::ListEventsResponse {
        events: vec![event.clone()],
        ..Default::default()
    }
    .encode_to_vec();
    pb::ListEventsResponse::decode(page.as_slice()).expect("a ListEventsResponse decodes");
}

/// The level of the deepest message of an untyped event's payload in its `SubscribeResponse`.
fn reach(decoded: &Decoded) -> usize {
    let Some(Payload::Untyped(untyped)) = &decoded.event.payload else {
        panic!("not untyped: {:?}", decoded.event.payload);
    };
    struct_reach(untyped, 2, DECODER_NESTING_LIMIT)
}

/// The worst case: objects all the way down to a scalar reach exactly `MAX_EVENT_NESTING`, the
/// arithmetic of `nesting`'s header; the frame still decodes.
#[test]
fn the_deepest_body_of_objects_reaches_exactly_the_event_nesting_bound_and_decodes() {
    let levels = vec![Level::Object; MAX_BODY_DEPTH - 1];
    let decoded = decode_json("billing.anything", &body(&levels, true)).expect("accepted");
    assert_eq!(reach(&decoded), MAX_EVENT_NESTING);
    assert_eq!(MAX_EVENT_NESTING, 3 * MAX_BODY_DEPTH + 1);
    assert_clients_decode(&decoded.event);
}

/// `struct_reach` counts levels exactly as prost does: a frame whose deepest message is at level
/// 100 decodes, one at 101 does not. Chains of arrays, with and without a scalar at the bottom,
/// step the reach one level at a time across the limit.
#[test]
fn the_reach_measured_is_the_nesting_prost_refuses_past_its_limit() {
    fn chain(lists: usize, scalar: bool) -> Value {
        let mut value = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: if scalar {
                    vec![Value {
                        kind: Some(Kind::NumberValue(1.0)),
                    }]
                } else {
                    Vec::new()
                },
            })),
        };
        for _ in 1..lists {
            value = Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![value],
                })),
            };
        }
        value
    }
    let mut seen = Vec::new();
    for lists in 40..56 {
        for scalar in [false, true] {
            let untyped = Struct {
                fields: [("x".to_owned(), chain(lists, scalar))].into(),
            };
            let level = struct_reach(&untyped, 2, 2 * DECODER_NESTING_LIMIT);
            let event = pb::Event {
                payload: Some(Payload::Untyped(untyped)),
                ..Default::default()
            };
            let frame = crate::store::encode_event_frame(&event);
            let decodes = pb::SubscribeResponse::decode(frame).is_ok();
            assert_eq!(
                decodes,
                level <= DECODER_NESTING_LIMIT,
                "{lists} lists, scalar {scalar}: level {level}"
            );
            seen.push(level);
        }
    }
    assert!(seen.contains(&DECODER_NESTING_LIMIT));
    assert!(seen.contains(&(DECODER_NESTING_LIMIT + 1)));
}

/// The reproduction of the hardening issue: 60 nested arrays under `x` (61 levels), which
/// became a frame no client could decode, is refused and names where the limit was crossed.
#[test]
fn the_issues_sixty_nested_arrays_are_too_deep() {
    let json = format!(
        r#"{{"userId":"u1","x":{}{}}}"#,
        "[".repeat(60),
        "]".repeat(60)
    );
    let error = decode_json("billing.anything", &json).expect_err("too deep");
    assert_eq!(error.reason(), "too_deep");
    // `x` is at level 2: the 23rd `[0]` below it is the first array at level 25.
    let indices = "[0]".repeat(MAX_BODY_DEPTH - 1);
    assert_eq!(error.field(), Some(format!("x{indices}").as_str()));
    assert!(
        matches!(
            error,
            DecodeError::TooDeep {
                depth: 61,
                limit: MAX_BODY_DEPTH,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("61 levels"), "{error}");
}

/// The bound holds for every body, typed ones too, and names an envelope's fields with their
/// path; `app.updated`'s free-form values at the limit decode in their frame.
#[test]
fn typed_and_enveloped_bodies_have_the_same_bound() {
    let deep = nested(&[Level::Object; MAX_BODY_DEPTH], true);
    let error = decode_json(
        "device.error",
        &format!(r#"{{"payload":{{"userId":"u1","deviceId":"d1","extra":{deep}}}}}"#),
    )
    .expect_err("too deep");
    assert_eq!(error.reason(), "too_deep");
    // `extra` is at level 3: the first object at level 25 is 22 keys below it.
    let keys = ".k".repeat(MAX_BODY_DEPTH - 2);
    assert_eq!(error.field(), Some(format!("payload.extra{keys}").as_str()));

    // The deepest `oldValues` a flat `app.updated` may carry: from the body's level 2 down to 24.
    let values = nested(&[Level::Object; MAX_BODY_DEPTH - 1], true);
    let decoded = decode_json(
        "app.updated",
        &format!(r#"{{"appId":"a1","oldValues":{values},"newValues":{values}}}"#),
    )
    .expect("accepted");
    assert!(matches!(
        decoded.event.payload,
        Some(Payload::AppUpdated(ref updated)) if updated.old_values.is_some()
    ));
    assert_clients_decode(&decoded.event);
}

/// A typed event has no JSON to measure: its `Struct` fields are bounded in levels of messages
/// in the `SubscribeResponse`, at the same `MAX_EVENT_NESTING` a JSON body reaches at worst.
#[test]
fn a_typed_event_whose_struct_reaches_past_the_bound_is_too_deep() {
    fn objects(levels: usize) -> Struct {
        let mut inner = Struct {
            fields: [(
                "v".to_owned(),
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            )]
            .into(),
        };
        for _ in 1..levels {
            inner = Struct {
                fields: [(
                    "k".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(inner)),
                    },
                )]
                .into(),
            };
        }
        inner
    }
    let event = |untyped: Struct| pb::Event {
        user_id: "u1".into(),
        payload: Some(Payload::Untyped(untyped)),
        ..Default::default()
    };
    // 24 levels of objects: level 73, the bound.
    let accepted = accept_typed(
        "billing.anything",
        event(objects(MAX_BODY_DEPTH)),
        &props(),
        DecodeSettings::default(),
    )
    .expect("at the bound");
    assert_clients_decode(&accepted.event);
    let error = accept_typed(
        "billing.anything",
        event(objects(MAX_BODY_DEPTH + 1)),
        &props(),
        DecodeSettings::default(),
    )
    .expect_err("past the bound");
    assert_eq!(error.reason(), "too_deep");
    assert_eq!(error.field(), Some("untyped"));

    let updated = pb::Event {
        user_id: "u1".into(),
        payload: Some(Payload::AppUpdated(pb::AppUpdated {
            app_id: "a1".into(),
            new_values: Some(objects(MAX_BODY_DEPTH + 1)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let error = accept_typed("app.updated", updated, &props(), DecodeSettings::default())
        .expect_err("past the bound");
    assert_eq!(error.field(), Some("app_updated.new_values"));
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::Object), Just(Level::Array)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any mix of objects and arrays as deep as the bound is accepted, and its frame decodes
    /// with prost's default limit; one level more is refused as `too_deep`.
    #[test]
    fn every_body_at_the_depth_bound_decodes_in_its_frame_and_one_level_more_is_refused(
        levels in proptest::collection::vec(level(), MAX_BODY_DEPTH - 1),
        deeper in level(),
        scalar_at_bottom in any::<bool>(),
    ) {
        let decoded = decode_json("billing.anything", &body(&levels, scalar_at_bottom))
            .expect("a body at the bound is accepted");
        prop_assert!(reach(&decoded) <= MAX_EVENT_NESTING);
        assert_clients_decode(&decoded.event);

        let mut one_more = levels.clone();
        one_more.push(deeper);
        let error = decode_json("billing.anything", &body(&one_more, scalar_at_bottom))
            .expect_err("one level more is refused");
        prop_assert_eq!(error.reason(), "too_deep");
        let depth = match error {
            DecodeError::TooDeep { depth, .. } => depth,
            _ => 0,
        };
        prop_assert_eq!(depth, MAX_BODY_DEPTH + 1);
    }
}
