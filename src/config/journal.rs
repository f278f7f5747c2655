//! The "Journal" flags: where the journal's file is, when its commits reach the disk, what
//! retention keeps, and the group commit's delay.
//!
//! Owns: these flags and the journal's settings made of them ([`JournalFlags::settings`],
//! [`JournalFlags::retention`]). Does not own: opening the journal (`app`), nor what the
//! settings do (`store`).

use std::time::Duration;

use clap::Args;

use super::{
    JournalKind,
    parse::{
        byte_size, byte_size_or_zero, checkpoint_interval, commit_delay, durability,
        positive_duration,
    },
};
use crate::{
    inbox::InboxSettings,
    store::{Durability, JournalSettings, RetentionSettings},
};

fn inbox_types(text: &str) -> Result<InboxSettings, String> {
    InboxSettings::parse(text).map_err(|error| error.to_string())
}

/// The most `--commit-delay` may be: beyond it the delay is a stall, not a batching window.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);

/// The most `--checkpoint-interval` may be: it bounds the memory of the open transaction and
/// what opening the journal after a crash applies from the log.
pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// How often a cluster node's replica is synced to disk.
pub const REPLICA_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The "Journal" flags.
#[derive(Debug, Clone, Args)]
pub struct JournalFlags {
    /// Group commit: the journal writer commits at most once per this interval. An event that
    /// finds it idle is committed at once; the ones arriving within the interval after a
    /// commit share the next one (and its fsync), so a commit serves several events even at
    /// low rates. Costs up to this much latency; saves most of the CPU a commit per event costs
    /// (BENCHMARKS.md §9, §13). 0 commits whatever is queued at once. At most 100ms.
    #[arg(long, env = "NOTIFY_COMMIT_DELAY", default_value = "2ms", value_parser = commit_delay, help_heading = "Journal")]
    pub commit_delay: Duration,

    /// Where the journal keeps its file (`journal.redb`); created if missing. Every accepted
    /// event is stored here before it is acknowledged or delivered.
    #[arg(
        long,
        env = "NOTIFY_DATA_DIR",
        default_value = "data",
        help_heading = "Journal"
    )]
    pub data_dir: std::path::PathBuf,

    /// When journal commits reach the disk: `fsync` (every commit waits for it; an acknowledged
    /// event survives any crash) or an interval such as `100ms` (synced in the background; a
    /// crash can lose up to that much of the latest, acknowledged, events).
    #[arg(long, env = "NOTIFY_DURABILITY", default_value = "fsync", value_parser = durability, help_heading = "Journal")]
    pub durability: crate::store::Durability,

    /// With `--durability fsync`: a batch of events is made durable by one append to the
    /// commit log (`journal.wal`, beside `journal.redb`) and its fsync, and the batches of up to
    /// this long (at most 64 events) are written to `journal.redb` in one commit; a batch of 32
    /// events or more is committed at once, without the log. Cheaper per event at the rates
    /// where a batch holds a few events (BENCHMARKS.md §19); a crash loses nothing (the log is
    /// applied when the journal opens). 0: every batch is committed to `journal.redb`, without
    /// a log. At most 1s.
    #[arg(long, env = "NOTIFY_CHECKPOINT_INTERVAL", default_value = "50ms", value_parser = checkpoint_interval, help_heading = "Journal")]
    pub checkpoint_interval: Duration,

    /// Events older than this are removed from the journal (in the background); a resume from
    /// before them gets a `Gap`.
    #[arg(long, env = "NOTIFY_RETENTION_AGE", default_value = "7d", value_parser = positive_duration, help_heading = "Journal")]
    pub retention_age: Duration,

    /// The journal's oldest events are removed while its records take more than this
    /// (`512MiB`, `10GiB`, or bytes).
    #[arg(long, env = "NOTIFY_RETENTION_BYTES", default_value = "1GiB", value_parser = byte_size, help_heading = "Journal")]
    pub retention_bytes: u64,

    /// How often retention is applied. Between runs the journal may exceed its limits by what
    /// arrives in this time.
    #[arg(long, env = "NOTIFY_RETENTION_INTERVAL", default_value = "10s", value_parser = positive_duration, help_heading = "Journal")]
    pub retention_interval: Duration,

    /// Memory the journal may use for its own page cache (`64MiB`, or bytes). More speeds up
    /// replays of old events; the operating system's page cache helps either way.
    #[arg(long, env = "NOTIFY_JOURNAL_CACHE", default_value = "64MiB", value_parser = byte_size, help_heading = "Journal")]
    pub journal_cache: u64,

    /// Which event types make up a user's inbox (notification centre): types
    /// (`billing.payment_success`), families (`billing.*`) and exclusions (`!quota.updated`),
    /// comma-separated. The default is every family but the two state types that change all
    /// the time. Admin notices always make up the admins' inboxes. Applies to events stored
    /// from then on.
    #[arg(long, env = "NOTIFY_INBOX_TYPES", default_value = crate::inbox::DEFAULT_INBOX_TYPES, value_parser = inbox_types, help_heading = "Journal")]
    pub inbox_types: InboxSettings,

    /// Space kept free on the journal's disk (`64MiB`, or bytes; 0: none). While less is
    /// available, new events are refused before they reach the file (`Publish` answers
    /// UNAVAILABLE, the AMQP ingest leaves its messages in the queue), the node reports not ready,
    /// and reads and open streams go on; writes resume by themselves once there is room. It must
    /// hold one commit (a batch of events): a disk that still fills up mid-commit makes the
    /// journal reopen its file, and it recovers the same way.
    #[arg(long, env = "NOTIFY_JOURNAL_MIN_FREE", default_value = "64MiB", value_parser = byte_size_or_zero, help_heading = "Journal")]
    pub journal_min_free: u64,

    /// How long an event id is remembered to recognise re-sent events (the outbox's re-sends,
    /// AMQP redeliveries). A re-send older than this is stored again.
    #[arg(long, env = "NOTIFY_DEDUPE_WINDOW", default_value = "24h", value_parser = positive_duration, help_heading = "Journal")]
    pub dedupe_window: Duration,
}

impl JournalFlags {
    /// The journal's settings; in cluster mode the file is a replica of the stream, which is the
    /// durable truth: it commits without waiting for the disk (what a crash loses is read again).
    pub fn settings(&self, kind: JournalKind) -> JournalSettings {
        JournalSettings {
            dir: self.data_dir.clone(),
            durability: match kind {
                JournalKind::Redb => self.durability,
                JournalKind::RabbitmqStream => Durability::Interval(REPLICA_SYNC_INTERVAL),
            },
            dedupe_window: self.dedupe_window,
            cache_bytes: usize::try_from(self.journal_cache).unwrap_or(usize::MAX),
            min_free_bytes: self.journal_min_free,
            checkpoint_interval: self.checkpoint_interval,
            inbox_types: self.inbox_types.clone(),
        }
    }

    /// What retention keeps: `--retention-age` and `--retention-bytes`.
    pub fn retention(&self) -> RetentionSettings {
        RetentionSettings {
            max_age: self.retention_age,
            max_bytes: self.retention_bytes,
        }
    }
}
