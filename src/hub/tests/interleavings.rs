//! Publishes, reads, disconnects and resumes in any order, with queues small enough to lag:
//! a client that always resumes from the last cursor it processed receives every one of its
//! events exactly once, in order.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Publish { mine: bool },
    Open,
    Read(usize),
    Disconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|mine| Op::Publish { mine }),
        1 => Just(Op::Open),
        3 => (1_usize..8).prop_map(Op::Read),
        1 => Just(Op::Disconnect),
    ]
}

/// Reads up to `n` ready frames, recording events and moving `last` as a client would.
fn read(
    subscription: &mut Subscription,
    n: usize,
    got: &mut Vec<String>,
    last: &mut Cursor,
) -> Result<(), TestCaseError> {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        let Poll::Ready(Some(frame)) = Pin::new(&mut *subscription).poll_next(&mut cx) else {
            break;
        };
        let kind = pb::SubscribeResponse::decode(frame.bytes)
            .expect("decodes")
            .kind
            .expect("kind set");
        match kind {
            Kind::Event(event) => {
                got.push(event.id);
                *last = Cursor::parse(&event.cursor).expect("a cursor");
            }
            Kind::CaughtUp(c) => *last = Cursor::parse(&c.cursor).expect("a cursor"),
            Kind::Heartbeat(_) | Kind::Inbox(_) => {}
            Kind::Gap(gap) => prop_assert!(false, "unexpected gap {gap:?}"),
            Kind::Conflated(c) => prop_assert!(false, "a stream without conflation skipped {c:?}"),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_gap_and_no_duplicate_at_any_hand_off(
        ops in prop::collection::vec(op(), 1..120),
        queue_len in 1_usize..6,
    ) {
        let (hub, journal) = hub_with_journal(queue_len);
        let mut publisher = Publisher::new(&hub, &journal);
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let mut last = Cursor { epoch: EPOCH, position: 0 };
        let mut subscription: Option<Subscription> = None;
        let open = |last: Cursor| {
            hub.subscribe(
                filter("u1", false, &[], ""),
                Viewer::User("u1".into()),
                Some(last),
            )
            .expect("subscribe")
        };
        for op in ops {
            match op {
                Op::Publish { mine } => {
                    let id = publisher.send("quota.updated", if mine { "u1" } else { "u2" }, "");
                    if mine {
                        expected.push(id);
                    }
                }
                Op::Open => {
                    if subscription.is_none() {
                        subscription = Some(open(last));
                    }
                }
                Op::Read(n) => {
                    if let Some(s) = subscription.as_mut() {
                        read(s, n, &mut got, &mut last)?;
                    }
                }
                Op::Disconnect => subscription = None,
            }
        }
        let mut s = subscription.unwrap_or_else(|| open(last));
        read(&mut s, usize::MAX, &mut got, &mut last)?;
        prop_assert_eq!(got, expected);
    }
}
