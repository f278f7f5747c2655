//! Dates as the producers write them, turned into `google.protobuf.Timestamp`.
//!
//! Owns the accepted date forms: RFC 3339 / ISO-8601 date-times (what `Date.toISOString()`
//! writes, offsets allowed), date-only `2025-12-01` (midnight UTC), and JSON numbers counted in
//! milliseconds since the epoch (`Date.now()`). Does not own reading the field (see `fields`).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use prost_types::Timestamp;
use serde_json::Number;

/// The range of a JavaScript `Date`, ±100,000,000 days from the epoch in milliseconds. Nothing a
/// producer sends can lie outside it, so anything that does is a bad value, not a date.
const MAX_EPOCH_MS: f64 = 8.64e15;

/// Parses a date string. Returns what is wrong with it otherwise.
pub(super) fn parse_text(text: &str) -> Result<Timestamp, String> {
    if let Ok(date_time) = DateTime::parse_from_rfc3339(text) {
        return Ok(timestamp(
            date_time.timestamp(),
            date_time.timestamp_subsec_nanos(),
        ));
    }
    // ISO-8601 without an offset (some ORMs write this): read as UTC.
    if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        let utc = naive.and_utc();
        return Ok(timestamp(utc.timestamp(), utc.timestamp_subsec_nanos()));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).map(|naive| naive.and_utc());
        if let Some(midnight) = midnight {
            return Ok(timestamp(midnight.timestamp(), 0));
        }
    }
    Err(format!(
        "expected an ISO-8601 date, got {:?}",
        text.chars().take(40).collect::<String>()
    ))
}

/// Reads a JSON number as milliseconds since the epoch.
pub(super) fn parse_epoch_ms(number: &Number) -> Result<Timestamp, String> {
    if let Some(ms) = number.as_i64() {
        return from_epoch_ms(ms).ok_or_else(|| out_of_range(number));
    }
    // Fractional milliseconds (rare, but valid JSON): keep the sub-millisecond part as nanos.
    match number.as_f64() {
        Some(ms) if ms.abs() <= MAX_EPOCH_MS => {
            let seconds = (ms / 1000.0).floor();
            let nanos = ((ms - seconds * 1000.0) * 1_000_000.0).round();
            // Both casts are exact: |seconds| ≤ 8.64e12 and 0 ≤ nanos ≤ 1e9 here.
            let (seconds, nanos) = (seconds as i64, nanos as i64);
            Some(normalized(seconds, nanos)).ok_or_else(|| out_of_range(number))
        }
        _ => Err(out_of_range(number)),
    }
}

/// Milliseconds since the epoch (the AMQP `timestamp` property as the producers send it) as a
/// timestamp, or `None` outside the range of a JavaScript `Date`.
pub(super) fn from_epoch_ms(ms: i64) -> Option<Timestamp> {
    // i64 → f64 only loses precision far outside the accepted range.
    if (ms as f64).abs() > MAX_EPOCH_MS {
        return None;
    }
    Some(normalized(
        ms.div_euclid(1000),
        ms.rem_euclid(1000) * 1_000_000,
    ))
}

/// A `SystemTime` as a timestamp. Written here rather than using prost-types' `From`, which
/// panics on times beyond `i64` seconds.
pub(super) fn from_system_time(time: SystemTime) -> Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => timestamp(
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let seconds = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            normalized(-seconds, -i64::from(before.subsec_nanos()))
        }
    }
}

/// A timestamp from whole seconds and nanoseconds in `0..1e9`.
fn timestamp(seconds: i64, nanos: u32) -> Timestamp {
    normalized(seconds, i64::from(nanos))
}

/// A timestamp from seconds and a nanosecond count that may be negative or a full second,
/// carried into the seconds so that `nanos` ends in `0..1e9` as the well-known type requires.
fn normalized(seconds: i64, nanos: i64) -> Timestamp {
    let seconds = seconds.saturating_add(nanos.div_euclid(1_000_000_000));
    let nanos = i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or_default();
    Timestamp { seconds, nanos }
}

/// The problem text for a number that is not a usable date.
fn out_of_range(number: &Number) -> String {
    format!(
        "expected milliseconds since the epoch, got {}",
        number.as_str().chars().take(40).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn iso_strings_with_milliseconds_offsets_and_date_only_are_read() {
        for (text, expected) in [
            ("2025-11-20T10:00:00.000Z", ts(1_763_632_800, 0)),
            ("2025-11-20T10:00:00.123Z", ts(1_763_632_800, 123_000_000)),
            ("2025-11-20T12:00:00+02:00", ts(1_763_632_800, 0)),
            ("2025-11-20T10:00:00", ts(1_763_632_800, 0)),
            ("2025-12-01", ts(1_764_547_200, 0)),
        ] {
            assert_eq!(parse_text(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn text_that_is_not_a_date_is_refused() {
        for text in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-11-20T25:00:00Z",
            "1732096800000",
        ] {
            assert!(parse_text(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn numbers_are_milliseconds_since_the_epoch() {
        let number = |text: &str| serde_json::from_str::<Number>(text).expect("a JSON number");
        assert_eq!(
            parse_epoch_ms(&number("1732096800000")),
            Ok(ts(1_732_096_800, 0))
        );
        assert_eq!(parse_epoch_ms(&number("-1500")), Ok(ts(-2, 500_000_000)));
        assert_eq!(parse_epoch_ms(&number("1500.5")), Ok(ts(1, 500_500_000)));
        assert!(parse_epoch_ms(&number("1e300")).is_err());
        assert!(parse_epoch_ms(&number("9007199254740993000")).is_err());
    }

    #[test]
    fn amqp_milliseconds_become_a_timestamp() {
        assert_eq!(
            from_epoch_ms(1_732_096_800_123),
            Some(ts(1_732_096_800, 123_000_000))
        );
        assert_eq!(from_epoch_ms(i64::MAX), None);
    }

    #[test]
    fn system_times_before_and_after_the_epoch_convert() {
        let after = UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let before = UNIX_EPOCH - std::time::Duration::from_millis(1_500);
        assert_eq!(from_system_time(after), ts(1, 500_000_000));
        assert_eq!(from_system_time(before), ts(-2, 500_000_000));
    }
}
