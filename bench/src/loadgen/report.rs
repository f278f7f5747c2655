//! What a run reports: the table (default), the JSON object (`--json`), the progress line on
//! stderr every few seconds, and the verdict — whether the figures may be quoted.
//!
//! A run is a valid figure only if nothing was lost on the way: every stream opened and stayed
//! open, every publish succeeded, every expected delivery arrived, nobody else published. Any
//! of those is listed prominently at the top of the report and makes the process exit with 1.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{
    Live, LoadgenArgs, RunClock, Scenario, SubscriberTotals, Via, Window, amqp, code_name,
    cpu::CpuTime,
    handoffs::Handoffs,
    latency::{self, Quantiles},
    publisher::{FailureTally, PublishCounts, PublisherStats},
    storm::StormStats,
    subscriber::StreamEnd,
};

/// How often the progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Prints a progress line to stderr every [`PROGRESS_INTERVAL`] until aborted: elapsed time,
/// phase, streams, publishes and deliveries per second, and the p99 latency of the interval.
pub(super) async fn progress(clock: RunClock, live: Arc<Live>, streams: usize) {
    let Ok(mut recent) = latency::histogram() else {
        return;
    };
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + PROGRESS_INTERVAL,
        PROGRESS_INTERVAL,
    );
    let (mut last_ns, mut last_sent, mut last_received) = (clock.now_ns(), 0, 0);
    loop {
        ticker.tick().await;
        let now_ns = clock.now_ns();
        let seconds = (now_ns.saturating_sub(last_ns) as f64 / 1e9).max(1e-9);
        let received = live
            .latency
            .take_recent(&mut recent)
            .unwrap_or(last_received);
        let sent = Live::count(&live.published);
        let phase = match live.window.get() {
            None if Live::count(&live.settled) < streams as u64 => "opening",
            None => "ready",
            Some(w) if now_ns < w.measure_from_ns => "warmup",
            Some(w) if now_ns < w.until_ns => "measuring",
            Some(_) => "draining",
        };
        let p99 = if recent.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2} ms", recent.value_at_quantile(0.99) as f64 / 1000.0)
        };
        eprintln!(
            "[{:>6.1}s] {phase:<9} | streams {}/{streams} open, {} failed, {} dropped | sent {:.0}/s \
             ({} errors) | received {:.0}/s | p99 {p99}",
            now_ns as f64 / 1e9,
            Live::count(&live.opened),
            Live::count(&live.open_failed),
            Live::count(&live.dropped),
            sent.saturating_sub(last_sent) as f64 / seconds,
            Live::count(&live.publish_errors),
            received.saturating_sub(last_received) as f64 / seconds,
        );
        recent.reset();
        (last_ns, last_sent, last_received) = (now_ns, sent, received);
    }
}

/// Everything the report is made from.
pub(super) struct Inputs<'a> {
    /// The arguments of the run.
    pub args: &'a LoadgenArgs,
    /// The command line as typed.
    pub command: String,
    /// When publishing happened (none for `idle`, or when no stream opened).
    pub window: Option<Window>,
    /// When the publishers actually finished (earlier than the window's end if interrupted).
    pub publishing_ended_ns: Option<u64>,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// How long opening the streams (to their first messages) took.
    pub open_ns: u64,
    /// The live counters and the latency recorder.
    pub live: &'a Live,
    /// What each stream saw.
    pub totals: SubscriberTotals,
    /// What each publisher did.
    pub publishers: Vec<PublisherStats>,
    /// Publishers that did not finish in time and whose counts are missing.
    pub abandoned_publishers: usize,
    /// Server RSS before the streams opened, bytes.
    pub rss_before: Option<u64>,
    /// Server RSS at the end (after settling, or after the drain), bytes.
    pub rss_after: Option<u64>,
    /// The largest RSS sampled, bytes.
    pub rss_peak: Option<u64>,
    /// The server's CPU time in the measurement window.
    pub server_cpu: Option<CpuTime>,
    /// The same for each `--also-server-pid`.
    pub also_server_cpu: Vec<Option<CpuTime>>,
    /// `resume-storm`: what the storm did.
    pub storm: Option<StormStats>,
}

/// Failures by kind, in one line.
pub(super) fn describe(tallies: &[FailureTally]) -> String {
    tallies
        .iter()
        .map(|t| format!("{} ×{}: {}", t.code, t.count, t.example))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Failures by kind, as the JSON reports list them.
pub(super) fn tallies_json(tallies: &[FailureTally]) -> Value {
    tallies
        .iter()
        .map(|t| json!({"code": t.code, "count": t.count, "example": t.example}))
        .collect()
}

struct Streams {
    requested: u64,
    opened: u64,
    open_failed: u64,
    first_messages: u64,
    dropped: u64,
    lost_tasks: u64,
    open_failures: Vec<FailureTally>,
    drops: Vec<FailureTally>,
    caught_up: u64,
    heartbeats: u64,
    gaps: u64,
    foreign: u64,
    unknown: u64,
    /// Events the slow streams (`--slow-subscribers`) read.
    slow_events: u64,
}

impl Streams {
    fn of(requested: usize, totals: &SubscriberTotals) -> Self {
        let mut streams = Streams {
            requested: requested as u64,
            opened: 0,
            open_failed: 0,
            first_messages: 0,
            dropped: 0,
            lost_tasks: totals.lost_tasks,
            open_failures: Vec::new(),
            drops: Vec::new(),
            caught_up: 0,
            heartbeats: 0,
            gaps: 0,
            foreign: 0,
            unknown: 0,
            slow_events: 0,
        };
        for outcome in &totals.outcomes {
            streams.slow_events += outcome.slow_events;
            streams.caught_up += outcome.caught_up;
            streams.heartbeats += outcome.heartbeats;
            streams.gaps += outcome.gaps;
            streams.foreign += outcome.foreign;
            streams.unknown += outcome.unknown;
            streams.first_messages += u64::from(outcome.got_first_message);
            match &outcome.end {
                StreamEnd::OpenFailed { code, message } => {
                    streams.open_failed += 1;
                    FailureTally::add_to(&mut streams.open_failures, &code_name(*code), 1, message);
                }
                StreamEnd::Stopped => streams.opened += 1,
                StreamEnd::Dropped { code, message } => {
                    streams.opened += 1;
                    streams.dropped += 1;
                    FailureTally::add_to(&mut streams.drops, &code_name(*code), 1, message);
                }
                StreamEnd::Closed => {
                    streams.opened += 1;
                    streams.dropped += 1;
                    FailureTally::add_to(&mut streams.drops, "ended without status", 1, "");
                }
            }
        }
        streams
    }
}

/// What the publishers did, added up.
pub(super) struct Publishing {
    pub(super) counts: PublishCounts,
    abandoned: usize,
    failures: Vec<FailureTally>,
    call: Option<Quantiles>,
    lag: Option<Quantiles>,
}

impl Publishing {
    /// The publishers' counts, failures and call times, added up.
    pub(super) fn of(stats: &[PublisherStats], abandoned: usize) -> anyhow::Result<Self> {
        let mut call = latency::histogram()?;
        let mut lag = latency::histogram()?;
        let mut publishing = Publishing {
            counts: PublishCounts::default(),
            abandoned,
            failures: Vec::new(),
            call: None,
            lag: None,
        };
        for s in stats {
            publishing.counts.add(&s.counts);
            for FailureTally {
                code,
                count,
                example,
            } in &s.failures
            {
                FailureTally::add_to(&mut publishing.failures, code, *count, example);
            }
            latency::merge(&mut call, &s.call_us)?;
            latency::merge(&mut lag, &s.lag_us)?;
        }
        publishing.call = Quantiles::of(&call);
        publishing.lag = Quantiles::of(&lag);
        Ok(publishing)
    }

    /// What makes the publishing unquotable.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let counts = &self.counts;
        if counts.ok_measured == 0 {
            problems.push("nothing was published in the measurement window".to_owned());
        }
        if counts.errors > 0 {
            problems.push(format!(
                "{} publish calls failed ({})",
                counts.errors,
                describe(&self.failures)
            ));
        }
        if self.abandoned > 0 {
            problems.push(format!(
                "{} publishers did not finish in time; their counts are missing",
                self.abandoned
            ));
        }
        if counts.unsent_measured > 0 {
            problems.push(format!(
                "{} events due in the measurement window were never sent: the publishers fell \
                 behind the timetable (rate too high for this setup, or the server stalled)",
                counts.unsent_measured
            ));
        }
        if counts.duplicates > 0 {
            problems.push(format!(
                "{} publishes were answered as duplicates",
                counts.duplicates
            ));
        }
        problems
    }

    /// The JSON object of the report's `publish`; `per_s` is the measured events per second.
    pub(super) fn to_json(&self, per_s: f64) -> Value {
        json!({
            "ok": self.counts.ok,
            "ok_measured": self.counts.ok_measured,
            "per_s": per_s,
            "errors": self.counts.errors,
            "errors_measured": self.counts.errors_measured,
            "duplicates": self.counts.duplicates,
            "unsent_measured": self.counts.unsent_measured,
            "abandoned_publishers": self.abandoned,
            "failures": tallies_json(&self.failures),
            "call_ms": quantiles_json(self.call.as_ref()),
            "lag_ms": quantiles_json(self.lag.as_ref()),
        })
    }
}

/// A latency summary as the JSON reports give it (ms), or `null`.
pub(super) fn quantiles_json(quantiles: Option<&Quantiles>) -> Value {
    match quantiles {
        Some(q) => json!({
            "count": q.count, "p50": q.p50_ms, "p99": q.p99_ms, "p99_9": q.p999_ms, "max": q.max_ms,
        }),
        None => Value::Null,
    }
}

struct Delivery {
    expected: u64,
    received: u64,
    received_total: u64,
}

impl Delivery {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    fn extra(&self) -> u64 {
        self.received.saturating_sub(self.expected)
    }
}

/// The report of one run.
pub(super) struct Report {
    scenario: Scenario,
    via: Via,
    command: String,
    parameters: Value,
    rate: u64,
    interrupted: bool,
    measured_seconds: f64,
    open_seconds: f64,
    streams: Streams,
    publishing: Option<Publishing>,
    delivery: Option<Delivery>,
    latency: Option<Quantiles>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    rss_peak: Option<u64>,
    rss_per_stream: Option<f64>,
    server_cpu: Option<CpuTime>,
    also_server_cpu: Vec<Option<CpuTime>>,
    storm: Option<StormStats>,
    p99_target_ms: Option<f64>,
    problems: Vec<String>,
}

impl Report {
    /// Computes the figures and checks whether they are valid.
    pub(super) fn build(inputs: Inputs<'_>) -> anyhow::Result<Self> {
        let args = inputs.args;
        let streams = Streams::of(args.subscribers, &inputs.totals);
        let recorded = inputs.live.latency.recorded()?;
        let measured_seconds = match (inputs.window, inputs.publishing_ended_ns) {
            (Some(window), Some(ended_ns)) => {
                // A completed run measured its whole window (a rated publisher finishes as soon
                // as its last event is due, a hair before the window closes); an interrupted
                // one, until it stopped.
                let end_ns = if inputs.interrupted {
                    ended_ns.min(window.until_ns)
                } else {
                    window.until_ns
                };
                end_ns.saturating_sub(window.measure_from_ns) as f64 / 1e9
            }
            _ => 0.0,
        };
        let publishing = match inputs.window {
            Some(_) => Some(Publishing::of(
                &inputs.publishers,
                inputs.abandoned_publishers,
            )?),
            None => None,
        };
        let delivery = publishing.as_ref().map(|p| Delivery {
            // A per-user event has one recipient; a firehose event reaches every live stream.
            expected: match args.scenario {
                // Slow streams are out of the delivery figures (they cannot keep up).
                Scenario::Firehose => {
                    p.counts.ok_measured
                        * streams
                            .first_messages
                            .saturating_sub(args.slow_subscribers as u64)
                }
                Scenario::PerUser
                | Scenario::Idle
                | Scenario::Replay
                | Scenario::ResumeStorm
                | Scenario::Inbox
                | Scenario::Conflation => p.counts.ok_measured,
            },
            received: recorded.received_measured,
            received_total: recorded.received,
        });
        let rss_peak = [inputs.rss_before, inputs.rss_after, inputs.rss_peak]
            .into_iter()
            .flatten()
            .max();
        // Only an idle run isolates what streams cost: after a load run, "after" also holds
        // whatever the event path allocated.
        let rss_per_stream = match (inputs.rss_before, inputs.rss_after) {
            (Some(before), Some(after))
                if args.scenario == Scenario::Idle && streams.first_messages > 0 =>
            {
                Some((after as f64 - before as f64) / streams.first_messages as f64)
            }
            _ => None,
        };
        let mut parameters = json!({
            "server": args.server,
            "also_servers": args.also_servers,
            "via": args.via.name(),
            "subscribers": args.subscribers,
            "connections": args.connections.min(args.subscribers),
            "publishers": args.publishers,
            "publish_window": args.publish_window(),
            "rate": args.rate,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": args.duration.as_secs_f64(),
            "drain_s": args.drain.as_secs_f64(),
            "settle_s": args.settle.as_secs_f64(),
            "open_concurrency": args.open_concurrency,
            "slow_subscribers": args.slow_subscribers,
            "slow_read_delay_ms": args.slow_read_delay.as_secs_f64() * 1000.0,
            "event_type": args.event_type,
            "server_pid": args.server_pid,
        });
        if args.scenario == Scenario::ResumeStorm {
            parameters["resumes"] = args.resumes.into();
            parameters["journal_events"] = args.journal_events.into();
        }
        if args.via == Via::Grpc {
            parameters["publish_mode"] = format!("{:?}", args.publish_mode).to_lowercase().into();
        }
        if args.via == Via::Amqp {
            parameters["amqp_url"] = amqp::redact(&args.amqp_url).into();
            parameters["exchange"] = args.exchange.clone().into();
        }
        let mut report = Report {
            scenario: args.scenario,
            via: args.via,
            command: inputs.command,
            parameters,
            rate: args.rate,
            interrupted: inputs.interrupted,
            measured_seconds,
            open_seconds: inputs.open_ns as f64 / 1e9,
            streams,
            publishing,
            delivery,
            latency: Quantiles::of(&recorded.measured),
            rss_before: inputs.rss_before,
            rss_after: inputs.rss_after,
            rss_peak,
            rss_per_stream,
            server_cpu: inputs.server_cpu,
            also_server_cpu: inputs.also_server_cpu,
            storm: inputs.storm,
            p99_target_ms: args.p99_target_ms,
            problems: Vec::new(),
        };
        report.problems = report.find_problems();
        Ok(report)
    }

    /// Everything that makes the figures unquotable.
    fn find_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let s = &self.streams;
        if self.interrupted {
            problems.push("interrupted (Ctrl-C) before the end".to_owned());
        }
        if s.dropped > 0 {
            problems.push(format!(
                "{} STREAMS DROPPED by the server ({})",
                s.dropped,
                describe(&s.drops)
            ));
        }
        if s.open_failed > 0 {
            problems.push(format!(
                "{} of {} streams failed to open ({})",
                s.open_failed,
                s.requested,
                describe(&s.open_failures)
            ));
        }
        let silent = s.opened.saturating_sub(s.first_messages);
        if silent > 0 {
            problems.push(format!(
                "{silent} streams opened but sent no first message (CaughtUp) within --open-timeout"
            ));
        }
        if s.lost_tasks > 0 {
            problems.push(format!("{} subscriber tasks did not report", s.lost_tasks));
        }
        if s.foreign > 0 {
            problems.push(format!(
                "{} events from another publisher arrived: the server was not ours alone",
                s.foreign
            ));
        }
        if let Some(p) = &self.publishing {
            problems.extend(p.problems());
        }
        if let Some(d) = &self.delivery {
            if d.lost() > 0 {
                problems.push(format!(
                    "{} of {} expected deliveries were lost",
                    d.lost(),
                    d.expected
                ));
            }
            if d.extra() > 0 {
                problems.push(format!(
                    "{} more deliveries than expected (a failed publish that was applied?)",
                    d.extra()
                ));
            }
        }
        if self.scenario == Scenario::Idle && self.rss_per_stream.is_none() {
            problems
                .push("no memory figure: pass --server-pid of a server on this machine".to_owned());
        }
        if self.scenario != Scenario::Idle && self.publishing.is_none() {
            problems.push("nothing was published: no stream was open".to_owned());
        }
        if let Some(storm) = &self.storm {
            if storm.completed == 0 {
                problems.push(
                    "no resume of the storm completed while publishing: the storm did not \
                     load the server for the whole window (a shorter journal, or a longer run)"
                        .to_owned(),
                );
            }
            if storm.failed > 0 {
                problems.push(format!(
                    "{} resumes of the storm failed: {}",
                    storm.failed,
                    storm.failures.join("; ")
                ));
            }
            if storm.events > 0 {
                problems.push(format!(
                    "the storm's replays delivered {} events: they were to select nothing",
                    storm.events
                ));
            }
        }
        problems
    }

    /// Whether the p99 met `--p99-target-ms`: `None` when no target was given.
    fn p99_met(&self) -> Option<bool> {
        let target = self.p99_target_ms?;
        Some(self.latency.is_some_and(|l| l.p99_ms <= target))
    }

    /// Prints the report to stdout.
    pub(super) fn print(&self, as_json: bool) -> anyhow::Result<()> {
        if as_json {
            println!("{}", serde_json::to_string(&self.to_json())?);
        } else {
            print!("{}", self.to_table()?);
        }
        Ok(())
    }

    /// `Ok` when the figures may be quoted; otherwise why not (exit code 1).
    pub(super) fn verdict(&self) -> anyhow::Result<()> {
        if !self.problems.is_empty() {
            anyhow::bail!("not a valid figure: {}", self.problems.join("; "));
        }
        if self.p99_met() == Some(false) {
            anyhow::bail!(
                "p99 latency missed the target of {} ms",
                self.p99_target_ms.unwrap_or_default()
            );
        }
        Ok(())
    }

    fn per_second(&self, count: u64) -> f64 {
        if self.measured_seconds > 0.0 {
            count as f64 / self.measured_seconds
        } else {
            0.0
        }
    }

    /// The server's CPU time per event published in the window, µs.
    fn cpu_per_event_us(&self) -> Option<f64> {
        self.per_event_us(self.server_cpu.as_ref()?)
    }

    /// `cpu` per event published in the window, µs.
    fn per_event_us(&self, cpu: &CpuTime) -> Option<f64> {
        self.per_event(cpu.seconds * 1e6)
    }

    /// `total` over the window divided by the events published in it.
    fn per_event(&self, total: f64) -> Option<f64> {
        let events = self.publishing.as_ref()?.counts.ok_measured;
        (events > 0).then(|| total / events as f64)
    }

    /// Each thread name's CPU time in the window, in µs per event published (`None` when no
    /// event was).
    fn cpu_us_per_event_by_thread<'a>(
        &self,
        handoffs: &'a Handoffs,
        ticks_per_second: u64,
    ) -> BTreeMap<&'a str, Option<f64>> {
        handoffs
            .cpu_ticks_by_thread_name
            .iter()
            .map(|(name, ticks)| {
                let us = *ticks as f64 * 1e6 / ticks_per_second.max(1) as f64;
                (name.as_str(), self.per_event(us))
            })
            .collect()
    }

    /// The server's context switches, write calls and CPU by thread in the window, per event
    /// published.
    fn handoffs_json(&self, handoffs: &Handoffs, ticks_per_second: u64) -> Value {
        let cpu_us_per_event_by_thread =
            self.cpu_us_per_event_by_thread(handoffs, ticks_per_second);
        json!({
            "context_switches": handoffs.context_switches,
            "context_switches_per_event": self.per_event(handoffs.context_switches as f64),
            "context_switches_by_thread": handoffs.by_thread_name,
            "cpu_us_per_event_by_thread": cpu_us_per_event_by_thread,
            "exited_threads": handoffs.exited_threads,
            "write_calls": handoffs.write_calls,
            "write_calls_per_event": self.per_event(handoffs.write_calls as f64),
        })
    }

    /// How the events reached the server, in words.
    fn ingest(&self) -> String {
        match self.via {
            Via::Grpc => "Publish RPC, one unary call per event".to_owned(),
            Via::Amqp => format!(
                "AMQP: exchange {} at {}, routing key = event type, persistent, publisher \
                 confirms (an event counts as sent once confirmed)",
                self.parameters["exchange"].as_str().unwrap_or_default(),
                self.parameters["amqp_url"].as_str().unwrap_or_default()
            ),
        }
    }

    fn latency_basis(&self) -> &'static str {
        if self.rate > 0 {
            "scheduled send instant, open loop"
        } else {
            "actual send instant, closed loop"
        }
    }

    fn to_json(&self) -> Value {
        let s = &self.streams;
        json!({
            "scenario": self.scenario.name(),
            "via": self.via.name(),
            "command": self.command,
            "parameters": self.parameters,
            "valid": self.problems.is_empty(),
            "problems": self.problems,
            "interrupted": self.interrupted,
            "measured_s": self.measured_seconds,
            "streams": {
                "requested": s.requested,
                "opened": s.opened,
                "open_failed": s.open_failed,
                "first_messages": s.first_messages,
                "dropped": s.dropped,
                "open_s": self.open_seconds,
                "open_failures": tallies_json(&s.open_failures),
                "drops": tallies_json(&s.drops),
                "slow_events_read": s.slow_events,
            },
            "messages": {
                "caught_up": s.caught_up,
                "heartbeats": s.heartbeats,
                "gaps": s.gaps,
                "foreign": s.foreign,
                "unknown": s.unknown,
            },
            "publish": self.publishing.as_ref()
                .map(|p| p.to_json(self.per_second(p.counts.ok_measured))),
            "delivery": self.delivery.as_ref().map(|d| json!({
                "expected": d.expected,
                "received": d.received,
                "received_including_warmup": d.received_total,
                "lost": d.lost(),
                "extra": d.extra(),
                "per_s": self.per_second(d.received),
            })),
            "latency_ms": quantiles_json(self.latency.as_ref()),
            "latency_from": self.publishing.as_ref().map(|_| self.latency_basis()),
            "p99_target_ms": self.p99_target_ms,
            "p99_met": self.p99_met(),
            "rss_bytes": {
                "before": self.rss_before,
                "after": self.rss_after,
                "peak": self.rss_peak,
                "per_stream": self.rss_per_stream,
            },
            "server_cpu": self.server_cpu.as_ref().map(|cpu| json!({
                "seconds": cpu.seconds,
                "window_s": cpu.window_seconds,
                "cores": cpu.seconds / cpu.window_seconds.max(1e-9),
                "per_event_us": self.cpu_per_event_us(),
                "clock_ticks_per_s": cpu.ticks_per_second,
                "handoffs": cpu.handoffs.as_ref().map(|handoffs| self.handoffs_json(handoffs, cpu.ticks_per_second)),
            })),
            "also_server_cpu": self.also_server_cpu.iter().map(|cpu| cpu.as_ref().map(|cpu| json!({
                "seconds": cpu.seconds,
                "cores": cpu.seconds / cpu.window_seconds.max(1e-9),
                "per_event_us": self.per_event_us(cpu),
                "handoffs": cpu.handoffs.as_ref().map(|handoffs| self.handoffs_json(handoffs, cpu.ticks_per_second)),
            }))).collect::<Vec<_>>(),
            "storm": self.storm.as_ref().map(|storm| json!({
                "resumes": self.parameters["resumes"],
                "journal_events": self.parameters["journal_events"],
                "completed": storm.completed,
                "failed": storm.failed,
                "events": storm.events,
                "replay_ms": storm_quantiles(storm),
            })),
        })
    }

    fn to_table(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        let s = &self.streams;
        let p = &self.parameters;
        writeln!(out, "== notify-bench: {} ==", self.scenario.name())?;
        writeln!(out, "command      {}", self.command)?;
        write!(
            out,
            "parameters   {} subscribers over {} connections",
            p["subscribers"], p["connections"]
        )?;
        if self.scenario != Scenario::Idle {
            let rate = match self.rate {
                0 => "as fast as possible".to_owned(),
                rate => format!("rate {rate}/s"),
            };
            write!(
                out,
                "; {} publishers × window {}; {rate}; warmup {}s, duration {}s, drain {}s",
                p["publishers"], p["publish_window"], p["warmup_s"], p["duration_s"], p["drain_s"]
            )?;
        } else {
            write!(out, "; settle {}s", p["settle_s"])?;
        }
        writeln!(
            out,
            "; event type {}",
            p["event_type"].as_str().unwrap_or_default()
        )?;
        if !self.problems.is_empty() {
            writeln!(out, "!! NOT A VALID FIGURE:")?;
            for problem in &self.problems {
                writeln!(out, "!!   - {problem}")?;
            }
        }
        if self.scenario != Scenario::Idle {
            writeln!(out, "ingest       via {}", self.ingest())?;
        }
        writeln!(
            out,
            "streams      {} requested, {} opened, {} got their first message in {:.2} s, {} failed to open, {} DROPPED",
            s.requested, s.opened, s.first_messages, self.open_seconds, s.open_failed, s.dropped
        )?;
        if let Some(pb) = &self.publishing {
            write!(
                out,
                "publish      {} ok in {:.1} s = {:.1} events/s; {} errors",
                pb.counts.ok_measured,
                self.measured_seconds,
                self.per_second(pb.counts.ok_measured),
                pb.counts.errors
            )?;
            if pb.counts.unsent_measured > 0 {
                write!(out, "; {} due but NEVER SENT", pb.counts.unsent_measured)?;
            }
            if let Some(call) = pb.call {
                let what = match self.via {
                    Via::Grpc => "call",
                    Via::Amqp => "confirm",
                };
                write!(
                    out,
                    "; {what} p50 {:.3} ms, p99 {:.3} ms",
                    call.p50_ms, call.p99_ms
                )?;
            }
            if let Some(lag) = pb.lag.filter(|_| self.rate > 0) {
                write!(
                    out,
                    "; behind timetable p99 {:.3} ms, max {:.3} ms",
                    lag.p99_ms, lag.max_ms
                )?;
            }
            writeln!(out)?;
        }
        if let Some(storm) = &self.storm {
            write!(
                out,
                "storm        {} streams resuming over {} stored events: {} replays completed, {} failed",
                self.parameters["resumes"],
                self.parameters["journal_events"],
                storm.completed,
                storm.failed
            )?;
            if let Some(q) = storm_quantiles(storm) {
                write!(
                    out,
                    "; time to CaughtUp p50 {:.0} ms, max {:.0} ms",
                    q["p50"].as_f64().unwrap_or_default(),
                    q["max"].as_f64().unwrap_or_default()
                )?;
            }
            writeln!(out)?;
        }
        if let Some(d) = &self.delivery {
            writeln!(
                out,
                "delivery     {} of {} expected ({} lost) = {:.1} deliveries/s",
                d.received,
                d.expected,
                d.lost(),
                self.per_second(d.received)
            )?;
        }
        if self.publishing.is_some() {
            match self.latency {
                Some(l) => writeln!(
                    out,
                    "latency      p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms   ({} samples; from the {})",
                    l.p50_ms,
                    l.p99_ms,
                    l.p999_ms,
                    l.max_ms,
                    l.count,
                    self.latency_basis()
                )?,
                None => writeln!(out, "latency      no measured deliveries")?,
            }
        }
        if let (Some(target), Some(met)) = (self.p99_target_ms, self.p99_met()) {
            let verdict = if met { "met" } else { "MISSED" };
            writeln!(out, "p99 target   {target:.3} ms: {verdict}")?;
        }
        if self.rss_before.is_some() || self.rss_after.is_some() {
            let mib = |bytes: Option<u64>| match bytes {
                Some(bytes) => format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
                None => "-".to_owned(),
            };
            write!(
                out,
                "server RSS   before {}, after {}, peak {}",
                mib(self.rss_before),
                mib(self.rss_after),
                mib(self.rss_peak)
            )?;
            if let Some(per_stream) = self.rss_per_stream {
                write!(
                    out,
                    "; {per_stream:.0} bytes per stream ((after - before) / {} streams)",
                    s.first_messages
                )?;
            }
            writeln!(out)?;
        }
        if let Some(cpu) = &self.server_cpu {
            write!(
                out,
                "server CPU   {:.2} s in the {:.1} s window ({:.0} % of one core)",
                cpu.seconds,
                cpu.window_seconds,
                100.0 * cpu.seconds / cpu.window_seconds.max(1e-9)
            )?;
            if let Some(per_event) = self.cpu_per_event_us() {
                write!(out, " = {per_event:.1} µs per published event")?;
            }
            writeln!(out)?;
            if let Some(handoffs) = &cpu.handoffs
                && let (Some(switches), Some(writes)) = (
                    self.per_event(handoffs.context_switches as f64),
                    self.per_event(handoffs.write_calls as f64),
                )
            {
                let busiest: Vec<String> = handoffs
                    .by_thread_name
                    .iter()
                    .map(|(name, n)| {
                        format!("{name} {:.2}", self.per_event(*n as f64).unwrap_or(0.0))
                    })
                    .collect();
                writeln!(
                    out,
                    "hand-offs    {switches:.2} context switches per event ({}), {writes:.2} write \
                     calls per event",
                    busiest.join(", ")
                )?;
                let cpu_by_thread: Vec<String> = self
                    .cpu_us_per_event_by_thread(handoffs, cpu.ticks_per_second)
                    .into_iter()
                    .filter_map(|(name, us)| Some(format!("{name} {:.0}", us?)))
                    .collect();
                writeln!(
                    out,
                    "             µs of CPU per event by thread: {}",
                    cpu_by_thread.join(", ")
                )?;
                if handoffs.exited_threads > 0 {
                    writeln!(
                        out,
                        "             {} threads exited in the window: their switches are not \
                         counted",
                        handoffs.exited_threads
                    )?;
                }
            }
        }
        writeln!(
            out,
            "messages     {} CaughtUp, {} Heartbeat, {} Gap, {} foreign events",
            s.caught_up, s.heartbeats, s.gaps, s.foreign
        )?;
        Ok(out)
    }
}

/// The median and the maximum of the storm's replay times, ms.
fn storm_quantiles(storm: &StormStats) -> Option<Value> {
    let times = &storm.replay_ms;
    let last = times.last()?;
    Some(json!({ "p50": times[times.len() / 2], "max": last }))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::super::code_name;

    #[test]
    fn status_codes_are_named_as_in_the_grpc_docs() {
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }
}
