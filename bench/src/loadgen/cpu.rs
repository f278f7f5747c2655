//! The server's CPU time over the measurement window, read from `/proc/<pid>/stat`, for the
//! "server CPU per event" figure: CPU seconds the server spent in the window divided by the
//! events published in it.
//!
//! `utime + stime` of a process covers all its threads and is counted in clock ticks. Ticks per
//! second is what `getconf CLK_TCK` prints: glibc's `sysconf(_SC_CLK_TCK)` takes it from the
//! `AT_CLKTCK` entry of the auxiliary vector the kernel gives every process, and this module reads
//! the same entry from `/proc/self/auxv` (no libc needed). It is 100 on Linux on every common
//! architecture, which is also the fallback. A tick is 10 ms, so over a 60 s window the figure is
//! good to well under 1 %; over a few seconds of light load it is coarse.
//!
//! Both readings are taken on the window's edges (when publishing of measured events starts and
//! stops), not when the server has finished processing them: a server that is behind at the end
//! still owes some CPU for the window's last events. At steady state that cancels out with the
//! warmup's events it was still processing at the start.

use std::{mem::size_of, time::Duration};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    RunClock, Window,
    handoffs::{self, Handoffs},
};

/// `AT_CLKTCK`, the auxiliary vector entry holding the clock ticks per second.
const AT_CLKTCK: usize = 17;
/// `USER_HZ` on Linux unless the kernel says otherwise.
const FALLBACK_TICKS_PER_SECOND: u64 = 100;

/// The CPU time a process spent in the measurement window.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CpuTime {
    /// User plus system CPU seconds, all threads.
    pub seconds: f64,
    /// The length of the window the CPU time was taken over, seconds.
    pub window_seconds: f64,
    /// The clock ticks per second the readings were converted with.
    pub ticks_per_second: u64,
    /// Its context switches and write calls over the same window, when `/proc` gave them.
    pub handoffs: Option<Handoffs>,
}

/// Reads the CPU time of `pid` at the start and at the end of the measurement window. Ends
/// early with `None` when `stop` is cancelled (the run was interrupted: a partial window would
/// not match the events counted) or when a reading fails.
pub(super) fn measure(
    pid: u32,
    clock: RunClock,
    window: Window,
    stop: CancellationToken,
) -> JoinHandle<Option<CpuTime>> {
    tokio::spawn(async move {
        let ticks_per_second = ticks_per_second();
        let read = || match read_ticks(pid) {
            Ok(ticks) => Some(ticks),
            Err(error) => {
                eprintln!("notify-bench: cannot read the server's CPU time: {error:#}");
                None
            }
        };
        let at = |ns| tokio::time::sleep_until(clock.instant_at(ns).into());
        tokio::select! {
            () = at(window.measure_from_ns) => {}
            () = stop.cancelled() => return None,
        }
        let start = read()?;
        let counters_start = read_counters(pid);
        tokio::select! {
            () = at(window.until_ns) => {}
            () = stop.cancelled() => return None,
        }
        let end = read()?;
        let counters_end = read_counters(pid);
        Some(CpuTime {
            seconds: end.saturating_sub(start) as f64 / ticks_per_second as f64,
            window_seconds: Duration::from_nanos(window.until_ns - window.measure_from_ns)
                .as_secs_f64(),
            ticks_per_second,
            handoffs: counters_start
                .zip(counters_end)
                .map(|(start, end)| start.until(&end)),
        })
    })
}

/// `pid`'s hand-off counters, or `None` (said once on stderr) when `/proc` refuses them: the
/// CPU figure stands without them.
fn read_counters(pid: u32) -> Option<handoffs::Counters> {
    handoffs::read(pid)
        .inspect_err(|error| {
            eprintln!("notify-bench: cannot read the server's context switches: {error:#}");
        })
        .ok()
}

/// The CPU time of a process over a phase that ends when it ends rather than at a set instant
/// (a fill): read when started and when stopped.
pub(super) struct Stopwatch {
    pid: u32,
    ticks: u64,
    counters: Option<handoffs::Counters>,
    started: std::time::Instant,
}

impl Stopwatch {
    /// Reads the CPU time of `pid` now.
    pub(super) fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            ticks: read_ticks(pid)?,
            counters: read_counters(pid),
            started: std::time::Instant::now(),
        })
    }

    /// The CPU time `pid` spent since [`Stopwatch::start`].
    pub(super) fn stop(self) -> anyhow::Result<CpuTime> {
        let ticks = read_ticks(self.pid)?;
        let ticks_per_second = ticks_per_second();
        let counters = read_counters(self.pid);
        Ok(CpuTime {
            seconds: ticks.saturating_sub(self.ticks) as f64 / ticks_per_second as f64,
            window_seconds: self.started.elapsed().as_secs_f64(),
            ticks_per_second,
            handoffs: self
                .counters
                .zip(counters)
                .map(|(start, end)| start.until(&end)),
        })
    }
}

/// `utime + stime` of process `pid`, in clock ticks.
pub(super) fn read_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {path} (is --server-pid {pid} a running process on this machine?)")
    })?;
    parse_cpu_ticks(&stat).with_context(|| format!("no utime/stime in {path}"))
}

/// `pid (comm) state ppid … utime stime …` → `utime + stime`. The command name may hold spaces
/// and parentheses, so fields are counted from the *last* `)`: after it come field 3 (state)
/// onwards, which puts utime (field 14) and stime (field 15) at 11 and 12.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second, as `getconf CLK_TCK` reports it (see the module docs).
fn ticks_per_second() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| auxv_value(&auxv, AT_CLKTCK))
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(FALLBACK_TICKS_PER_SECOND)
}

/// The value of entry `key` in an auxiliary vector: native-endian (key, value) word pairs.
fn auxv_value(auxv: &[u8], key: usize) -> Option<usize> {
    let word = |bytes: &[u8]| Some(usize::from_ne_bytes(bytes.try_into().ok()?));
    auxv.chunks_exact(2 * size_of::<usize>())
        .map(|pair| pair.split_at(size_of::<usize>()))
        .find_map(|(k, v)| (word(k)? == key).then(|| word(v)).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_process_name_with_spaces_and_parentheses() {
        // Fields 14 and 15 (utime 1234, stime 567); the name would shift a naive split by three.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1234 567 0 0 \
                    20 0 5 0 96427 3133440 357 18446744073709551615\n";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 567));
    }

    #[test]
    fn a_truncated_stat_line_has_no_cpu_time() {
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 4242"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis at all"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(read_ticks(std::process::id()).is_ok());
    }

    #[test]
    fn clock_ticks_come_from_the_auxiliary_vector() {
        let mut auxv = Vec::new();
        for (key, value) in [(6_usize, 4096_usize), (AT_CLKTCK, 250), (0, 0)] {
            auxv.extend_from_slice(&key.to_ne_bytes());
            auxv.extend_from_slice(&value.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(250));
        assert_eq!(auxv_value(&auxv, 99), None);
        // `getconf CLK_TCK` on any Linux box this runs on.
        assert_eq!(ticks_per_second(), 100);
    }
}
