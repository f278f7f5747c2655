//! `--scenario inbox`: what the notification centre's calls cost on a full journal, and what the
//! inbox costs the write path.
//!
//! Owns: the scenario's two phases and their figures. **The fill** publishes through
//! `PublishStream` (`--publishers` streams, as fast as the server takes them) until the
//! journal's head reaches `--journal-events`, giving the events to `--users` users in turn, so
//! each user's inbox holds `--journal-events / --users` items; it reports events per second and,
//! with `--server-pid`, the server's CPU per event (with `--inbox-types` matching nothing, the
//! same fill is the journal without the inbox). A journal that holds enough already is not
//! filled again, so a server filled with `--fill-only` under one set of flags can be restarted
//! with others and measured. **The window** (`--warmup`, then `--duration`) times the calls of
//! [`calls`] at their `--inbox-*-rate`s, and with `--inbox-publish` publishes meanwhile (at
//! `--rate`; 0: as fast as the server takes them): the events per second the writer sustains
//! with the marks mixed in, against the same run with `--inbox-mark-rate 0`.
//!
//! Does not own: publishing (`publisher`), the timetable of the calls and their clients
//! ([`calls`]), the report ([`summary`]).

mod calls;
mod summary;

use std::{fmt::Write as _, sync::Arc, time::Instant};

use anyhow::{Context as _, ensure};
use tokio_util::sync::CancellationToken;

use super::{
    Live, LoadgenArgs, PublishMode, RunClock, Via, Window, command_line, connect_all, cpu,
    grpc_transports,
    publisher::{PublishPlan, TargetUsers},
    report::Publishing,
    run_publishers, storm, watch_interrupt,
};
use summary::Summary;

/// How often the progress line is printed.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the fill did.
struct Fill {
    /// The publishers' counts, failures and call times.
    publishing: Publishing,
    /// From the first publish to the last answer.
    seconds: f64,
    /// The server's CPU time over the fill (with `--server-pid`).
    server_cpu: Option<cpu::CpuTime>,
}

/// What the window measured.
struct Measured {
    /// The calls per kind, of the kinds with a rate.
    calls: Vec<calls::CallStats>,
    /// With `--inbox-publish`: what the publishers did.
    publishing: Option<Publishing>,
    /// The server's CPU time over the measurement window (with `--server-pid`).
    server_cpu: Option<cpu::CpuTime>,
}

/// Refuses arguments that cannot make a meaningful inbox run.
pub(super) fn check_args(args: &LoadgenArgs) -> anyhow::Result<()> {
    ensure!(
        args.via == Via::Grpc,
        "--scenario inbox publishes through PublishStream: it needs --via grpc"
    );
    ensure!(args.users > 0, "--users must be at least 1");
    ensure!(args.inbox_clients > 0, "--inbox-clients must be at least 1");
    ensure!(
        (1..=100).contains(&args.inbox_page),
        "--inbox-page must be 1 to 100 (the most a ListInbox page holds)"
    );
    ensure!(
        args.p99_target_ms.is_none(),
        "--p99-target-ms does not apply to --scenario inbox: compare each call's p99 yourself"
    );
    ensure!(
        args.fill_only
            || args.inbox_publish
            || calls::Call::ALL.into_iter().any(|call| call.rate(args) > 0),
        "--scenario inbox has nothing to measure: give a call a rate, --inbox-publish or \
         --fill-only"
    );
    Ok(())
}

/// Runs the scenario and prints its report.
pub(super) async fn run(args: &LoadgenArgs) -> anyhow::Result<()> {
    let command = command_line();
    let secret = notify_backbone::client::secret_or_dev(args.jwt_secret.as_deref())?;
    let clock = RunClock::start();
    let run_prefix = format!("lg-{:08x}-", rand::random::<u32>());
    let (interrupt, interrupt_watch) = watch_interrupt();
    // The journal's head, read through a firehose stream's `CaughtUp` on a connection of its own.
    let probe = connect_all(&args.server, 1, true)
        .await?
        .pop()
        .context("a connection")?;
    let head_at_start = storm::head(probe.clone(), &secret).await?.position;

    let fill = fill(args, &run_prefix, clock, head_at_start, &interrupt).await?;
    let head_after_fill = storm::head(probe.clone(), &secret).await?.position;
    let measured = if args.fill_only || interrupt.is_cancelled() {
        None
    } else {
        Some(measure(args, &secret, &run_prefix, clock, &interrupt).await?)
    };
    let head_at_end = storm::head(probe, &secret).await?.position;
    interrupt_watch.abort();

    let summary = Summary {
        args,
        command,
        interrupted: interrupt.is_cancelled(),
        heads: [head_at_start, head_after_fill, head_at_end],
        fill,
        measured,
    };
    summary.print(args.json)?;
    summary.verdict()
}

/// Publishes until the journal's head reaches `--journal-events` (from `head`); `None` when it
/// is there already.
async fn fill(
    args: &LoadgenArgs,
    run_prefix: &str,
    clock: RunClock,
    head: u64,
    interrupt: &CancellationToken,
) -> anyhow::Result<Option<Fill>> {
    let missing = args.journal_events.saturating_sub(head);
    if missing == 0 {
        eprintln!(
            "notify-bench: the journal holds {head} events already (--journal-events {}): no fill",
            args.journal_events
        );
        return Ok(None);
    }
    eprintln!(
        "notify-bench: filling the journal with {missing} events over {} users through {} \
         PublishStreams (head {head})",
        args.users, args.publishers
    );
    let transports = grpc_transports(args, PublishMode::Stream).await?;
    let plan = PublishPlan::new(args, run_prefix, TargetUsers::Cycle(args.users))?.fill(missing);
    let live = Arc::new(Live::new()?);
    let stopwatch = args.server_pid.map(cpu::Stopwatch::start).transpose()?;
    let started = Instant::now();
    let progress = tokio::spawn(progress(clock, live.clone(), None, Some(missing)));
    let window = Window::unbounded(clock.now_ns());
    let published = run_publishers(
        transports,
        Arc::new(plan),
        clock,
        window,
        live,
        interrupt.child_token(),
    )
    .await;
    progress.abort();
    let (stats, abandoned) = published?;
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu = stopwatch.map(cpu::Stopwatch::stop).transpose()?;
    let publishing = Publishing::of(&stats, abandoned)?;
    eprintln!(
        "notify-bench: filled {} events in {seconds:.1} s ({:.0}/s)",
        publishing.counts.ok,
        publishing.counts.ok as f64 / seconds.max(1e-9)
    );
    Ok(Some(Fill {
        publishing,
        seconds,
        server_cpu,
    }))
}

/// The window: the calls, and with `--inbox-publish` the publishers, for --warmup then
/// --duration.
async fn measure(
    args: &LoadgenArgs,
    secret: &str,
    run_prefix: &str,
    clock: RunClock,
    interrupt: &CancellationToken,
) -> anyhow::Result<Measured> {
    // Everything connected before the window starts, so that no client starts behind.
    let clients = calls::Clients::connect(args).await?;
    let publishers = if args.inbox_publish {
        let plan = PublishPlan::new(args, run_prefix, TargetUsers::Random(args.users))?;
        Some((grpc_transports(args, PublishMode::Stream).await?, plan))
    } else {
        None
    };
    let live = Arc::new(Live::new()?);
    let done = Arc::new(calls::Done::default());
    let window = Window::of_run(clock.now_ns(), args);
    let stop = interrupt.child_token();
    let cpu = args
        .server_pid
        .map(|pid| cpu::measure(pid, clock, window, stop.clone()));
    let progress = tokio::spawn(progress(
        clock,
        live.clone(),
        Some((window, done.clone())),
        None,
    ));
    let running = clients.start(args, secret, clock, window, done, stop.clone());
    let publishing = match publishers {
        Some((transports, plan)) => {
            let (stats, abandoned) =
                run_publishers(transports, Arc::new(plan), clock, window, live, stop).await?;
            Some(Publishing::of(&stats, abandoned)?)
        }
        None => None,
    };
    let calls = running.finish().await;
    progress.abort();
    let server_cpu = match cpu {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    Ok(Measured {
        calls: calls?,
        publishing,
        server_cpu,
    })
}

/// Prints a progress line to stderr every [`PROGRESS_INTERVAL`] until aborted: events published
/// per second (of `fill` in all, for a fill) and, in the window, its phase and the calls per
/// second of each kind.
async fn progress(
    clock: RunClock,
    live: Arc<Live>,
    window: Option<(Window, Arc<calls::Done>)>,
    fill: Option<u64>,
) {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + PROGRESS_INTERVAL,
        PROGRESS_INTERVAL,
    );
    let started_ns = clock.now_ns();
    let (mut last_ns, mut last_sent) = (started_ns, 0);
    let mut last_calls = [0; 3];
    loop {
        ticker.tick().await;
        let now_ns = clock.now_ns();
        let seconds = (now_ns.saturating_sub(last_ns) as f64 / 1e9).max(1e-9);
        let sent = Live::count(&live.published);
        let mut line = format!(
            "[{:>6.1}s] published {:.0}/s",
            now_ns.saturating_sub(started_ns) as f64 / 1e9,
            sent.saturating_sub(last_sent) as f64 / seconds
        );
        // Writing to a String cannot fail.
        if let Some(total) = fill {
            let _ = write!(line, " | filled {sent} of {total}");
        }
        let _ = write!(line, " ({} errors)", Live::count(&live.publish_errors));
        if let Some((window, done)) = &window {
            let phase = if now_ns < window.measure_from_ns {
                "warmup"
            } else {
                "measuring"
            };
            let _ = write!(line, " | {phase}");
            for (call, last) in calls::Call::ALL.into_iter().zip(&mut last_calls) {
                let count = done.of(call);
                let per_s = count.saturating_sub(*last) as f64 / seconds;
                let _ = write!(line, " | {} {per_s:.0}/s", call.key());
                *last = count;
            }
        }
        eprintln!("{line}");
        (last_ns, last_sent) = (now_ns, sent);
    }
}
