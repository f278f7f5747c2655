//! The inbox's model: what an inbox is made of, what a mark does to an item, what the counts
//! are, the commands the writer applies, the updates the owner's streams get, and preferences.
//!
//! Owns: families, item states and their transitions, [`Counts`] (exact, in total and per
//! family) and their fixed encoding, [`Command`]s and their encoding on cluster mode's stream,
//! [`Update`]s, which event types make up an inbox ([`InboxSettings`], `--inbox-types`), and
//! [`Preferences`] (validation, enabled types, quiet hours in an IANA time zone). Does not own
//! where any of it is stored (`store`: the journal's own file, written in the transaction that
//! stores the events, so state and events never disagree), who may act on which inbox (`auth`,
//! `grpc`), or how an update reaches a stream (`hub`).
//!
//! An inbox is derived from the journal: an event of an inbox type about a user is an item of
//! that user's inbox; an `admin.notice` is an item of every admin's own admin inbox (see
//! [`Kind::Admin`]). Marks are [`Command`]s written by the journal's single writer, in order
//! with the events, so a node that applies the same stream derives the same state.

mod command;
mod preferences;
#[cfg(test)]
mod tests;

pub use command::{Command, DecodeCommandError, Mark, Target};
pub use preferences::{CRITICAL_TYPES, Preferences, PreferencesError};

use crate::pb;

/// The most ids one mark may name.
pub const MAX_MARK_IDS: usize = 100;

/// An admin's admin inbox starts with at most this many of the newest retained notices: what an
/// admin who opens the console for the first time finds, at a bounded cost for the writer.
pub const ADMIN_BACKFILL: usize = 1000;

/// The family of an event type: the part before its first dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Family {
    /// `quota.*`.
    Quota = 1,
    /// `billing.*`.
    Billing = 2,
    /// `app.*`.
    App = 3,
    /// `device.*`.
    Device = 4,
}

impl Family {
    /// Every family, in the order of `pb::InboxFamily`.
    pub const ALL: [Family; 4] = [Family::Quota, Family::Billing, Family::App, Family::Device];

    /// The family of `event_type`, if it has one of the four.
    pub fn of_type(event_type: &str) -> Option<Self> {
        match event_type.split_once('.')?.0 {
            "quota" => Some(Self::Quota),
            "billing" => Some(Self::Billing),
            "app" => Some(Self::App),
            "device" => Some(Self::Device),
            _ => None,
        }
    }

    /// The family of an inbox item: its type's, or for an admin notice the family of the event
    /// it was derived from.
    pub fn of_event(event: &pb::Event) -> Option<Self> {
        match &event.payload {
            Some(pb::event::Payload::AdminNotice(notice)) => {
                Self::of_type(&notice.source_event_type)
            }
            _ => Self::of_type(&event.r#type),
        }
    }

    /// Its number (`pb::InboxFamily`'s), as stored.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The family stored as `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|family| family.code() == code)
    }

    /// The family of a request's `pb::InboxFamily` value; `None` for unspecified or unknown.
    pub fn from_pb(value: i32) -> Option<Self> {
        u8::try_from(value).ok().and_then(Self::from_code)
    }

    fn index(self) -> usize {
        usize::from(self.code() - 1)
    }
}

/// Whose inbox: a user's own events, or an admin's notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// The events of the inbox types about this user.
    User = 0,
    /// The admin feed's notices (`admin.notice`), with the state kept for this admin. The
    /// server learns who the admins are when they first use their admin inbox (a
    /// [`Command::JoinAdmin`]); from then on each new notice is an item of each of them.
    Admin = 1,
}

/// One inbox: its kind and its owner's user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboxKey {
    /// User or admin inbox.
    pub kind: Kind,
    /// The owner (the token's subject).
    pub owner: String,
}

impl InboxKey {
    /// `owner`'s user inbox.
    pub fn user(owner: impl Into<String>) -> Self {
        Self {
            kind: Kind::User,
            owner: owner.into(),
        }
    }

    /// `owner`'s admin inbox.
    pub fn admin(owner: impl Into<String>) -> Self {
        Self {
            kind: Kind::Admin,
            owner: owner.into(),
        }
    }
}

/// What the owner did with one item: seen, read (implies seen), archived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemState(u8);

impl ItemState {
    const SEEN: u8 = 1;
    const READ: u8 = 2;
    const ARCHIVED: u8 = 4;

    /// A new item: unseen, unread, in the inbox.
    pub const NEW: Self = Self(0);

    /// The state stored as `bits` (unknown bits are kept, and ignored).
    pub fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// As stored.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Seen.
    pub fn seen(self) -> bool {
        self.0 & Self::SEEN != 0
    }

    /// Read.
    pub fn read(self) -> bool {
        self.0 & Self::READ != 0
    }

    /// Archived.
    pub fn archived(self) -> bool {
        self.0 & Self::ARCHIVED != 0
    }

    /// The state after `mark`.
    #[must_use]
    pub fn marked(self, mark: Mark) -> Self {
        Self(match mark {
            Mark::Seen => self.0 | Self::SEEN,
            Mark::Read => self.0 | Self::SEEN | Self::READ,
            Mark::Unread => self.0 & !Self::READ,
            Mark::Archived => self.0 | Self::ARCHIVED,
            Mark::Unarchived => self.0 & !Self::ARCHIVED,
        })
    }

    /// Whether an item in this state belongs in a page of `filter`.
    pub fn passes(self, filter: pb::InboxFilter) -> bool {
        use pb::InboxFilter as F;
        match filter {
            F::Unspecified => !self.archived(),
            F::Unread => !self.archived() && !self.read(),
            F::Unseen => !self.archived() && !self.seen(),
            F::Read => !self.archived() && self.read(),
            F::Archived => self.archived(),
            F::All => true,
        }
    }
}

/// The counts of one family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyCounts {
    /// Items not archived.
    pub total: u64,
    /// Items not archived and not read.
    pub unread: u64,
    /// Items not archived and not seen.
    pub unseen: u64,
}

/// The exact counts of one inbox, kept as items arrive, change and go (never counted by a
/// scan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    families: [FamilyCounts; 4],
}

impl Counts {
    /// The encoded size: four families of three counts.
    pub const ENCODED_LEN: usize = 4 * 3 * 8;

    /// One family's counts.
    pub fn family(&self, family: Family) -> FamilyCounts {
        self.families[family.index()]
    }

    /// The sums over the families.
    pub fn total(&self) -> FamilyCounts {
        self.families
            .iter()
            .fold(FamilyCounts::default(), |sum, f| FamilyCounts {
                total: sum.total + f.total,
                unread: sum.unread + f.unread,
                unseen: sum.unseen + f.unseen,
            })
    }

    /// Counts an item of `family` in `state` (`add`) or stops counting it.
    pub fn count(&mut self, family: Family, state: ItemState, add: bool) {
        if state.archived() {
            return;
        }
        let counts = &mut self.families[family.index()];
        let step = |n: &mut u64| {
            *n = if add {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        };
        step(&mut counts.total);
        if !state.read() {
            step(&mut counts.unread);
        }
        if !state.seen() {
            step(&mut counts.unseen);
        }
    }

    /// Moves an item of `family` from state `from` to `to`.
    pub fn change(&mut self, family: Family, from: ItemState, to: ItemState) {
        self.count(family, from, false);
        self.count(family, to, true);
    }

    /// As stored: little-endian counts, family by family.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0_u8; Self::ENCODED_LEN];
        let values = self
            .families
            .iter()
            .flat_map(|f| [f.total, f.unread, f.unseen]);
        for (chunk, value) in out.chunks_exact_mut(8).zip(values) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// The counts stored as `bytes`; zeros where `bytes` is short (a record of a later
    /// version may be longer: the rest is ignored).
    pub fn decode(bytes: &[u8]) -> Self {
        let mut values = bytes.chunks_exact(8).map(|chunk| {
            let mut word = [0_u8; 8];
            word.copy_from_slice(chunk);
            u64::from_le_bytes(word)
        });
        let mut counts = Self::default();
        for family in &mut counts.families {
            family.total = values.next().unwrap_or(0);
            family.unread = values.next().unwrap_or(0);
            family.unseen = values.next().unwrap_or(0);
        }
        counts
    }

    /// As the contract says them.
    pub fn to_pb(&self) -> pb::InboxCounts {
        let total = self.total();
        pb::InboxCounts {
            total: total.total,
            unread: total.unread,
            unseen: total.unseen,
            families: Family::ALL
                .into_iter()
                .map(|family| {
                    let counts = self.family(family);
                    pb::InboxFamilyCounts {
                        family: i32::from(family.code()),
                        total: counts.total,
                        unread: counts.unread,
                        unseen: counts.unseen,
                    }
                })
                .collect(),
        }
    }
}

/// What a [`Command::Mark`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// The inbox's counts right after it.
    pub counts: Counts,
    /// How many items changed state.
    pub changed: u32,
    /// The ids that name no item of the inbox.
    pub unknown_ids: Vec<String>,
}

/// What applying one [`Command`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A mark's outcome.
    Marked(Marked),
    /// The preferences now stored.
    Preferences(Box<Preferences>),
    /// The admin's inbox exists (it was created, or it existed already).
    Joined,
}

/// Why an [`Update`] is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// New items arrived.
    NewItems,
    /// The owner marked items.
    Marked(Mark),
    /// The owner's preferences changed.
    Preferences,
}

/// One inbox changed: what its owner's open streams are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Whose inbox.
    pub inbox: InboxKey,
    /// Why.
    pub reason: Reason,
    /// Its counts after the change.
    pub counts: Counts,
    /// The event ids of the items that changed (new, or marked by id).
    pub ids: Vec<String>,
    /// A mark up to this position.
    pub up_to: Option<u64>,
    /// A mark of every item.
    pub all: bool,
    /// New items arrived during the owner's quiet hours.
    pub quiet: bool,
}

impl Update {
    /// As the contract says it; `cursor` turns a position into its cursor.
    pub fn to_pb(&self, cursor: impl Fn(u64) -> String) -> pb::InboxUpdate {
        let (reason, mark) = match self.reason {
            Reason::NewItems => (pb::InboxUpdateReason::NewItems, pb::InboxMark::Unspecified),
            Reason::Marked(mark) => (pb::InboxUpdateReason::Marked, mark.to_pb()),
            Reason::Preferences => (
                pb::InboxUpdateReason::Preferences,
                pb::InboxMark::Unspecified,
            ),
        };
        pb::InboxUpdate {
            admin_inbox: self.inbox.kind == Kind::Admin,
            reason: reason.into(),
            counts: Some(self.counts.to_pb()),
            mark: mark.into(),
            ids: self.ids.clone(),
            up_to_cursor: self.up_to.map(cursor).unwrap_or_default(),
            all: self.all,
            quiet: self.quiet,
        }
    }
}

/// The state of an inbox as of now, for a stream that has just caught up.
pub fn state_update(inbox: InboxKey, counts: Counts) -> pb::InboxUpdate {
    pb::InboxUpdate {
        admin_inbox: inbox.kind == Kind::Admin,
        reason: pb::InboxUpdateReason::State.into(),
        counts: Some(counts.to_pb()),
        ..pb::InboxUpdate::default()
    }
}

/// Which event types make up a user's inbox (`--inbox-types`). Admin notices always make up
/// the admins' inboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSettings {
    types: Vec<TypePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    Exact(String),
    /// The prefix, dot included.
    Family(String),
    Not(Box<TypePattern>),
}

impl TypePattern {
    fn matches(&self, event_type: &str) -> bool {
        match self {
            TypePattern::Exact(exact) => exact == event_type,
            TypePattern::Family(prefix) => event_type.starts_with(prefix.as_str()),
            TypePattern::Not(pattern) => pattern.matches(event_type),
        }
    }
}

/// `--inbox-types`' default: every family of the catalog, without the two that are state
/// rather than news: `quota.updated` (a quota's usage, sent on every change) and
/// `device.status.changed` (a device's status, which flaps).
pub const DEFAULT_INBOX_TYPES: &str =
    "quota.*,billing.*,app.*,device.*,!quota.updated,!device.status.changed";

/// Why `--inbox-types` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an event type, a family (`billing.*`) or either after `!`")]
pub struct InboxTypesError(String);

impl InboxSettings {
    /// Parses a comma-separated list of types (`billing.payment_success`), families
    /// (`billing.*`) and exclusions (`!quota.updated`, `!device.*`): a type is in the inbox when
    /// some pattern includes it and no exclusion names it.
    ///
    /// # Errors
    ///
    /// A pattern that is none of those.
    pub fn parse(list: &str) -> Result<Self, InboxTypesError> {
        let mut types = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (negated, pattern) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            let parsed = match pattern.strip_suffix('*') {
                Some(prefix)
                    if prefix.ends_with('.') && is_type_like(&prefix[..prefix.len() - 1]) =>
                {
                    TypePattern::Family(prefix.to_owned())
                }
                None if is_type_like(pattern) && pattern.contains('.') => {
                    TypePattern::Exact(pattern.to_owned())
                }
                _ => return Err(InboxTypesError(raw.to_owned())),
            };
            types.push(if negated {
                TypePattern::Not(Box::new(parsed))
            } else {
                parsed
            });
        }
        Ok(Self { types })
    }

    /// Whether events of `event_type` about a user are items of that user's inbox.
    pub fn includes(&self, event_type: &str) -> bool {
        let mut included = false;
        for pattern in &self.types {
            match pattern {
                TypePattern::Not(_) if pattern.matches(event_type) => return false,
                TypePattern::Not(_) => {}
                _ => included |= pattern.matches(event_type),
            }
        }
        included
    }
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self::parse(DEFAULT_INBOX_TYPES).unwrap_or(Self { types: Vec::new() })
    }
}

fn is_type_like(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}
