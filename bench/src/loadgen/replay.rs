//! `--scenario replay`: how fast one subscriber catches up on the journal's whole backlog.
//!
//! Opens one firehose stream (an admin's token) resuming from position 0 of the server's
//! journal, counts the replayed events until `CaughtUp`, and reports events per second. The
//! backlog must be there already (fill it with a `per-user` or `firehose` run first).

use std::time::Instant;

use anyhow::{Context as _, bail};
use tonic::transport::Channel;

use super::LoadgenArgs;
use notify_backbone::pb::{
    self, notification_service_client::NotificationServiceClient, subscribe_response::Kind,
};

/// Runs the replay measurement and prints its result.
pub(super) async fn run(args: &LoadgenArgs, channel: Channel) -> anyhow::Result<()> {
    let secret = notify_backbone::client::secret_or_dev(args.jwt_secret.as_deref())?;
    let token = notify_backbone::client::mint_with(
        &secret,
        "loadgen-replay",
        &["admin".to_owned()],
        std::time::Duration::from_secs(3600),
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )?;
    let mut client = NotificationServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let open = |resume_after: String| {
        notify_backbone::client::authorized(
            pb::SubscribeRequest {
                user_id: "*".into(),
                resume_after,
                ..Default::default()
            },
            Some(&token),
        )
    };
    // The journal's epoch, from the cursor of a live stream's CaughtUp.
    let mut probe = client.subscribe(open(String::new())?).await?.into_inner();
    let head = match probe.message().await?.and_then(|m| m.kind) {
        Some(Kind::CaughtUp(caught_up)) => caught_up.cursor,
        other => bail!("expected CaughtUp first, got {other:?}"),
    };
    drop(probe);
    let epoch = head.get(..16).context("a cursor from the server")?;
    let start = format!("{epoch}{:016x}", 0);

    let started = Instant::now();
    let mut stream = client.subscribe(open(start)?).await?.into_inner();
    let (mut events, mut gaps, mut first) = (0_u64, 0_u64, None);
    loop {
        let Some(message) = stream.message().await? else {
            bail!("the stream ended before CaughtUp");
        };
        match message.kind {
            Some(Kind::Event(_)) => {
                events += 1;
                first.get_or_insert_with(|| started.elapsed());
            }
            Some(Kind::Gap(_)) => gaps += 1,
            Some(Kind::CaughtUp(_)) => break,
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = events as f64 / seconds;
    let first_ms = first.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "replay",
                "events": events,
                "gaps": gaps,
                "seconds": seconds,
                "events_per_s": rate,
                "first_event_ms": first_ms,
                "head": head,
            })
        );
    } else {
        println!(
            "replay: {events} events in {seconds:.2} s = {rate:.0} events/s to one subscriber \
             (first after {first_ms:.1} ms; {gaps} gaps; head {head})"
        );
    }
    Ok(())
}
