//! `--scenario resume-storm`: what a storm of resumes costs everyone else.
//!
//! Before the streams open, the journal is filled up to `--journal-events` (with events of
//! users nobody in the run subscribes as). Then the run is a `per-user` run — live streams, a
//! rated publisher, latency measured — while `--resumes` streams, each as a user who owns none
//! of the stored events, resume from the journal's first position, read until `CaughtUp`, and
//! start over, for as long as publishing goes on. Such a replay selects nothing and must examine
//! every stored event: the worst case for the server, which must keep it from being felt by the
//! live streams. The report adds how many replays completed and how long each took.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::LoadgenArgs;
use notify_backbone::{
    client::{authorized, mint_with},
    pb::{
        self, notification_service_client::NotificationServiceClient, publish_request::Body,
        subscribe_response::Kind,
    },
    store::Cursor,
};

/// Concurrent `Publish` calls while filling the journal.
const FILL_CONCURRENCY: usize = 64;

/// The storm's streams share this many HTTP/2 connections (apart from the measured ones).
const STORM_CONNECTIONS: usize = 4;

/// How long the tokens of a run are valid.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The journal's head cursor, from a firehose stream's first message (an admin's token).
pub(super) async fn head(channel: Channel, secret: &str) -> anyhow::Result<Cursor> {
    let token = admin_token(secret)?;
    let request = pb::SubscribeRequest {
        user_id: "*".into(),
        ..Default::default()
    };
    let mut stream = NotificationServiceClient::new(channel)
        .subscribe(authorized(request, Some(&token))?)
        .await?
        .into_inner();
    match stream.message().await?.and_then(|m| m.kind) {
        Some(Kind::CaughtUp(caught_up)) => Ok(Cursor::parse(&caught_up.cursor)?),
        other => bail!("expected CaughtUp first, got {other:?}"),
    }
}

/// Publishes until the journal holds at least `events` (closed loop, as fast as the server
/// takes them), printing progress to stderr. Returns the head afterwards.
pub(super) async fn fill(
    channel: Channel,
    secret: &str,
    run_prefix: &str,
    events: u64,
) -> anyhow::Result<Cursor> {
    let start = head(channel.clone(), secret).await?;
    let missing = events.saturating_sub(start.position);
    if missing == 0 {
        return Ok(start);
    }
    eprintln!(
        "notify-bench: filling the journal: {missing} events to reach {events} (head {})",
        start.position
    );
    let token = mint_with(
        secret,
        "loadgen-storm-filler",
        &["service".to_owned()],
        TOKEN_TTL,
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )?;
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..FILL_CONCURRENCY {
        let (mut client, token, next) = (
            NotificationServiceClient::new(channel.clone()),
            token.clone(),
            Arc::clone(&next),
        );
        let prefix = run_prefix.to_owned();
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= missing {
                    return anyhow::Ok(());
                }
                // Users `lg-owner-*`: neither the measured streams nor the storm's.
                let body = format!(
                    r#"{{"eventId":"{prefix}fill-{seq}","eventType":"device.error","payload":{{"deviceId":"d-{seq}","userId":"lg-owner-{}","errorType":"fill"}},"_trace":{{}}}}"#,
                    seq % 1000
                );
                let request = pb::PublishRequest {
                    routing_key: "device.error".into(),
                    body: Some(Body::Json(body.into_bytes())),
                };
                client
                    .publish(authorized(request, Some(&token))?)
                    .await
                    .context("filling the journal")?;
                if seq > 0 && seq % 50_000 == 0 {
                    eprintln!(
                        "notify-bench: filled {seq} of {missing} ({:.0}/s)",
                        seq as f64 / began.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a fill task failed")??;
    }
    let filled = head(channel, secret).await?;
    eprintln!(
        "notify-bench: journal filled to {} in {:.1} s",
        filled.position,
        began.elapsed().as_secs_f64()
    );
    Ok(filled)
}

fn admin_token(secret: &str) -> anyhow::Result<String> {
    mint_with(
        secret,
        "loadgen-storm-admin",
        &["admin".to_owned()],
        TOKEN_TTL,
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )
}

/// What the storm did.
#[derive(Debug, Default)]
pub(crate) struct StormStats {
    /// Resumes that ended with `CaughtUp`.
    pub completed: u64,
    /// Resumes that failed (an error status, a stream that ended early).
    pub failed: u64,
    /// Events the storm's replays delivered (0 when they select nothing, as intended).
    pub events: u64,
    /// Milliseconds from each completed resume's request to its `CaughtUp`, sorted.
    pub replay_ms: Vec<f64>,
    /// The first failures, for the report.
    pub failures: Vec<String>,
}

/// The storm's tasks, until [`Storm::stop`].
pub(super) struct Storm {
    tasks: JoinSet<StormStats>,
    stop: CancellationToken,
}

impl Storm {
    /// Starts `resumes` streams resuming from position 0 of `epoch`, over connections of their
    /// own; each starts over once caught up, until stopped.
    pub(super) async fn start(
        args: &LoadgenArgs,
        secret: &str,
        epoch: u64,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let channels = super::connect_all(&args.server, STORM_CONNECTIONS, false)
            .await
            .context("opening the storm's connections")?;
        let start = Cursor { epoch, position: 0 }.to_string();
        let mut tasks = JoinSet::new();
        for index in 0..args.resumes {
            // A user of its own each: the per-principal stream limit does not cut the storm
            // short, and none of them owns a stored event.
            let token = mint_with(
                secret,
                &format!("lg-storm-{index}"),
                &["user".to_owned()],
                TOKEN_TTL,
                notify_backbone::auth::DEFAULT_ISSUER,
                notify_backbone::auth::DEFAULT_AUDIENCE,
            )?;
            let client = NotificationServiceClient::new(channels[index % channels.len()].clone());
            tasks.spawn(resume_repeatedly(
                client,
                token,
                start.clone(),
                stop.clone(),
            ));
        }
        Ok(Self { tasks, stop })
    }

    /// Stops the storm and adds up what it did.
    pub(super) async fn stop(mut self) -> StormStats {
        self.stop.cancel();
        let mut total = StormStats::default();
        while let Some(joined) = self.tasks.join_next().await {
            let Ok(stats) = joined else {
                total.failed += 1;
                continue;
            };
            total.completed += stats.completed;
            total.failed += stats.failed;
            total.events += stats.events;
            total.replay_ms.extend(stats.replay_ms);
            for failure in stats.failures {
                if total.failures.len() < 5 {
                    total.failures.push(failure);
                }
            }
        }
        total.replay_ms.sort_by(f64::total_cmp);
        total
    }
}

async fn resume_repeatedly(
    mut client: NotificationServiceClient<Channel>,
    token: String,
    start: String,
    stop: CancellationToken,
) -> StormStats {
    let mut stats = StormStats::default();
    while !stop.is_cancelled() {
        let began = Instant::now();
        let replay = replay_once(&mut client, &token, &start, &mut stats.events);
        let outcome = tokio::select! {
            outcome = replay => outcome,
            () = stop.cancelled() => break,
        };
        match outcome {
            Ok(()) => {
                stats.completed += 1;
                stats.replay_ms.push(began.elapsed().as_secs_f64() * 1000.0);
            }
            Err(error) => {
                stats.failed += 1;
                if stats.failures.len() < 5 {
                    stats.failures.push(format!("{error:#}"));
                }
                // A refusal (a limit) must not turn into a busy loop.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    stats
}

/// One resume, read until `CaughtUp`.
async fn replay_once(
    client: &mut NotificationServiceClient<Channel>,
    token: &str,
    start: &str,
    events: &mut u64,
) -> anyhow::Result<()> {
    let request = pb::SubscribeRequest {
        resume_after: start.to_owned(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(authorized(request, Some(token))?)
        .await?
        .into_inner();
    loop {
        match stream.message().await?.and_then(|m| m.kind) {
            Some(Kind::CaughtUp(_)) => return Ok(()),
            Some(Kind::Event(_)) => *events += 1,
            Some(Kind::Gap(_) | Kind::Heartbeat(_) | Kind::Inbox(_) | Kind::Conflated(_)) => {}
            None => bail!("the stream ended before CaughtUp"),
        }
    }
}
