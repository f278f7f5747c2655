//! How flag values are read where clap's own parsers do not suffice: sizes (`64MiB`), bounded
//! durations and counts, `--durability`, `--node-id`.
//!
//! Owns: the syntax of these values and the one-line reasons a bad value is refused (clap
//! prints them after `invalid value '…' for '--flag'`). Does not own: what a value means.
//! Clap prints a refusal's `Display` only, not its source chain: a reason that needs its cause
//! says it itself (and then holds it without `#[source]`, so a chain printer says it once).

use std::{num::ParseIntError, num::TryFromIntError, time::Duration};

/// Why a flag's value is refused.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// A number that does not parse.
    #[error(transparent)]
    Number(#[from] ParseIntError),
    /// A size too large for this machine's `usize`.
    #[error(transparent)]
    TooLarge(#[from] TryFromIntError),
    /// A duration that does not parse.
    #[error(transparent)]
    Duration(#[from] humantime::DurationError),
    /// A size with a unit other than `KiB`, `MiB` or `GiB`.
    #[error("unknown unit {0:?}: use KiB, MiB or GiB")]
    Unit(String),
    /// A size of zero, or over 64 bits.
    #[error("must be greater than zero and fit in 64 bits")]
    Size,
    /// A zero duration where it would mean "never" or "always".
    #[error("must be greater than zero")]
    ZeroDuration,
    /// A zero count (a limit of zero would refuse everything).
    #[error("must be at least 1")]
    ZeroCount,
    /// `--max-event-bytes` out of its bounds.
    #[error(
        "must be between {floor} and {ceiling} bytes (4MiB - 64KiB): a default gRPC client \
         cannot receive a larger event"
    )]
    EventBytes {
        /// The least allowed.
        floor: u64,
        /// The most allowed.
        ceiling: usize,
    },
    /// `--commit-delay` over [`super::MAX_COMMIT_DELAY`], or `--checkpoint-interval` over
    /// [`super::MAX_CHECKPOINT_INTERVAL`].
    #[error("at most {}", humantime::format_duration(*.0))]
    CommitDelay(Duration),
    /// `--durability` neither `fsync` nor an interval; says why the interval did not parse
    /// (clap shows no source, so the cause is in the message and not a source).
    #[error("expected `fsync` or an interval like `100ms`: {0}")]
    Durability(Box<ValueError>),
    /// A `--node-id` that would make an odd queue name.
    #[error("use 1 to 200 letters, digits, '.', '_' or '-'")]
    NodeId,
}

/// A node id: letters, digits, `.`, `_` and `-`, at most 200 of them (it goes into a queue name,
/// which RabbitMQ limits to 255 bytes).
pub(super) fn node_id(text: &str) -> Result<String, ValueError> {
    let valid = !text.is_empty()
        && text.len() <= 200
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(ValueError::NodeId)
    }
}

/// A size: bytes, or a number with `KiB`, `MiB` or `GiB`.
pub(super) fn byte_size(text: &str) -> Result<u64, ValueError> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(ValueError::Unit(other.to_owned())),
    };
    number
        .parse::<u64>()?
        .checked_mul(factor)
        .filter(|&bytes| bytes > 0)
        .ok_or(ValueError::Size)
}

/// A size as [`byte_size`] reads it, where 0 is allowed (it turns the bound off).
pub(super) fn byte_size_or_zero(text: &str) -> Result<u64, ValueError> {
    if text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        == "0"
    {
        return Ok(0);
    }
    byte_size(text)
}

/// `fsync`, or an interval between syncs.
pub(super) fn durability(text: &str) -> Result<crate::store::Durability, ValueError> {
    if text == "fsync" {
        return Ok(crate::store::Durability::EveryCommit);
    }
    positive_duration(text)
        .map(crate::store::Durability::Interval)
        .map_err(|e| ValueError::Durability(Box::new(e)))
}

/// `--max-event-bytes`: from 1 KiB (room for any real event) up to
/// [`crate::schema::MAX_EVENT_BYTES_CEILING`].
pub(super) fn event_bytes(text: &str) -> Result<usize, ValueError> {
    const FLOOR: u64 = 1024;
    let ceiling = crate::schema::MAX_EVENT_BYTES_CEILING;
    let bytes = byte_size(text)?;
    if bytes < FLOOR || bytes > ceiling as u64 {
        return Err(ValueError::EventBytes {
            floor: FLOOR,
            ceiling,
        });
    }
    Ok(usize::try_from(bytes)?)
}

/// A count of at least one (a limit of zero would refuse everything).
pub(super) fn at_least_one(text: &str) -> Result<usize, ValueError> {
    match text.parse::<usize>()? {
        0 => Err(ValueError::ZeroCount),
        n => Ok(n),
    }
}

/// `--commit-delay`: at most [`super::MAX_COMMIT_DELAY`].
pub(super) fn commit_delay(text: &str) -> Result<Duration, ValueError> {
    let delay = humantime::parse_duration(text)?;
    if delay > super::MAX_COMMIT_DELAY {
        return Err(ValueError::CommitDelay(super::MAX_COMMIT_DELAY));
    }
    Ok(delay)
}

/// `--checkpoint-interval`: at most [`super::MAX_CHECKPOINT_INTERVAL`].
pub(super) fn checkpoint_interval(text: &str) -> Result<Duration, ValueError> {
    let interval = humantime::parse_duration(text)?;
    if interval > super::MAX_CHECKPOINT_INTERVAL {
        return Err(ValueError::CommitDelay(super::MAX_CHECKPOINT_INTERVAL));
    }
    Ok(interval)
}

/// A duration greater than zero (`15s`, `500ms`).
pub(super) fn positive_duration(text: &str) -> Result<Duration, ValueError> {
    match humantime::parse_duration(text)? {
        duration if duration.is_zero() => Err(ValueError::ZeroDuration),
        duration => Ok(duration),
    }
}
