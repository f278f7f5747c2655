//! A user's preferences: which types are pushed live and kept in the inbox, and quiet hours in
//! the user's time zone.
//!
//! Owns: validating `pb::Preferences`, deciding for one event whether its type is enabled and
//! whether it arrived during quiet hours. Does not own where preferences are stored (`store`)
//! or what a muted or quiet event does on a stream (`hub`).
//!
//! Quiet hours are decided by the event's `received_at` (the writer's clock when it accepted
//! the event), not by the clock of whoever applies it: every node of a cluster, and a replica
//! rebuilt later, decides the same.

use jiff::{Timestamp, tz::TimeZone};

use crate::pb;

/// The critical types: never held back by quiet hours, never disabled.
pub const CRITICAL_TYPES: [&str; 4] = [
    "device.error",
    "billing.low_balance",
    "billing.subscription_expired",
    "system.security_alert",
];

/// The most type entries a user's preferences hold.
const MAX_TYPES: usize = 128;
/// The most channels one type names, and the longest name.
const MAX_CHANNELS: usize = 8;
const MAX_CHANNEL_LEN: usize = 32;

/// Why preferences were refused; says which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreferencesError {
    /// An entry's `event_type` is neither a type nor a family.
    #[error(
        "preferences.types[{index}].event_type {value:?} is not an event type or a family (`billing.*`)"
    )]
    BadType {
        /// The entry.
        index: usize,
        /// What it said.
        value: String,
    },
    /// Two entries name the same type.
    #[error("preferences.types[{index}].event_type {value:?} is listed twice")]
    Duplicate {
        /// The second entry.
        index: usize,
        /// The type.
        value: String,
    },
    /// A critical type (or its family) disabled.
    #[error(
        "preferences.types[{index}]: {value:?} would disable the critical type {critical:?}, which cannot be disabled"
    )]
    Critical {
        /// The entry.
        index: usize,
        /// What it said.
        value: String,
        /// The critical type.
        critical: &'static str,
    },
    /// Too many entries or channels, or a channel name too long or empty.
    #[error("preferences.{field}: {why}")]
    TooMuch {
        /// The field.
        field: String,
        /// The bound.
        why: String,
    },
    /// `quiet_hours.start` or `.end` is not `HH:MM`.
    #[error("preferences.quiet_hours.{field} {value:?} is not a time of day `HH:MM`")]
    BadTime {
        /// `start` or `end`.
        field: &'static str,
        /// What it said.
        value: String,
    },
    /// Start and end are the same time.
    #[error("preferences.quiet_hours: start and end are the same time")]
    EmptyQuietHours,
    /// Not an IANA time zone.
    #[error(
        "preferences.quiet_hours.time_zone {0:?} is not an IANA time zone (e.g. `Asia/Shanghai`)"
    )]
    BadTimeZone(String),
}

/// Validated preferences.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preferences {
    types: Vec<pb::TypePreference>,
    quiet: Option<Quiet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Quiet {
    start_minute: u16,
    end_minute: u16,
    proto: pb::QuietHours,
    zone: TimeZone,
}

fn minute_of(field: &'static str, value: &str) -> Result<u16, PreferencesError> {
    let bad = || PreferencesError::BadTime {
        field,
        value: value.to_owned(),
    };
    let (hours, minutes) = value.split_once(':').ok_or_else(bad)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(bad());
    }
    let hours: u16 = hours.parse().map_err(|_| bad())?;
    let minutes: u16 = minutes.parse().map_err(|_| bad())?;
    if hours > 23 || minutes > 59 {
        return Err(bad());
    }
    Ok(hours * 60 + minutes)
}

/// Whether `pattern` (a type or `family.*`) covers `event_type`.
fn covers(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

fn is_pattern(text: &str) -> bool {
    let body = text.strip_suffix(".*").unwrap_or(text);
    !body.is_empty()
        && text.len() <= 128
        && (text.ends_with(".*") || body.contains('.'))
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Preferences {
    /// Validates preferences as a request sends them (`critical_types` is ignored).
    ///
    /// # Errors
    ///
    /// The first field at fault.
    pub fn from_pb(preferences: pb::Preferences) -> Result<Self, PreferencesError> {
        if preferences.types.len() > MAX_TYPES {
            return Err(PreferencesError::TooMuch {
                field: "types".into(),
                why: format!("at most {MAX_TYPES} entries"),
            });
        }
        let mut types: Vec<pb::TypePreference> = Vec::with_capacity(preferences.types.len());
        for (index, entry) in preferences.types.into_iter().enumerate() {
            if !is_pattern(&entry.event_type) {
                return Err(PreferencesError::BadType {
                    index,
                    value: entry.event_type,
                });
            }
            if types.iter().any(|t| t.event_type == entry.event_type) {
                return Err(PreferencesError::Duplicate {
                    index,
                    value: entry.event_type,
                });
            }
            if !entry.enabled
                && let Some(critical) = CRITICAL_TYPES
                    .into_iter()
                    .find(|critical| covers(&entry.event_type, critical))
            {
                return Err(PreferencesError::Critical {
                    index,
                    value: entry.event_type,
                    critical,
                });
            }
            if entry.channels.len() > MAX_CHANNELS
                || entry
                    .channels
                    .iter()
                    .any(|c| c.is_empty() || c.len() > MAX_CHANNEL_LEN)
            {
                return Err(PreferencesError::TooMuch {
                    field: format!("types[{index}].channels"),
                    why: format!(
                        "at most {MAX_CHANNELS} channels, each 1 to {MAX_CHANNEL_LEN} bytes"
                    ),
                });
            }
            types.push(entry);
        }
        let quiet = match preferences.quiet_hours {
            None => None,
            Some(hours) => {
                let start_minute = minute_of("start", &hours.start)?;
                let end_minute = minute_of("end", &hours.end)?;
                if start_minute == end_minute {
                    return Err(PreferencesError::EmptyQuietHours);
                }
                let zone = TimeZone::get(&hours.time_zone)
                    .map_err(|_| PreferencesError::BadTimeZone(hours.time_zone.clone()))?;
                Some(Quiet {
                    start_minute,
                    end_minute,
                    proto: hours,
                    zone,
                })
            }
        };
        Ok(Self { types, quiet })
    }

    /// As the contract says them, the critical types included.
    pub fn to_pb(&self) -> pb::Preferences {
        pb::Preferences {
            types: self.types.clone(),
            quiet_hours: self.quiet.as_ref().map(|q| q.proto.clone()),
            critical_types: CRITICAL_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    /// Whether events of `event_type` are pushed live and kept in the inbox: the entry of the
    /// exact type, else of its family, else yes.
    pub fn enabled(&self, event_type: &str) -> bool {
        if CRITICAL_TYPES.contains(&event_type) {
            return true;
        }
        let exact = self.types.iter().find(|t| t.event_type == event_type);
        let family = || {
            self.types
                .iter()
                .filter(|t| t.event_type.ends_with(".*") && covers(&t.event_type, event_type))
                .max_by_key(|t| t.event_type.len())
        };
        exact.or_else(family).is_none_or(|t| t.enabled)
    }

    /// Whether an event of `event_type` received at `received_ms` (Unix milliseconds) arrived
    /// during quiet hours: never for a critical type.
    pub fn quiet_at(&self, event_type: &str, received_ms: i64) -> bool {
        let Some(quiet) = &self.quiet else {
            return false;
        };
        if CRITICAL_TYPES.contains(&event_type) {
            return false;
        }
        let Ok(at) = Timestamp::from_millisecond(received_ms) else {
            return false;
        };
        let time = at.to_zoned(quiet.zone.clone()).time();
        let minute = u16::try_from(i32::from(time.hour()) * 60 + i32::from(time.minute()))
            .unwrap_or_default();
        if quiet.start_minute < quiet.end_minute {
            (quiet.start_minute..quiet.end_minute).contains(&minute)
        } else {
            // Wraps midnight: 22:00–07:00 is from 22:00 on, and before 07:00.
            minute >= quiet.start_minute || minute < quiet.end_minute
        }
    }
}
