//! The server's resident memory, read from `/proc/<pid>/status` (`VmRSS`): once before the
//! streams open, once at the end, and every second in between for the peak.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::task::JoinHandle;

/// How often the peak sampler reads the server's RSS.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The resident set size of process `pid`, in bytes.
pub(super) fn read_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {path} (is --server-pid {pid} a running process on this machine?)")
    })?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// `VmRSS:     12345 kB` → bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Samples a process's RSS every second and keeps the largest value.
pub(super) struct PeakSampler {
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl PeakSampler {
    /// Starts sampling `pid`. A read that fails (the server exited) is skipped; the report's
    /// final read says what went wrong.
    pub(super) fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
                loop {
                    ticker.tick().await;
                    if let Ok(bytes) = read_bytes(pid) {
                        peak.fetch_max(bytes, Ordering::Relaxed);
                    }
                }
            }
        });
        Self { peak, task }
    }

    /// Stops sampling; the peak seen, if any sample succeeded.
    pub(super) fn stop(self) -> Option<u64> {
        self.task.abort();
        Some(self.peak.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status =
            "Name:\tnotify-backbone\nVmHWM:\t   20000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() -> anyhow::Result<()> {
        assert!(read_bytes(std::process::id())? > 0);
        Ok(())
    }
}
