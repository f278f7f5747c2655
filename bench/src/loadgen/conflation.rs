//! `--scenario conflation`: how long a console takes to catch up after a storm of state
//! events, with and without `SubscribeRequest.conflate`.
//!
//! Publishes `--journal-events` `quota.updated` events of one user (`lg-console`) for
//! `--quotas` quotas in turn (the storm a quota recalculation job makes), then, `--runs` times
//! each, resumes one stream of that user from just before the storm, without and with
//! `conflate`, and times it to `CaughtUp`: the events delivered, the skips `Conflated` reported,
//! the seconds, and whether each quota's last delivered value is its latest one.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{LoadgenArgs, storm::head};
use notify_backbone::{
    client::{authorized, mint_with, secret_or_dev},
    pb::{
        self, event::Payload, notification_service_client::NotificationServiceClient,
        publish_request::Body, subscribe_response::Kind,
    },
};

/// The user whose console catches up.
const USER: &str = "lg-console";

/// Concurrent `Publish` calls while publishing the storm.
const CONCURRENCY: usize = 32;

/// One catch-up's figures.
struct CatchUp {
    events: u64,
    /// Bytes of the messages received (encoded), up to `CaughtUp`.
    bytes: u64,
    skipped: u64,
    seconds: f64,
    /// Every quota's last delivered `usage.currentDevices` is the last version published.
    latest_of_each: bool,
}

/// Publishes the storm, times the catch-ups, prints the result.
pub(super) async fn run(args: &LoadgenArgs, channel: Channel) -> anyhow::Result<()> {
    ensure!(args.quotas > 0, "--quotas must be at least 1");
    let secret = secret_or_dev(args.jwt_secret.as_deref())?;
    let start = head(channel.clone(), &secret).await?;
    let versions = args.journal_events.div_ceil(args.quotas);
    ensure!(
        args.quotas > CONCURRENCY as u64,
        "--quotas must be above {CONCURRENCY} (two versions of a quota must never be published at once)"
    );
    let began = Instant::now();
    publish_storm(&channel, &secret, args.quotas, versions).await?;
    let published = args.quotas * versions;
    eprintln!(
        "notify-bench: {published} quota.updated for {} quotas in {:.1} s",
        args.quotas,
        began.elapsed().as_secs_f64()
    );
    let token = mint_with(
        &secret,
        USER,
        &["user".to_owned()],
        Duration::from_secs(3600),
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )?;
    let mut client = NotificationServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut runs: Vec<(CatchUp, CatchUp)> = Vec::new();
    for _ in 0..args.runs.max(1) {
        let plain = catch_up(&mut client, &token, &start.to_string(), false, versions).await?;
        let conflated = catch_up(&mut client, &token, &start.to_string(), true, versions).await?;
        runs.push((plain, conflated));
    }
    let median = |pick: &dyn Fn(&(CatchUp, CatchUp)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let plain_s = median(&|r| r.0.seconds);
    let conflated_s = median(&|r| r.1.seconds);
    let (plain, conflated) = runs.last().context("a run")?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "conflation",
                "published": published,
                "quotas": args.quotas,
                "runs": runs.len(),
                "plain": {"events": plain.events, "bytes": plain.bytes, "seconds_median": plain_s,
                          "seconds": runs.iter().map(|r| r.0.seconds).collect::<Vec<_>>(),
                          "latest_of_each": plain.latest_of_each},
                "conflate": {"events": conflated.events, "bytes": conflated.bytes,
                             "skipped": conflated.skipped,
                             "seconds_median": conflated_s,
                             "seconds": runs.iter().map(|r| r.1.seconds).collect::<Vec<_>>(),
                             "latest_of_each": conflated.latest_of_each},
            })
        );
    } else {
        println!(
            "conflation: {published} quota.updated for {} quotas; catch-up to CaughtUp, median of {}:\n  \
             without conflate: {} events, {} bytes in {plain_s:.3} s\n  \
             with conflate:    {} events ({} skipped), {} bytes in {conflated_s:.3} s; latest of each quota: {}",
            args.quotas,
            runs.len(),
            plain.events,
            plain.bytes,
            conflated.events,
            conflated.skipped,
            conflated.bytes,
            conflated.latest_of_each,
        );
    }
    Ok(())
}

/// Publishes `versions` updates of each of `quotas` quotas, quota after quota within a version.
async fn publish_storm(
    channel: &Channel,
    secret: &str,
    quotas: u64,
    versions: u64,
) -> anyhow::Result<()> {
    let token = mint_with(
        secret,
        "loadgen-quota-job",
        &["service".to_owned()],
        Duration::from_secs(3600),
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )?;
    let total = quotas * versions;
    // The body decides the event's id (no `eventId` in this shape): a field of this run's own
    // keeps a second run's storm from being taken for duplicates of the first's.
    let run: u64 = rand::random();
    // Sequence numbers are handed out in order, a version of every quota before the next: two
    // versions of one quota are `quotas` calls apart, never in flight together (for `quotas` >
    // CONCURRENCY), so each quota's last stored update is its last version.
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (mut client, token, next) = (
            NotificationServiceClient::new(channel.clone()),
            token.clone(),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return anyhow::Ok(());
                }
                let (version, quota) = (seq / quotas, seq % quotas);
                let body = format!(
                    r#"{{"userId":"{USER}","quotaId":"q-{quota}","type":"updated","limits":{{}},"usage":{{"currentDevices":{version}}},"status":"active","run":"{run:016x}","_trace":{{}}}}"#
                );
                let request = pb::PublishRequest {
                    routing_key: "quota.updated".into(),
                    body: Some(Body::Json(body.into_bytes())),
                };
                client
                    .publish(authorized(request, Some(&token))?)
                    .await
                    .context("publishing the storm")?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a publishing task failed")??;
    }
    Ok(())
}

/// One stream of `USER` resumed after `from`, read to `CaughtUp`.
async fn catch_up(
    client: &mut NotificationServiceClient<Channel>,
    token: &str,
    from: &str,
    conflate: bool,
    versions: u64,
) -> anyhow::Result<CatchUp> {
    let request = pb::SubscribeRequest {
        resume_after: from.to_owned(),
        conflate,
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = client
        .subscribe(authorized(request, Some(token))?)
        .await?
        .into_inner();
    let (mut events, mut skipped, mut bytes) = (0_u64, 0_u64, 0_u64);
    let mut last: HashMap<String, f64> = HashMap::new();
    loop {
        let Some(message) = stream.message().await? else {
            bail!("the stream ended before CaughtUp");
        };
        bytes += prost::Message::encoded_len(&message) as u64;
        match message.kind {
            Some(Kind::Event(event)) => {
                events += 1;
                if let Some(Payload::QuotaUpdated(quota)) = event.payload {
                    let devices = quota.usage.and_then(|u| u.current_devices).unwrap_or(-1.0);
                    last.insert(quota.quota_id, devices);
                }
            }
            Some(Kind::Conflated(conflated)) => skipped += conflated.skipped,
            Some(Kind::CaughtUp(_)) => break,
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let newest = versions.saturating_sub(1) as f64;
    let latest_of_each = last.values().all(|v| *v == newest);
    Ok(CatchUp {
        events,
        bytes,
        skipped,
        seconds,
        latest_of_each,
    })
}
