//! What a subscriber selects (whose events, the admin feed) and how it narrows them (types,
//! device). Validation of a request's filters lives here too, so every transport checks the same
//! way.

use crate::schema::{self, ADMIN_NOTICE_TYPE};

/// The most event-type patterns one subscription may carry, by default.
pub const MAX_TYPE_PATTERNS: usize = 64;
/// The longest event-type pattern accepted by default, in bytes.
pub const MAX_PATTERN_LEN: usize = 128;

/// How much one subscription's filters may hold (`--max-event-types`, `--max-pattern-len`):
/// each pattern is checked against every routed event, so these bound the work per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterSettings {
    /// The most event-type patterns.
    pub max_patterns: usize,
    /// The longest pattern, in bytes.
    pub max_pattern_len: usize,
}

impl Default for FilterSettings {
    fn default() -> Self {
        Self {
            max_patterns: MAX_TYPE_PATTERNS,
            max_pattern_len: MAX_PATTERN_LEN,
        }
    }
}
/// The longest user or device id accepted in a filter, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A subscription request that cannot be served as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// An event-type pattern is not `a.b`, `a.*` or `*`.
    #[error("event_types[{index}] {pattern:?}: {problem}")]
    BadPattern {
        /// Position in `event_types`.
        index: usize,
        /// The pattern as sent (already known to be at most `--max-pattern-len` long).
        pattern: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// More patterns than [`FilterSettings::max_patterns`].
    #[error("event_types has {count} entries; at most {limit} are allowed (--max-event-types)")]
    TooManyPatterns {
        /// Patterns sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A pattern longer than [`FilterSettings::max_pattern_len`].
    #[error("event_types[{index}] is longer than {limit} bytes (--max-pattern-len)")]
    PatternTooLong {
        /// Position in `event_types`.
        index: usize,
        /// The limit.
        limit: usize,
    },
    /// An id longer than [`MAX_ID_LEN`].
    #[error("{field} is longer than {MAX_ID_LEN} bytes")]
    IdTooLong {
        /// The request field.
        field: &'static str,
    },
    /// The request selects nothing: no user and no admin feed.
    #[error("select something: set user_id (or \"*\" for all users) and/or admin_feed")]
    SelectsNothing,
}

/// Whose per-user events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Users {
    /// None (an admin-feed-only subscription).
    None,
    /// One user's.
    One(Box<str>),
    /// Everyone's, and events with no user: the firehose.
    All,
}

/// One event-type pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    /// Exactly this type.
    Exact(Box<str>),
    /// Any type starting with this prefix (which ends in `.`).
    Family(Box<str>),
    /// Any type.
    Any,
}

impl TypePattern {
    /// Parses a pattern already known to be at most [`FilterSettings::max_pattern_len`] long.
    fn parse(index: usize, text: &str) -> Result<Self, FilterError> {
        let bad = |problem| FilterError::BadPattern {
            index,
            pattern: text.to_owned(),
            problem,
        };
        if text == "*" {
            return Ok(Self::Any);
        }
        let (stem, family) = match text.strip_suffix(".*") {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.is_empty() {
            return Err(bad("empty"));
        }
        // The grammar of event types, so a pattern can name any type the ingest accepts.
        if !stem.split('.').all(schema::is_segment) {
            return Err(bad(
                "expected dot-separated lowercase words (`billing.payment_success`) or a family (`billing.*`)",
            ));
        }
        Ok(if family {
            Self::Family(format!("{stem}.").into())
        } else {
            Self::Exact(stem.into())
        })
    }

    fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::Exact(exact) => **exact == *event_type,
            Self::Family(prefix) => event_type.starts_with(&**prefix),
            Self::Any => true,
        }
    }
}

/// A validated subscription: what it selects and how it narrows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Whose per-user events.
    pub(super) users: Users,
    /// Whether the admin feed (admin notices, every `quota.updated`) is included.
    pub(super) admin_feed: bool,
    /// Empty = every type.
    types: Vec<TypePattern>,
    /// Only events about this device, when set.
    device_id: Option<Box<str>>,
}

impl Filter {
    /// Validates a subscription request's fields. `users` is decided by the caller from who is
    /// asking (a token's own subject is always [`Users::One`], whatever text it holds), never
    /// parsed here from a string.
    pub fn new(
        users: Users,
        admin_feed: bool,
        event_types: &[String],
        device_id: &str,
        limits: FilterSettings,
    ) -> Result<Self, FilterError> {
        if event_types.len() > limits.max_patterns {
            return Err(FilterError::TooManyPatterns {
                count: event_types.len(),
                limit: limits.max_patterns,
            });
        }
        if let Some(index) = event_types
            .iter()
            .position(|t| t.len() > limits.max_pattern_len)
        {
            return Err(FilterError::PatternTooLong {
                index,
                limit: limits.max_pattern_len,
            });
        }
        let user_id = match &users {
            Users::One(user) => user,
            Users::None | Users::All => "",
        };
        for (field, value) in [("user_id", user_id), ("device_id", device_id)] {
            if value.len() > MAX_ID_LEN {
                return Err(FilterError::IdTooLong { field });
            }
        }
        if users == Users::None && !admin_feed {
            return Err(FilterError::SelectsNothing);
        }
        let types = event_types
            .iter()
            .enumerate()
            .map(|(index, text)| TypePattern::parse(index, text))
            .collect::<Result<Vec<_>, _>>()?;
        let device_id = (!device_id.is_empty()).then(|| device_id.into());
        Ok(Self {
            users,
            admin_feed,
            types,
            device_id,
        })
    }

    /// Whether this subscription's user selection alone covers an event of `user_id`.
    pub(super) fn selects_user(&self, user_id: &str) -> bool {
        match &self.users {
            Users::None => false,
            Users::One(user) => !user_id.is_empty() && **user == *user_id,
            Users::All => true,
        }
    }

    /// Whether the narrowing filters (type, device) let the event through.
    pub(super) fn passes(&self, event_type: &str, device_id: &str) -> bool {
        let type_ok = self.types.is_empty() || self.types.iter().any(|p| p.matches(event_type));
        let device_ok = self
            .device_id
            .as_deref()
            .is_none_or(|wanted| wanted == device_id);
        type_ok && device_ok
    }
}

/// Who an event is for, derived from its type and user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Audience {
    /// A per-user event; `admin_too` when it also belongs on the admin feed.
    Users {
        /// Also delivered on the admin feed (`quota.updated`, for admin dashboards).
        admin_too: bool,
    },
    /// Only the admin feed (derived admin notices).
    AdminOnly,
}

impl Audience {
    /// The audience of an event of this type.
    pub(super) fn of(event_type: &str) -> Self {
        match event_type {
            ADMIN_NOTICE_TYPE => Self::AdminOnly,
            "quota.updated" => Self::Users { admin_too: true },
            _ => Self::Users { admin_too: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(user: &str, admin: bool, types: &[&str], device: &str) -> Filter {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        Filter::new(
            users(user),
            admin,
            &types,
            device,
            FilterSettings::default(),
        )
        .expect("valid filter")
    }

    /// The request text tests use: empty = nobody, `*` = everybody.
    fn users(text: &str) -> Users {
        match text {
            "" => Users::None,
            "*" => Users::All,
            user => Users::One(user.into()),
        }
    }

    #[test]
    fn type_patterns_match_exactly_or_by_family() {
        let f = filter("u1", false, &["billing.*", "app.installed"], "");
        assert!(f.passes("billing.payment_success", ""));
        assert!(f.passes("billing.order.completed", ""));
        assert!(f.passes("app.installed", ""));
        assert!(!f.passes("app.install_failed", ""));
        assert!(!f.passes("billingx.y", ""));
        assert!(filter("u1", false, &[], "").passes("anything.at_all", ""));
        assert!(filter("u1", false, &["*"], "").passes("device.error", ""));
    }

    #[test]
    fn device_filter_only_narrows() {
        let f = filter("u1", false, &[], "d1");
        assert!(f.passes("device.started", "d1"));
        assert!(!f.passes("device.started", "d2"));
        assert!(!f.passes("quota.updated", ""));
    }

    #[test]
    fn user_selection() {
        assert!(filter("u1", false, &[], "").selects_user("u1"));
        assert!(!filter("u1", false, &[], "").selects_user("u2"));
        assert!(!filter("u1", false, &[], "").selects_user(""));
        assert!(filter("*", false, &[], "").selects_user(""));
        assert!(!filter("", true, &[], "").selects_user("u1"));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let bad = |types: &[&str]| {
            let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
            Filter::new(users("u1"), false, &types, "", FilterSettings::default())
                .expect_err("must be refused")
        };
        assert!(matches!(
            bad(&[""]),
            FilterError::BadPattern { index: 0, .. }
        ));
        assert!(matches!(
            bad(&["ok.type", "Bad"]),
            FilterError::BadPattern { index: 1, .. }
        ));
        assert!(matches!(
            bad(&["billing.*.x"]),
            FilterError::BadPattern { .. }
        ));
        assert!(matches!(bad(&[".*"]), FilterError::BadPattern { .. }));
        assert_eq!(
            bad(&["a.b", &"a".repeat(MAX_PATTERN_LEN + 1)]),
            FilterError::PatternTooLong {
                index: 1,
                limit: MAX_PATTERN_LEN
            }
        );
        let many = vec!["a.b"; MAX_TYPE_PATTERNS + 1];
        assert_eq!(
            bad(&many),
            FilterError::TooManyPatterns {
                count: MAX_TYPE_PATTERNS + 1,
                limit: MAX_TYPE_PATTERNS
            }
        );
        let tight = FilterSettings {
            max_patterns: 1,
            max_pattern_len: 5,
        };
        assert!(Filter::new(users("u1"), false, &["a.b".into()], "", tight).is_ok());
        assert!(matches!(
            Filter::new(users("u1"), false, &["a.b".into(), "c.d".into()], "", tight),
            Err(FilterError::TooManyPatterns { count: 2, limit: 1 })
        ));
        assert!(matches!(
            Filter::new(users("u1"), false, &["abc.def".into()], "", tight),
            Err(FilterError::PatternTooLong { index: 0, limit: 5 })
        ));
        assert_eq!(
            Filter::new(Users::None, false, &[], "", FilterSettings::default()),
            Err(FilterError::SelectsNothing)
        );
        assert!(matches!(
            Filter::new(
                users(&"u".repeat(MAX_ID_LEN + 1)),
                false,
                &[],
                "",
                FilterSettings::default()
            ),
            Err(FilterError::IdTooLong { field: "user_id" })
        ));
    }

    #[test]
    fn audiences() {
        assert_eq!(Audience::of("admin.notice"), Audience::AdminOnly);
        assert_eq!(
            Audience::of("quota.updated"),
            Audience::Users { admin_too: true }
        );
        assert_eq!(
            Audience::of("quota.exceeded"),
            Audience::Users { admin_too: false }
        );
    }
}
