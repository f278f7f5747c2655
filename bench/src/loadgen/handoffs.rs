//! The server's hand-offs over the measurement window, read from `/proc/<pid>`: context
//! switches (how often one of its threads went off the CPU, summed over its threads) and write
//! system calls (sockets and the journal's file alike), and each thread's CPU time. Divided by
//! the events published in the window, they show how many times an event parks and wakes a
//! thread, how many writes it costs and which thread spends its CPU: the figures a change to
//! the event path's threads must move.
//!
//! Context switches are counted per thread (`/proc/<pid>/task/<tid>/status`:
//! `voluntary_ctxt_switches` — the thread waited: a futex, `epoll_wait`, a disk flush — and
//! `nonvoluntary_ctxt_switches` — the scheduler took the CPU away). A thread that exits inside
//! the window takes its count with it (the kernel keeps no per-process total in `/proc`), so
//! the reading says how many did; tokio's blocking threads exit after ten idle seconds, which
//! is how a server loses one. A thread's CPU time is `utime + stime` of
//! `/proc/<pid>/task/<tid>/stat`, in clock ticks, and is lost the same way. Write calls come
//! from `/proc/<pid>/io` (`syscw`), which counts exited threads too.

use std::{collections::BTreeMap, fs};

use anyhow::Context as _;

/// One reading of a process's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counters {
    /// Per thread id: its name, context switches and CPU time (clock ticks) so far.
    threads: BTreeMap<u32, Thread>,
    /// Write system calls so far (all threads, exited ones included).
    write_calls: u64,
}

/// One thread in a reading.
#[derive(Debug, Clone, Default, PartialEq)]
struct Thread {
    name: String,
    switches: u64,
    cpu_ticks: u64,
}

/// What a process did between two readings.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Handoffs {
    /// Context switches of every thread alive at the end (a thread that started in the window
    /// counts from zero).
    pub context_switches: u64,
    /// The same by thread name (tokio's workers and blocking threads share one name).
    pub by_thread_name: BTreeMap<String, u64>,
    /// CPU time (utime + stime, clock ticks) by thread name, of the threads alive at the end.
    pub cpu_ticks_by_thread_name: BTreeMap<String, u64>,
    /// Threads alive at the start and gone at the end: their switches in the window are lost.
    pub exited_threads: usize,
    /// Write system calls.
    pub write_calls: u64,
}

/// Reads `pid`'s counters now.
pub(super) fn read(pid: u32) -> anyhow::Result<Counters> {
    let tasks = format!("/proc/{pid}/task");
    let mut threads = BTreeMap::new();
    for entry in fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read: it is then simply not counted.
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let cpu_ticks = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| parse_cpu_ticks(&stat));
        if let (Some((name, switches)), Some(cpu_ticks)) = (parse_status(&status), cpu_ticks) {
            threads.insert(
                tid,
                Thread {
                    name,
                    switches,
                    cpu_ticks,
                },
            );
        }
    }
    let io_path = format!("/proc/{pid}/io");
    let io = fs::read_to_string(&io_path).with_context(|| format!("reading {io_path}"))?;
    let write_calls = field(&io, "syscw").with_context(|| format!("no syscw in {io_path}"))?;
    Ok(Counters {
        threads,
        write_calls,
    })
}

impl Counters {
    /// What happened from `self` (the start) to `end`.
    pub(super) fn until(&self, end: &Counters) -> Handoffs {
        let mut by_thread_name = BTreeMap::new();
        let mut cpu_ticks_by_thread_name = BTreeMap::new();
        let mut context_switches = 0;
        for (tid, thread) in &end.threads {
            let before = self.threads.get(tid);
            let switches = thread
                .switches
                .saturating_sub(before.map_or(0, |before| before.switches));
            let ticks = thread
                .cpu_ticks
                .saturating_sub(before.map_or(0, |before| before.cpu_ticks));
            context_switches += switches;
            *by_thread_name.entry(thread.name.clone()).or_insert(0) += switches;
            *cpu_ticks_by_thread_name
                .entry(thread.name.clone())
                .or_insert(0) += ticks;
        }
        Handoffs {
            context_switches,
            by_thread_name,
            cpu_ticks_by_thread_name,
            exited_threads: self
                .threads
                .keys()
                .filter(|tid| !end.threads.contains_key(tid))
                .count(),
            write_calls: end.write_calls.saturating_sub(self.write_calls),
        }
    }
}

/// A thread's name and voluntary + involuntary context switches from its `status` file.
fn parse_status(status: &str) -> Option<(String, u64)> {
    let name = status
        .lines()
        .find_map(|line| line.strip_prefix("Name:"))?
        .trim()
        .to_owned();
    let switches =
        field(status, "voluntary_ctxt_switches")? + field(status, "nonvoluntary_ctxt_switches")?;
    Some((name, switches))
}

/// `utime + stime` (clock ticks) from a thread's `stat` line: fields 14 and 15, counted after
/// the name in parentheses (which may itself hold spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name: field 3 (the state) is the first, so utime (14) is the twelfth.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The number after `key:` on its own line.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_name_and_both_kinds_of_switches_are_read() {
        let status = "Name:\ttokio-runtime-w\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t120\n\
                      nonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(
            parse_status(status),
            Some(("tokio-runtime-w".to_owned(), 127))
        );
        // `voluntary_ctxt_switches` must not match inside `nonvoluntary_…`.
        assert_eq!(
            field(
                "nonvoluntary_ctxt_switches:\t7\n",
                "voluntary_ctxt_switches"
            ),
            None
        );
    }

    #[test]
    fn a_threads_cpu_time_is_read_past_a_name_with_spaces_and_parentheses() {
        // tid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "4242 (odd (name) x) S 1 4242 4242 0 -1 4194560 10 0 0 0 37 5 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
        assert_eq!(parse_cpu_ticks("4242 (cut) S 1 2"), None);
    }

    #[test]
    fn the_window_counts_new_threads_from_zero_and_reports_exited_ones() {
        let thread = |name: &str, n| Thread {
            name: name.to_owned(),
            switches: n,
            cpu_ticks: 2 * n,
        };
        let start = Counters {
            threads: BTreeMap::from([
                (1, thread("main", 10)),
                (2, thread("w", 5)),
                (3, thread("w", 9)),
            ]),
            write_calls: 100,
        };
        let end = Counters {
            threads: BTreeMap::from([
                (1, thread("main", 12)),
                (2, thread("w", 25)),
                (4, thread("w", 3)),
            ]),
            write_calls: 160,
        };
        let handoffs = start.until(&end);
        assert_eq!(handoffs.context_switches, 2 + 20 + 3);
        assert_eq!(
            handoffs.by_thread_name,
            BTreeMap::from([("main".to_owned(), 2), ("w".to_owned(), 23)])
        );
        assert_eq!(
            handoffs.cpu_ticks_by_thread_name,
            BTreeMap::from([("main".to_owned(), 4), ("w".to_owned(), 46)])
        );
        assert_eq!(handoffs.exited_threads, 1);
        assert_eq!(handoffs.write_calls, 60);
    }

    #[test]
    fn this_process_can_be_read() {
        let counters = read(std::process::id()).expect("own /proc entry");
        assert!(!counters.threads.is_empty());
    }
}
