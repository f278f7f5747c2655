//! Stored frames that do not decode: served without their payload in pages and replays,
//! logged once and counted.

use super::*;

/// A frame an older server stored for an untyped event nested too deep for protobuf decoders
/// (the schema refuses such bodies now): 60 nested lists, level 123 in its `SubscribeResponse`.
fn too_deep_frame(id: &str, position: u64, user: &str) -> bytes::Bytes {
    let mut value = prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(Default::default())),
    };
    for _ in 1..60 {
        value = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue {
                    values: vec![value],
                },
            )),
        };
    }
    let event = pb::Event {
        id: id.into(),
        cursor: Cursor {
            epoch: EPOCH,
            position,
        }
        .to_string(),
        r#type: "billing.anything".into(),
        user_id: user.into(),
        payload: Some(pb::event::Payload::Untyped(prost_types::Struct {
            fields: [("x".to_owned(), value)].into(),
        })),
        ..Default::default()
    };
    let frame = crate::store::encode_event_frame(&event);
    assert!(pb::SubscribeResponse::decode(frame.clone()).is_err());
    frame
}

impl Publisher {
    /// Stores `frame` as the next event, as the sequencer would have, and fans it out.
    fn send_frame(&mut self, event_type: &str, user: &str, frame: bytes::Bytes) -> u64 {
        self.position += 1;
        self.journal.events.lock().unwrap().push(StoredEvent {
            position: self.position,
            event_type: event_type.into(),
            user_id: user.into(),
            device_id: "".into(),
            frame: frame.clone(),
        });
        let event = pb::Event {
            r#type: event_type.into(),
            user_id: user.into(),
            ..Default::default()
        };
        self.hub.fan_out(Routed {
            event: &event,
            frame,
            position: self.position,
            published_at: Instant::now(),
            trace: None,
            muted: false,
        });
        self.position
    }
}

/// WARN lines logged on this thread while the guard lives.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logged {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logged = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || logged.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

/// A stored frame that does not decode (too deep for prost, or damaged) is not left out of a
/// history page, as it once was without a word: the page holds the event without its payload,
/// with the journal's type and user and what its envelope says, and paging goes on past it. Each
/// read counts in `notify_unreadable_events_total`; each position is logged once.
#[tokio::test]
async fn a_stored_frame_that_does_not_decode_is_served_without_its_payload_logged_and_counted() {
    let logged = Logged::default();
    let _guard = logged.capture();
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let first = publisher.send("quota.updated", "u1", "");
    let deep = publisher.send_frame("billing.anything", "u1", too_deep_frame("deep", 2, "u1"));
    let damaged = publisher.send_frame(
        "quota.updated",
        "u1",
        bytes::Bytes::from_static(b"\x0a\xff\xff not a frame"),
    );
    let last = publisher.send("quota.updated", "u1", "");
    let u1 = || filter("u1", false, &[], "");

    let page = hub
        .list(u1(), Viewer::User("u1".into()), None, 2)
        .await
        .expect("a page");
    let ids: Vec<_> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [first.as_str(), "deep"]);
    let stub = &page.events[1];
    assert_eq!(stub.payload, None);
    assert_eq!(stub.r#type, "billing.anything");
    assert_eq!(stub.user_id, "u1");
    assert_eq!(stub.cursor, hub.shared.cursor(deep).to_string());
    assert!(!page.end);
    assert_eq!(page.next.position, deep);

    let page = hub
        .list(u1(), Viewer::User("u1".into()), Some(page.next), 2)
        .await
        .expect("the next page");
    assert_eq!(page.events.len(), 2, "{:?}", page.events);
    let damaged_event = &page.events[0];
    assert_eq!(
        (damaged_event.payload.as_ref(), damaged_event.id.as_str()),
        (None, "")
    );
    assert_eq!(damaged_event.r#type, "quota.updated");
    assert_eq!(damaged_event.cursor, hub.shared.cursor(damaged).to_string());
    assert_eq!(page.events[1].id, last);
    assert!(page.end);
    assert_eq!(hub.shared.metrics.unreadable_events.get(), 2);

    // Newest first, the same: all four events.
    let page = hub
        .list_newest(u1(), Viewer::Admin, None, 10)
        .await
        .expect("a page");
    let ids: Vec<_> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [last.as_str(), "", "deep", first.as_str()]);
    assert_eq!(hub.shared.metrics.unreadable_events.get(), 4);
    // Read twice, logged once each.
    assert_eq!(logged.lines_with("does not decode"), 2);
    assert_eq!(logged.lines_with(&format!("position={deep}")), 1);
    assert_eq!(logged.lines_with(&format!("position={damaged}")), 1);
}

/// A stream resuming over an event an older server stored too deep for protobuf decoders gets
/// it without its payload, a frame it can decode, instead of the frame that stopped it at every
/// resume.
#[test]
fn a_replayed_frame_too_deep_for_clients_is_sent_without_its_payload() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let first = publisher.send("quota.updated", "u1", "");
    publisher.send_frame("billing.anything", "u1", too_deep_frame("deep", 2, "u1"));
    let last = publisher.send("quota.updated", "u1", "");
    let mut subscription = resume_from_start(&hub, "u1");
    let kinds = drain(&mut subscription);
    assert_eq!(event_ids(&kinds), [first, "deep".into(), last]);
    let Kind::Event(deep) = &kinds[1] else {
        panic!("{kinds:?}");
    };
    assert_eq!(deep.payload, None);
    assert_eq!(deep.cursor, hub.shared.cursor(2).to_string());
    assert!(matches!(kinds.last(), Some(Kind::CaughtUp(_))));
    assert_eq!(hub.shared.metrics.unreadable_events.get(), 1);
}
