//! The report of `--scenario inbox`: the JSON object (`--json`) or the table, and the verdict.
//!
//! The figures may be quoted only if the journal was filled to `--journal-events`, every publish
//! and every call succeeded, and every call due in the window was made (a client that fell
//! behind its timetable makes the run invalid, as a publisher does).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    super::{
        LoadgenArgs,
        cpu::CpuTime,
        latency::Quantiles,
        report::{describe, quantiles_json, tallies_json},
    },
    Fill, Measured,
    calls::CallStats,
};

/// Everything the report is made from.
pub(super) struct Summary<'a> {
    /// The arguments of the run.
    pub args: &'a LoadgenArgs,
    /// The command line as typed.
    pub command: String,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// The journal's head position at the start, after the fill, at the end.
    pub heads: [u64; 3],
    /// The fill, unless the journal held enough events already.
    pub fill: Option<Fill>,
    /// The window, unless `--fill-only` (or interrupted before).
    pub measured: Option<Measured>,
}

impl Summary<'_> {
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
        let problems = self.problems();
        anyhow::ensure!(
            problems.is_empty(),
            "not a valid figure: {}",
            problems.join("; ")
        );
        Ok(())
    }

    /// Everything that makes the figures unquotable.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interrupted {
            problems.push("interrupted (Ctrl-C) before the end".to_owned());
        }
        if let Some(fill) = &self.fill {
            problems.extend(
                fill.publishing
                    .problems()
                    .into_iter()
                    .map(|p| format!("fill: {p}")),
            );
        }
        let filled = self.heads[1];
        if filled < self.args.journal_events {
            problems.push(format!(
                "the journal holds {filled} events, fewer than --journal-events {}",
                self.args.journal_events
            ));
        }
        let Some(measured) = &self.measured else {
            return problems;
        };
        for calls in &measured.calls {
            let name = calls.call.rpc();
            if calls.ok_measured == 0 {
                problems.push(format!("no {name} call was answered in the window"));
            }
            if calls.errors > 0 {
                problems.push(format!(
                    "{} {name} calls failed ({})",
                    calls.errors,
                    describe(&calls.failures)
                ));
            }
            if calls.unsent_measured > 0 {
                problems.push(format!(
                    "{} {name} calls due in the window were never made: the clients fell behind \
                     their timetable (rate too high for --inbox-clients, or the server stalled)",
                    calls.unsent_measured
                ));
            }
        }
        if let Some(publishing) = &measured.publishing {
            problems.extend(publishing.problems());
        }
        problems
    }

    fn window_seconds(&self) -> f64 {
        self.args.duration.as_secs_f64()
    }

    /// Server CPU per event published in the window, µs (with `--inbox-publish`).
    fn cpu_per_event_us(&self, measured: &Measured) -> Option<f64> {
        let events = measured.publishing.as_ref()?.counts.ok_measured;
        per_event(measured.server_cpu.as_ref()?, events)
    }

    /// Server CPU per call answered in the window, µs (without `--inbox-publish`: with it, the
    /// events' CPU would be counted to the calls).
    fn cpu_per_call_us(&self, measured: &Measured) -> Option<f64> {
        if measured.publishing.is_some() {
            return None;
        }
        let calls = measured.calls.iter().map(|c| c.ok_measured).sum();
        per_event(measured.server_cpu.as_ref()?, calls)
    }

    fn to_json(&self) -> Value {
        let args = self.args;
        let problems = self.problems();
        let [head_at_start, head_after_fill, head_at_end] = self.heads;
        json!({
            "scenario": "inbox",
            "command": self.command,
            "parameters": {
                "server": args.server,
                "journal_events": args.journal_events,
                "users": args.users,
                "publishers": args.publishers,
                "publish_window": args.publish_window(),
                "rate": args.rate,
                "inbox_publish": args.inbox_publish,
                "fill_only": args.fill_only,
                "counts_rate": args.inbox_counts_rate,
                "list_rate": args.inbox_list_rate,
                "mark_rate": args.inbox_mark_rate,
                "clients_per_call": args.inbox_clients,
                "page": args.inbox_page,
                "warmup_s": args.warmup.as_secs_f64(),
                "duration_s": args.duration.as_secs_f64(),
                "event_type": args.event_type,
                "server_pid": args.server_pid,
            },
            "valid": problems.is_empty(),
            "problems": problems,
            "interrupted": self.interrupted,
            "journal": {
                "head_at_start": head_at_start,
                "head_after_fill": head_after_fill,
                "head_at_end": head_at_end,
            },
            "fill": self.fill.as_ref().map(|fill| json!({
                "seconds": fill.seconds,
                "publish": fill.publishing.to_json(per_second(fill.publishing.counts.ok, fill.seconds)),
                "server_cpu": fill.server_cpu.as_ref().map(|cpu| cpu_json(cpu, per_event(cpu, fill.publishing.counts.ok), None)),
            })),
            "measured_s": self.measured.as_ref().map(|_| self.window_seconds()),
            "calls": self.measured.as_ref().map(|measured| {
                measured
                    .calls
                    .iter()
                    .map(|calls| (calls.call.key().to_owned(), self.calls_json(calls)))
                    .collect::<serde_json::Map<_, _>>()
            }),
            "publish": self.measured.as_ref().and_then(|m| m.publishing.as_ref()).map(|p| {
                p.to_json(per_second(p.counts.ok_measured, self.window_seconds()))
            }),
            "server_cpu": self.measured.as_ref().and_then(|measured| {
                let cpu = measured.server_cpu.as_ref()?;
                Some(cpu_json(cpu, self.cpu_per_event_us(measured), self.cpu_per_call_us(measured)))
            }),
        })
    }

    fn calls_json(&self, calls: &CallStats) -> Value {
        json!({
            "rpc": calls.call.rpc(),
            "rate": calls.call.rate(self.args),
            "clients": self.args.inbox_clients,
            "ok": calls.ok,
            "ok_measured": calls.ok_measured,
            "per_s": per_second(calls.ok_measured, self.window_seconds()),
            "errors": calls.errors,
            "unsent_measured": calls.unsent_measured,
            "failures": tallies_json(&calls.failures),
            "latency_ms": quantiles_json(Quantiles::of(&calls.latency_us).as_ref()),
            "latency_from": "scheduled call instant (the actual send when the client was idle then), open loop",
            "service_ms": quantiles_json(Quantiles::of(&calls.service_us).as_ref()),
            "items_per_call": items_per_call(calls),
        })
    }

    fn to_table(&self) -> Result<String, std::fmt::Error> {
        let args = self.args;
        let mut out = String::new();
        let [head_at_start, head_after_fill, head_at_end] = self.heads;
        writeln!(out, "== notify-bench: inbox ==")?;
        writeln!(out, "command      {}", self.command)?;
        writeln!(
            out,
            "parameters   {} events over {} users; {} publishers (PublishStream) × window {}; \
             {} clients per call; warmup {}s, duration {}s",
            args.journal_events,
            args.users,
            args.publishers,
            args.publish_window(),
            args.inbox_clients,
            args.warmup.as_secs_f64(),
            args.duration.as_secs_f64()
        )?;
        let problems = self.problems();
        if !problems.is_empty() {
            writeln!(out, "!! NOT A VALID FIGURE:")?;
            for problem in &problems {
                writeln!(out, "!!   - {problem}")?;
            }
        }
        writeln!(
            out,
            "journal      head {head_at_start} at the start, {head_after_fill} after the fill, \
             {head_at_end} at the end"
        )?;
        match &self.fill {
            Some(fill) => {
                let counts = &fill.publishing.counts;
                write!(
                    out,
                    "fill         {} events in {:.1} s = {:.0} events/s; {} errors",
                    counts.ok,
                    fill.seconds,
                    per_second(counts.ok, fill.seconds),
                    counts.errors
                )?;
                if let Some(us) = fill
                    .server_cpu
                    .as_ref()
                    .and_then(|cpu| per_event(cpu, counts.ok))
                {
                    write!(out, "; server CPU {us:.1} µs per event")?;
                }
                writeln!(out)?;
            }
            None => writeln!(out, "fill         none: the journal held enough events")?,
        }
        let Some(measured) = &self.measured else {
            return Ok(out);
        };
        for calls in &measured.calls {
            write!(
                out,
                "{:<12} {} at {}/s: {} ok, {} errors",
                calls.call.key(),
                calls.call.rpc(),
                calls.call.rate(args),
                calls.ok_measured,
                calls.errors
            )?;
            if let Some(l) = Quantiles::of(&calls.latency_us) {
                write!(
                    out,
                    "; p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                    l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                )?;
            }
            if let Some(items) = items_per_call(calls) {
                write!(out, "; {items:.1} items per call")?;
            }
            writeln!(out)?;
        }
        if let Some(publishing) = &measured.publishing {
            let counts = &publishing.counts;
            writeln!(
                out,
                "publish      {} events in the window = {:.0} events/s; {} errors",
                counts.ok_measured,
                per_second(counts.ok_measured, self.window_seconds()),
                counts.errors
            )?;
        }
        if let Some(cpu) = &measured.server_cpu {
            write!(
                out,
                "server CPU   {:.2} s in the {:.1} s window ({:.0} % of one core)",
                cpu.seconds,
                cpu.window_seconds,
                100.0 * cpu.seconds / cpu.window_seconds.max(1e-9)
            )?;
            if let Some(us) = self.cpu_per_event_us(measured) {
                write!(out, " = {us:.1} µs per published event")?;
            }
            if let Some(us) = self.cpu_per_call_us(measured) {
                write!(out, " = {us:.1} µs per call")?;
            }
            writeln!(out)?;
        }
        Ok(out)
    }
}

/// Items per measured call: a `ListInbox` page's, or what a mark changed; `None` for counts.
fn items_per_call(calls: &CallStats) -> Option<f64> {
    (calls.call != super::calls::Call::Counts && calls.ok_measured > 0)
        .then(|| calls.items as f64 / calls.ok_measured as f64)
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `cpu` per event (or call), µs.
fn per_event(cpu: &CpuTime, events: u64) -> Option<f64> {
    (events > 0).then(|| cpu.seconds * 1e6 / events as f64)
}

fn cpu_json(cpu: &CpuTime, per_event_us: Option<f64>, per_call_us: Option<f64>) -> Value {
    json!({
        "seconds": cpu.seconds,
        "window_s": cpu.window_seconds,
        "cores": cpu.seconds / cpu.window_seconds.max(1e-9),
        "per_event_us": per_event_us,
        "per_call_us": per_call_us,
        "clock_ticks_per_s": cpu.ticks_per_second,
    })
}
