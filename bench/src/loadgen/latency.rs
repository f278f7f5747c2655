//! Latency recording: HDR histograms (3 significant digits, microseconds) that thousands of
//! subscriber tasks feed without taking a lock per event.
//!
//! One histogram per subscriber is what the measurement wants, but not what memory allows: a
//! 3-digit HDR histogram covering up to an hour is ~190 KB, so 10,000 streams would need ~2 GB
//! in the process that is supposed not to be the bottleneck. Instead each subscriber buffers its
//! samples in a small local [`Samples`] batch and folds the batch into one of [`SHARDS`]
//! histograms under one short lock — once per [`SAMPLES_PER_FLUSH`] events or per second,
//! whichever comes first. The shards are merged when the run ends.

use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// Significant decimal digits of every histogram.
const SIGNIFICANT_DIGITS: u8 = 3;
/// The largest latency tracked, in microseconds (one hour); larger values are recorded as this.
const HIGHEST_TRACKABLE_US: u64 = 3_600_000_000;
/// Histograms the subscribers share. With a few worker threads, two subscribers rarely flush
/// into the same shard at the same moment.
const SHARDS: usize = 16;
/// Samples a subscriber collects before it folds them into its shard.
const SAMPLES_PER_FLUSH: usize = 32;
/// A subscriber's samples are flushed at least this often while events keep arriving, so the
/// progress line is never more than about a second behind.
const FLUSH_INTERVAL_NS: u64 = 1_000_000_000;

/// A new, empty histogram of latencies in microseconds.
pub(super) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_US, SIGNIFICANT_DIGITS)
        .context("creating an HDR histogram")
}

/// Adds `source` into `into`. Both come from [`histogram`], so they always fit; an error would
/// be a bug here, and losing one shard's samples is reported rather than hidden.
pub(super) fn merge(into: &mut Histogram<u64>, source: &Histogram<u64>) -> anyhow::Result<()> {
    into.add(source).context("merging latency histograms")
}

/// The summary of a latency histogram that the report shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl Quantiles {
    /// The quantiles of `histogram`, or `None` when it is empty.
    pub(super) fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        })
    }
}

/// One shard: what its subscribers flushed so far.
struct Shard {
    /// Every sample since the progress line last took them (warmup included).
    recent: Histogram<u64>,
    /// Samples of events sent inside the measurement window.
    measured: Histogram<u64>,
    /// Events received, warmup included.
    received: u64,
    /// Events received that were sent inside the measurement window.
    received_measured: u64,
}

/// The shared end of latency recording.
pub(super) struct Recorder {
    shards: Box<[Mutex<Shard>]>,
}

/// What the subscribers recorded over the whole run.
pub(super) struct Recorded {
    /// Latencies of measured events.
    pub measured: Histogram<u64>,
    /// Events received in all.
    pub received: u64,
    /// Measured events received.
    pub received_measured: u64,
}

impl Recorder {
    /// Empty shards.
    pub(super) fn new() -> anyhow::Result<Self> {
        let shards = (0..SHARDS)
            .map(|_| {
                Ok(Mutex::new(Shard {
                    recent: histogram()?,
                    measured: histogram()?,
                    received: 0,
                    received_measured: 0,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            shards: shards.into_boxed_slice(),
        })
    }

    fn shard(&self, key: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard leaves counts that are still counts.
        self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the samples recorded since the last call into `into` (for the progress line) and
    /// returns how many events were received in all so far.
    pub(super) fn take_recent(&self, into: &mut Histogram<u64>) -> anyhow::Result<u64> {
        let mut received = 0;
        for key in 0..self.shards.len() {
            let mut shard = self.shard(key);
            merge(into, &shard.recent)?;
            shard.recent.reset();
            received += shard.received;
        }
        Ok(received)
    }

    /// Everything recorded, merged.
    pub(super) fn recorded(&self) -> anyhow::Result<Recorded> {
        let mut recorded = Recorded {
            measured: histogram()?,
            received: 0,
            received_measured: 0,
        };
        for key in 0..self.shards.len() {
            let shard = self.shard(key);
            merge(&mut recorded.measured, &shard.measured)?;
            recorded.received += shard.received;
            recorded.received_measured += shard.received_measured;
        }
        Ok(recorded)
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    latency_us: u32,
    measured: bool,
}

/// One subscriber's unflushed samples. Allocates only once the subscriber receives an event, so
/// idle streams cost nothing here.
pub(super) struct Samples {
    shard: usize,
    pending: Vec<Sample>,
    last_flush_ns: u64,
}

impl Samples {
    /// An empty batch that flushes into the shard chosen by `key` (the subscriber's index).
    pub(super) fn new(key: usize) -> Self {
        Self {
            shard: key % SHARDS,
            pending: Vec::new(),
            last_flush_ns: 0,
        }
    }

    /// Adds one event's latency; flushes when the batch is full or a second old.
    pub(super) fn push(
        &mut self,
        recorder: &Recorder,
        latency_us: u64,
        measured: bool,
        now_ns: u64,
    ) {
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(SAMPLES_PER_FLUSH);
            self.last_flush_ns = now_ns;
        }
        self.pending.push(Sample {
            // u32 microseconds reach 71 minutes, beyond the histograms' range anyway.
            latency_us: u32::try_from(latency_us).unwrap_or(u32::MAX),
            measured,
        });
        if self.pending.len() >= SAMPLES_PER_FLUSH
            || now_ns.saturating_sub(self.last_flush_ns) >= FLUSH_INTERVAL_NS
        {
            self.flush(recorder);
            self.last_flush_ns = now_ns;
        }
    }

    /// Folds the pending samples into the shard.
    pub(super) fn flush(&mut self, recorder: &Recorder) {
        if self.pending.is_empty() {
            return;
        }
        let mut shard = recorder.shard(self.shard);
        let mut measured = 0;
        for sample in &self.pending {
            let latency_us = u64::from(sample.latency_us);
            shard.recent.saturating_record(latency_us);
            if sample.measured {
                shard.measured.saturating_record(latency_us);
                measured += 1;
            }
        }
        shard.received += self.pending.len() as u64;
        shard.received_measured += measured;
        drop(shard);
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_samples_of_many_subscribers_merge_into_one_histogram() -> anyhow::Result<()> {
        let recorder = Recorder::new()?;
        let mut first = Samples::new(0);
        let mut second = Samples::new(SHARDS + 1);
        for us in 1..=100 {
            first.push(&recorder, us, true, 0);
            second.push(&recorder, us * 10, us > 50, 0);
        }
        first.flush(&recorder);
        second.flush(&recorder);
        let recorded = recorder.recorded()?;
        assert_eq!(recorded.received, 200);
        assert_eq!(recorded.received_measured, 150);
        assert_eq!(recorded.measured.max(), 1000);
        Ok(())
    }

    #[test]
    fn a_batch_is_flushed_when_it_is_a_second_old() -> anyhow::Result<()> {
        let recorder = Recorder::new()?;
        let mut samples = Samples::new(3);
        samples.push(&recorder, 5, true, 10);
        assert_eq!(recorder.recorded()?.received, 0);
        samples.push(&recorder, 5, true, 10 + FLUSH_INTERVAL_NS);
        assert_eq!(recorder.recorded()?.received, 2);
        Ok(())
    }

    #[test]
    fn the_progress_line_takes_recent_samples_once() -> anyhow::Result<()> {
        let recorder = Recorder::new()?;
        let mut samples = Samples::new(1);
        samples.push(&recorder, 7, false, 0);
        samples.flush(&recorder);
        let mut recent = histogram()?;
        assert_eq!(recorder.take_recent(&mut recent)?, 1);
        assert_eq!(recent.len(), 1);
        let mut again = histogram()?;
        recorder.take_recent(&mut again)?;
        assert!(again.is_empty());
        Ok(())
    }
}
