//! Journal reads run on the readers, in bounded steps, never on the thread that polls a stream,
//! and never held by a stream nobody polls.

use super::*;

/// A user resuming over a long journal that holds none of their events: each poll of the stream
/// does a bounded amount of work, and the journal is read on other threads, never on the one
/// that polls (an async worker, which carries everyone's streams). Reading inside the poll once
/// let 60 such resumes stall every live stream, `Publish` and health check for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_selects_nothing_reads_in_bounded_steps_off_the_polling_thread() {
    const STORED: u64 = 20_000;
    let (hub, journal) = pooled_hub(STORED);
    let mut subscription = resume_from_start(&hub, "u1");
    // The first poll only starts a read: it cannot have examined more than one read's worth.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut subscription).poll_next(&mut cx).is_pending());
    let examined = journal.examined.load(Ordering::Relaxed);
    assert!(examined <= REPLAY_SCAN_LIMIT as u64, "{examined}");
    // The replay runs to its end and says so at the head, having read every event once, in
    // bounded reads, none of them on this thread.
    let frame = tokio_stream::StreamExt::next(&mut subscription)
        .await
        .expect("a frame");
    let kind = pb::SubscribeResponse::decode(frame.bytes).unwrap().kind;
    assert_eq!(
        kind,
        Some(Kind::CaughtUp(pb::CaughtUp {
            cursor: hub.head().to_string()
        }))
    );
    assert_eq!(journal.examined.load(Ordering::Relaxed), STORED);
    let threads = journal.scanned_on.lock().unwrap().clone();
    assert_eq!(threads.len(), (STORED as usize).div_ceil(REPLAY_SCAN_LIMIT));
    assert!(!threads.contains(&std::thread::current().id()));
}

/// A stream handed a reader must not keep it while nobody polls the stream (its client reads
/// slowly, or not at all: the transport stops polling a stream whose flow-control window is
/// shut). Waiting for the reader inside the stream's own future once let one such client stop
/// every replay on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_polled_does_not_keep_a_journal_reader() {
    let (hub, _journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut cx = Context::from_waker(Waker::noop());
    // The one reader is busy for `first`; `stalled` waits for it, then is never polled again.
    let mut first = resume_from_start(&hub, "u1");
    assert!(Pin::new(&mut first).poll_next(&mut cx).is_pending());
    let mut stalled = resume_from_start(&hub, "u2");
    assert!(Pin::new(&mut stalled).poll_next(&mut cx).is_pending());
    open.send(()).unwrap();
    // The reader went to `stalled`'s read and came back: another resume gets its turn.
    let mut next = resume_from_start(&hub, "u3");
    assert!(matches!(
        next_kind_of(&mut next).await,
        Some(Kind::CaughtUp(_))
    ));
    drop(stalled);
}

/// Shutdown ends a stream that is waiting for a journal reader at once, with the last cursor it
/// sent, instead of after its turn, its read and its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_stream_waiting_for_the_journal_at_once() {
    let (hub, _journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut cx = Context::from_waker(Waker::noop());
    let mut busy = resume_from_start(&hub, "u1");
    assert!(Pin::new(&mut busy).poll_next(&mut cx).is_pending());
    let mut waiting = resume_from_start(&hub, "u2");
    assert!(Pin::new(&mut waiting).poll_next(&mut cx).is_pending());
    hub.shut_down();
    assert_eq!(next_kind_of(&mut waiting).await, None, "ended");
    assert_eq!(waiting.end_reason(), Some(EndReason::ShuttingDown));
    assert_eq!(waiting.last_cursor().position, 0);
    drop(open);
}

/// A stream the journal keeps waiting (a long queue for the readers) says it is alive: a
/// heartbeat every `--heartbeat-interval`, at the last cursor it sent, so clients that watch
/// for silence do not drop it and go to the back of the queue.
#[tokio::test(start_paused = true)]
async fn a_stream_kept_waiting_by_the_journal_gets_heartbeats_at_its_last_cursor() {
    let (hub, _journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut waiting = resume_from_start(&hub, "u1");
    let start = Cursor {
        epoch: EPOCH,
        position: 0,
    }
    .to_string();
    let mut cx = Context::from_waker(Waker::noop());
    let mut poll = |waiting: &mut Subscription| match Pin::new(waiting).poll_next(&mut cx) {
        Poll::Ready(Some(frame)) => pb::SubscribeResponse::decode(frame.bytes).unwrap().kind,
        Poll::Ready(None) => panic!("ended"),
        Poll::Pending => None,
    };
    // (Time does not advance by itself while a blocking read runs: it is moved by hand.)
    assert_eq!(poll(&mut waiting), None, "reading");
    for _ in 0..2 {
        tokio::time::advance(std::time::Duration::from_secs(14)).await;
        assert_eq!(poll(&mut waiting), None, "not yet");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            poll(&mut waiting),
            Some(Kind::Heartbeat(pb::Heartbeat {
                cursor: start.clone()
            }))
        );
    }
    open.send(()).unwrap();
    assert!(matches!(
        next_kind_of(&mut waiting).await,
        Some(Kind::CaughtUp(_))
    ));
}

/// A resume from the head itself (a reconnect with nothing missed) is caught up at once,
/// without waiting for a journal reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_the_head_needs_no_journal_read() {
    let (hub, journal, open) = pooled_hub_with_a_gated_journal(10);
    let mut subscription = hub
        .subscribe(
            filter("u1", false, &[], ""),
            Viewer::User("u1".into()),
            Some(hub.head()),
        )
        .expect("subscribe");
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Some(frame)) = Pin::new(&mut subscription).poll_next(&mut cx) else {
        panic!("CaughtUp at once");
    };
    assert!(matches!(
        pb::SubscribeResponse::decode(frame.bytes).unwrap().kind,
        Some(Kind::CaughtUp(_))
    ));
    assert!(journal.scanned_on.lock().unwrap().is_empty());
    drop(open);
}
