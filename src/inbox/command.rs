//! The inbox's commands: what the writer applies, in order with the events, and their encoding
//! as a message of cluster mode's journal stream (a prost message, like the journal's record).
//!
//! Owns: [`Command`], [`Mark`], [`Target`], and their encoding. Does not own applying them
//! (`store`) or checking who may send them (`grpc`).

use prost::Message as _;

use super::{InboxKey, Kind, Preferences, PreferencesError};
use crate::pb;

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Seen.
    Seen,
    /// Read (and seen).
    Read,
    /// Not read again (still seen).
    Unread,
    /// Out of the inbox and its counts, kept in history.
    Archived,
    /// Back in the inbox.
    Unarchived,
}

impl Mark {
    /// The mark a request names; `None` for unspecified or unknown.
    pub fn from_pb(value: i32) -> Option<Self> {
        match pb::InboxMark::try_from(value).ok()? {
            pb::InboxMark::Unspecified => None,
            pb::InboxMark::Seen => Some(Self::Seen),
            pb::InboxMark::Read => Some(Self::Read),
            pb::InboxMark::Unread => Some(Self::Unread),
            pb::InboxMark::Archived => Some(Self::Archived),
            pb::InboxMark::Unarchived => Some(Self::Unarchived),
        }
    }

    /// As the contract says it.
    pub fn to_pb(self) -> pb::InboxMark {
        match self {
            Self::Seen => pb::InboxMark::Seen,
            Self::Read => pb::InboxMark::Read,
            Self::Unread => pb::InboxMark::Unread,
            Self::Archived => pb::InboxMark::Archived,
            Self::Unarchived => pb::InboxMark::Unarchived,
        }
    }

    /// Whether the mark may name items up to a cursor, or all of them (seen and read only: the
    /// others are answers to one item).
    pub fn takes_ranges(self) -> bool {
        matches!(self, Self::Seen | Self::Read)
    }
}

/// Which items a mark changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These event ids.
    Ids(Vec<String>),
    /// Every item at or before this journal position.
    UpTo(u64),
    /// Every item.
    All,
}

/// What the writer applies to the inboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Marks items of one inbox.
    Mark {
        /// Whose.
        inbox: InboxKey,
        /// What.
        mark: Mark,
        /// Which items.
        target: Target,
    },
    /// Replaces a user's preferences.
    SetPreferences {
        /// Whose.
        user: String,
        /// The new ones (validated).
        preferences: Box<Preferences>,
    },
    /// Creates an admin's admin inbox, with the newest retained notices
    /// ([`super::ADMIN_BACKFILL`]); nothing when it exists.
    JoinAdmin {
        /// The admin.
        admin: String,
    },
}

/// A command as cluster mode's journal stream carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct CommandRecord {
    /// 1 mark, 2 preferences, 3 join.
    #[prost(uint32, tag = "1")]
    op: u32,
    /// `Kind` of the inbox (marks).
    #[prost(uint32, tag = "2")]
    kind: u32,
    /// The owner, user or admin.
    #[prost(string, tag = "3")]
    owner: String,
    /// `pb::InboxMark` (marks).
    #[prost(int32, tag = "4")]
    mark: i32,
    /// The ids (marks by ids).
    #[prost(string, repeated, tag = "5")]
    ids: Vec<String>,
    /// The position (marks up to a cursor).
    #[prost(uint64, optional, tag = "6")]
    up_to: Option<u64>,
    /// Every item (marks).
    #[prost(bool, tag = "7")]
    all: bool,
    /// The preferences.
    #[prost(message, optional, tag = "8")]
    preferences: Option<pb::Preferences>,
}

const OP_MARK: u32 = 1;
const OP_PREFERENCES: u32 = 2;
const OP_JOIN: u32 = 3;

/// Why bytes read back are not a command.
#[derive(Debug, thiserror::Error)]
pub enum DecodeCommandError {
    /// Not the message.
    #[error("an inbox command does not decode")]
    Decode(#[from] prost::DecodeError),
    /// The message, with values this version does not know.
    #[error("an inbox command names an unknown operation, inbox or mark")]
    Unknown,
    /// Preferences that this version refuses.
    #[error(transparent)]
    Preferences(#[from] PreferencesError),
}

impl Command {
    /// The command encoded.
    pub fn encode(&self) -> Vec<u8> {
        let record = match self {
            Command::Mark {
                inbox,
                mark,
                target,
            } => {
                let (ids, up_to, all) = match target {
                    Target::Ids(ids) => (ids.clone(), None, false),
                    Target::UpTo(position) => (Vec::new(), Some(*position), false),
                    Target::All => (Vec::new(), None, true),
                };
                CommandRecord {
                    op: OP_MARK,
                    kind: u32::from(inbox.kind as u8),
                    owner: inbox.owner.clone(),
                    mark: mark.to_pb().into(),
                    ids,
                    up_to,
                    all,
                    preferences: None,
                }
            }
            Command::SetPreferences { user, preferences } => CommandRecord {
                op: OP_PREFERENCES,
                owner: user.clone(),
                preferences: Some(preferences.to_pb()),
                ..CommandRecord::default()
            },
            Command::JoinAdmin { admin } => CommandRecord {
                op: OP_JOIN,
                owner: admin.clone(),
                ..CommandRecord::default()
            },
        };
        record.encode_to_vec()
    }

    /// The command encoded in `bytes`.
    ///
    /// # Errors
    ///
    /// Not a command, or one this version does not know.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeCommandError> {
        let record = CommandRecord::decode(bytes)?;
        Ok(match record.op {
            OP_MARK => {
                let kind = match record.kind {
                    0 => Kind::User,
                    1 => Kind::Admin,
                    _ => return Err(DecodeCommandError::Unknown),
                };
                let mark = Mark::from_pb(record.mark).ok_or(DecodeCommandError::Unknown)?;
                let target = match (record.up_to, record.all) {
                    (Some(position), _) => Target::UpTo(position),
                    (None, true) => Target::All,
                    (None, false) => Target::Ids(record.ids),
                };
                Command::Mark {
                    inbox: InboxKey {
                        kind,
                        owner: record.owner,
                    },
                    mark,
                    target,
                }
            }
            OP_PREFERENCES => Command::SetPreferences {
                user: record.owner,
                preferences: Box::new(Preferences::from_pb(
                    record.preferences.unwrap_or_default(),
                )?),
            },
            OP_JOIN => Command::JoinAdmin {
                admin: record.owner,
            },
            _ => return Err(DecodeCommandError::Unknown),
        })
    }

    /// The user or admin whose state it changes.
    pub fn owner(&self) -> &str {
        match self {
            Command::Mark { inbox, .. } => &inbox.owner,
            Command::SetPreferences { user, .. } => user,
            Command::JoinAdmin { admin } => admin,
        }
    }
}
