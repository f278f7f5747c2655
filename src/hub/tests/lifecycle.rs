//! Heartbeats and shutdown, and the races of subscribers joining while events fan out.

use super::*;

#[test]
fn shutdown_ends_every_stream_and_refuses_new_ones() {
    let hub = hub(16);
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    hub.shut_down();
    assert!(matches!(
        drain(&mut subscription).as_slice(),
        [Kind::CaughtUp(_)]
    ));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(
            Pin::new(&mut subscription).poll_next(&mut cx),
            Poll::Ready(None)
        ),
        "the stream ended"
    );
    assert_eq!(subscription.end_reason(), Some(EndReason::ShuttingDown));
    assert!(matches!(
        hub.subscribe(filter("u1", false, &[], ""), Viewer::Admin, None),
        Err(HubError::ShuttingDown)
    ));
}

#[test]
fn idle_streams_get_heartbeats_busy_ones_do_not() {
    let (hub, journal) = hub_with_journal(16);
    let mut idle = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut busy = hub
        .subscribe(filter("u2", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    hub.heartbeat(); // both had their CaughtUp since the last tick: no heartbeat yet
    assert!(matches!(drain(&mut idle).as_slice(), [Kind::CaughtUp(_)]));
    assert!(matches!(drain(&mut busy).as_slice(), [Kind::CaughtUp(_)]));
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("quota.updated", "u2", "");
    hub.heartbeat();
    assert!(matches!(drain(&mut idle).as_slice(), [Kind::Heartbeat(_)]));
    assert!(matches!(drain(&mut busy).as_slice(), [Kind::Event(_)]));
}

/// Subscribers join and heartbeats tick while another thread fans events out: every stream must
/// see, after its `CaughtUp`, every later event exactly once and in order, and no frame may
/// carry a position behind one already queued (the hand-off and heartbeat races).
#[test]
fn concurrent_subscribes_and_heartbeats_never_lose_reorder_or_rewind() {
    const EVENTS: u64 = 5_000;
    const MAX_TICKS: usize = 1_000;
    // Room for every event and every heartbeat: this test is about order, not overflow.
    let (hub, journal) = hub_with_journal(EVENTS as usize + MAX_TICKS + 16);
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            let mut publisher = Publisher::new(&hub, &journal);
            for _ in 0..EVENTS {
                publisher.send("device.error", "u1", "d1");
            }
        })
    };
    let ticker = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for _ in 0..MAX_TICKS {
                if hub.head().position >= EVENTS {
                    break;
                }
                hub.heartbeat();
                std::thread::yield_now();
            }
        })
    };
    let mut subscriptions = Vec::new();
    while hub.head().position < EVENTS && subscriptions.len() < 200 {
        subscriptions.push(
            hub.subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
                .expect("subscribe"),
        );
        std::thread::yield_now();
    }
    publisher.join().expect("publisher");
    ticker.join().expect("ticker");
    assert!(subscriptions.len() > 1, "subscribers joined during the run");

    let mut cx = Context::from_waker(Waker::noop());
    for subscription in &mut subscriptions {
        let mut positions = Vec::new();
        let mut start = None;
        while let Poll::Ready(Some(frame)) = Pin::new(&mut *subscription).poll_next(&mut cx) {
            let response = pb::SubscribeResponse::decode(frame.bytes.clone()).expect("decodes");
            match response.kind.expect("kind") {
                Kind::CaughtUp(_) => start = Some(frame.position),
                Kind::Event(_) => positions.push(frame.position),
                Kind::Heartbeat(_) | Kind::Gap(_) | Kind::Inbox(_) | Kind::Conflated(_) => {}
            }
            let last = positions
                .last()
                .copied()
                .unwrap_or(0)
                .max(start.unwrap_or(0));
            assert!(
                frame.position >= last,
                "a frame went back to {} after {last}",
                frame.position
            );
        }
        let start = start.expect("CaughtUp first");
        let expected: Vec<u64> = (start + 1..=EVENTS).collect();
        if let Some(at) =
            (0..expected.len().max(positions.len())).find(|&i| positions.get(i) != expected.get(i))
        {
            let window = |v: &[u64]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
            panic!(
                "{:?} after CaughtUp({start}): first difference at index {at}: got {:?}, expected {:?} \
                 ({} received, {} expected)",
                subscription.end_reason(),
                window(&positions),
                window(&expected),
                positions.len(),
                expected.len()
            );
        }
    }
}
