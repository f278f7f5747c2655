//! The inbox's state in the journal's own file: items, their ids, counts, the admin notices and
//! the admins, preferences; applied in the write transaction that stores the events (so an
//! event and its item, a mark and what it changed, are committed together or not at all), and
//! read in one snapshot.
//!
//! Owns: the inbox tables, what a new event, a command and a removed event do to them, and the
//! reads (counts, a page, preferences). Does not own: what the states and counts mean
//! (`inbox`), when commands come (the writer), or who may read what (`grpc`).
//!
//! Every read and write is a lookup or a range of one inbox's own keys: a user's counts are one
//! row, a page is a backward range over that user's items, whatever the journal holds besides.
//! A mark costs one row per item it changes (and, for marks up to a cursor or of all items, a
//! pass over the inbox's items up to there).
//!
//! An inbox's items, their ids and its counts are rows of one table, `inbox_state`, under keys
//! that start with the inbox (its kind, then its owner, length-prefixed), so that all of one
//! inbox's rows sit side by side: a new event dirties one leaf of that table, not one leaf in
//! each of three tables (each a random page of its own, written and fsynced with every commit;
//! BENCHMARKS.md §13). The keys are bytes, compared as bytes, so no key is checked for UTF-8 on
//! the way.
//!
//! | table | key | value |
//! |---|---|---|
//! | `inbox_state` | inbox, `c` | [`Counts`] encoded |
//! | `inbox_state` | inbox, `i`, event id | position (8 bytes, little-endian) |
//! | `inbox_state` | inbox, `p`, position (8 bytes, big-endian: in order) | state bits, family |
//! | `inbox_notices` | position of an `admin.notice` | (family, event id) |
//! | `inbox_admins` | admin | position when their inbox was created |
//! | `inbox_preferences` | user | `pb::Preferences` encoded |
//!
//! where "inbox" is the kind (one byte), the owner's length (two bytes, big-endian) and the
//! owner. Journals written before this layout kept the three in tables of their own; they are
//! converted at open (`migrate.rs`).

use prost::Message as _;
use redb::{ReadTransaction, ReadableTable, Table, TableDefinition};

use super::{EVENTS, read_failed, record::read_record};
use crate::{
    inbox::{
        ADMIN_BACKFILL, Applied, Command, Counts, Family, InboxKey, InboxSettings, ItemState, Kind,
        Mark, Marked, Preferences, Reason, Target, Update,
    },
    pb,
    store::{InboxPage, PageItem, PageQuery, StoreError},
};

pub(super) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inbox_state");
pub(super) const NOTICES: TableDefinition<u64, (u8, &str)> = TableDefinition::new("inbox_notices");
pub(super) const ADMINS: TableDefinition<&str, u64> = TableDefinition::new("inbox_admins");
pub(super) const PREFERENCES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("inbox_preferences");

/// Empties every inbox table (a replica adopting another stream's epoch derives them anew).
pub(super) fn delete_all(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.delete_table(STATE)?;
    txn.delete_table(NOTICES)?;
    txn.delete_table(ADMINS)?;
    txn.delete_table(PREFERENCES)?;
    Ok(())
}

/// The inbox tables of one write transaction, and the updates it made.
pub(super) struct InboxWrite<'txn> {
    state: Table<'txn, &'static [u8], &'static [u8]>,
    notices: Table<'txn, u64, (u8, &'static str)>,
    admins: Table<'txn, &'static str, u64>,
    preferences: Table<'txn, &'static str, &'static [u8]>,
    /// What the owners' streams are told, in order.
    pub(super) updates: Vec<Update>,
}

/// The keys of one inbox's rows in `inbox_state`.
pub(super) struct StateKeys {
    /// The counts row's key: the inbox's prefix (the kind, the owner's length and the owner:
    /// what every key of this inbox starts with), then the counts tag. Built once, since
    /// every new item reads and writes the counts.
    counts: Vec<u8>,
}

const COUNTS_TAG: u8 = b'c';
const ID_TAG: u8 = b'i';
const ITEM_TAG: u8 = b'p';

impl StateKeys {
    pub(super) fn new(kind: u8, owner: &str) -> Self {
        // An owner is at most a JWT subject or a producer's user id; one longer than 64 KiB is
        // cut (its keys stay its own unless two such owners share their first 64 KiB).
        let owner = &owner.as_bytes()[..owner.len().min(usize::from(u16::MAX))];
        let mut counts = Vec::with_capacity(3 + owner.len() + 1);
        counts.push(kind);
        counts.extend_from_slice(&(owner.len() as u16).to_be_bytes());
        counts.extend_from_slice(owner);
        counts.push(COUNTS_TAG);
        Self { counts }
    }

    /// What every key of this inbox starts with.
    fn prefix(&self) -> &[u8] {
        &self.counts[..self.counts.len() - 1]
    }

    fn of(inbox: &InboxKey) -> Self {
        Self::new(inbox.kind as u8, &inbox.owner)
    }

    fn tagged(&self, tag: u8, rest: &[u8]) -> Vec<u8> {
        let prefix = self.prefix();
        let mut key = Vec::with_capacity(prefix.len() + 1 + rest.len());
        key.extend_from_slice(prefix);
        key.push(tag);
        key.extend_from_slice(rest);
        key
    }

    pub(super) fn counts(&self) -> &[u8] {
        &self.counts
    }

    pub(super) fn id(&self, id: &str) -> Vec<u8> {
        self.tagged(ID_TAG, id.as_bytes())
    }

    pub(super) fn item(&self, position: u64) -> Vec<u8> {
        self.tagged(ITEM_TAG, &position.to_be_bytes())
    }

    /// The position in an item's key.
    fn item_position(key: &[u8]) -> u64 {
        key.last_chunk::<8>().map_or(0, |p| u64::from_be_bytes(*p))
    }
}

/// An item row's value: its state bits and its family's code.
pub(super) fn item_value(bits: u8, family: u8) -> [u8; 2] {
    [bits, family]
}

fn item_of(value: &[u8]) -> (u8, u8) {
    match value {
        [bits, family, ..] => (*bits, *family),
        // Not written by this version: an item of no known family (skipped, never counted).
        _ => (0, u8::MAX),
    }
}

fn position_of(value: &[u8]) -> Option<u64> {
    value.first_chunk::<8>().map(|p| u64::from_le_bytes(*p))
}

fn received_ms(event: &pb::Event) -> i64 {
    event.received_at.as_ref().map_or(0, |at| {
        at.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(at.nanos / 1_000_000))
    })
}

impl<'txn> InboxWrite<'txn> {
    pub(super) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            state: txn.open_table(STATE)?,
            notices: txn.open_table(NOTICES)?,
            admins: txn.open_table(ADMINS)?,
            preferences: txn.open_table(PREFERENCES)?,
            updates: Vec::new(),
        })
    }

    fn counts_of(&self, keys: &StateKeys) -> Result<Counts, redb::Error> {
        Ok(self
            .state
            .get(keys.counts())?
            .map_or_else(Counts::default, |v| Counts::decode(v.value())))
    }

    fn preferences_of(&self, user: &str) -> Result<Option<Preferences>, redb::Error> {
        let Some(stored) = self.preferences.get(user)? else {
            return Ok(None);
        };
        // Only validated preferences are stored; ones this version refuses count as none.
        Ok(pb::Preferences::decode(stored.value())
            .ok()
            .and_then(|p| Preferences::from_pb(p).ok()))
    }

    /// Adds an item; `false` when it was there already (an event in doubt stored again).
    fn add_item(
        &mut self,
        keys: &StateKeys,
        position: u64,
        family: Family,
        id: &str,
        counts: &mut Counts,
    ) -> Result<bool, redb::Error> {
        let item = keys.item(position);
        if self.state.get(item.as_slice())?.is_some() {
            return Ok(false);
        }
        self.state.insert(
            item.as_slice(),
            item_value(ItemState::NEW.bits(), family.code()).as_slice(),
        )?;
        self.state
            .insert(keys.id(id).as_slice(), position.to_le_bytes().as_slice())?;
        counts.count(family, ItemState::NEW, true);
        Ok(true)
    }

    fn store_counts(&mut self, keys: &StateKeys, counts: &Counts) -> Result<(), redb::Error> {
        self.state
            .insert(keys.counts(), counts.encode().as_slice())?;
        Ok(())
    }

    /// What a newly stored event does to the inboxes; returns whether its type is disabled by
    /// the preferences of the user it is about (not pushed live on that user's own streams).
    pub(super) fn event_stored(
        &mut self,
        settings: &InboxSettings,
        event: &pb::Event,
        position: u64,
    ) -> Result<bool, redb::Error> {
        if matches!(event.payload, Some(pb::event::Payload::AdminNotice(_))) {
            let Some(family) = Family::of_event(event) else {
                return Ok(false);
            };
            self.notices
                .insert(position, (family.code(), event.id.as_str()))?;
            let admins: Vec<String> = self
                .admins
                .iter()?
                .map(|entry| entry.map(|(admin, _)| admin.value().to_owned()))
                .collect::<Result<_, _>>()?;
            for admin in admins {
                let inbox = InboxKey::admin(admin);
                let keys = StateKeys::of(&inbox);
                let mut counts = self.counts_of(&keys)?;
                if self.add_item(&keys, position, family, &event.id, &mut counts)? {
                    self.store_counts(&keys, &counts)?;
                    self.updates.push(new_item(inbox, counts, &event.id, false));
                }
            }
            return Ok(false);
        }
        if event.user_id.is_empty() {
            return Ok(false);
        }
        // Muted whether or not the type is an inbox type: the streams that follow the
        // preferences leave it out, live and replayed alike.
        let preferences = self.preferences_of(&event.user_id)?;
        if preferences
            .as_ref()
            .is_some_and(|p| !p.enabled(&event.r#type))
        {
            return Ok(true);
        }
        if !settings.includes(&event.r#type) {
            return Ok(false);
        }
        let Some(family) = Family::of_event(event) else {
            return Ok(false);
        };
        let quiet = preferences
            .as_ref()
            .is_some_and(|p| p.quiet_at(&event.r#type, received_ms(event)));
        let inbox = InboxKey::user(event.user_id.clone());
        let keys = StateKeys::of(&inbox);
        let mut counts = self.counts_of(&keys)?;
        if self.add_item(&keys, position, family, &event.id, &mut counts)? {
            self.store_counts(&keys, &counts)?;
            self.updates.push(new_item(inbox, counts, &event.id, quiet));
        }
        Ok(false)
    }

    /// Applies one command.
    pub(super) fn apply(&mut self, command: &Command) -> Result<Applied, redb::Error> {
        match command {
            Command::Mark {
                inbox,
                mark,
                target,
            } => {
                if inbox.kind == Kind::Admin {
                    self.join(&inbox.owner)?;
                }
                self.mark(inbox, *mark, target).map(Applied::Marked)
            }
            Command::SetPreferences { user, preferences } => {
                self.preferences.insert(
                    user.as_str(),
                    preferences.to_pb().encode_to_vec().as_slice(),
                )?;
                let inbox = InboxKey::user(user.clone());
                let counts = self.counts_of(&StateKeys::of(&inbox))?;
                self.updates.push(Update {
                    inbox,
                    reason: Reason::Preferences,
                    counts,
                    ids: Vec::new(),
                    up_to: None,
                    all: false,
                    quiet: false,
                });
                Ok(Applied::Preferences(preferences.clone()))
            }
            Command::JoinAdmin { admin } => {
                self.join(admin)?;
                Ok(Applied::Joined)
            }
        }
    }

    /// Creates `admin`'s admin inbox with the newest retained notices, unless it exists.
    fn join(&mut self, admin: &str) -> Result<(), redb::Error> {
        if self.admins.get(admin)?.is_some() {
            return Ok(());
        }
        let newest: Vec<(u64, u8, String)> = self
            .notices
            .iter()?
            .rev()
            .take(ADMIN_BACKFILL)
            .map(|entry| {
                entry.map(|(position, value)| {
                    let (family, id) = value.value();
                    (position.value(), family, id.to_owned())
                })
            })
            .collect::<Result<_, _>>()?;
        let keys = StateKeys::new(Kind::Admin as u8, admin);
        let mut counts = self.counts_of(&keys)?;
        let mut last = 0;
        for (position, family, id) in newest {
            if let Some(family) = Family::from_code(family) {
                self.add_item(&keys, position, family, &id, &mut counts)?;
            }
            last = last.max(position);
        }
        self.store_counts(&keys, &counts)?;
        self.admins.insert(admin, last)?;
        Ok(())
    }

    fn mark(
        &mut self,
        inbox: &InboxKey,
        mark: Mark,
        target: &Target,
    ) -> Result<Marked, redb::Error> {
        let keys = StateKeys::of(inbox);
        let mut counts = self.counts_of(&keys)?;
        let mut changed_ids = Vec::new();
        let mut unknown_ids = Vec::new();
        let mut changed = 0_u32;
        let mut change = |state: &mut Table<'txn, &'static [u8], &'static [u8]>,
                          position: u64,
                          bits: u8,
                          family: u8|
         -> Result<bool, redb::Error> {
            let from = ItemState::from_bits(bits);
            let to = from.marked(mark);
            if to == from {
                return Ok(false);
            }
            state.insert(
                keys.item(position).as_slice(),
                item_value(to.bits(), family).as_slice(),
            )?;
            if let Some(family) = Family::from_code(family) {
                counts.change(family, from, to);
            }
            changed += 1;
            Ok(true)
        };
        match target {
            Target::Ids(ids) => {
                for id in ids {
                    let position = self
                        .state
                        .get(keys.id(id).as_slice())?
                        .and_then(|v| position_of(v.value()));
                    let item = match position {
                        Some(position) => self
                            .state
                            .get(keys.item(position).as_slice())?
                            .map(|v| (position, item_of(v.value()))),
                        None => None,
                    };
                    match item {
                        Some((position, (bits, family))) => {
                            if change(&mut self.state, position, bits, family)? {
                                changed_ids.push(id.clone());
                            }
                        }
                        None => unknown_ids.push(id.clone()),
                    }
                }
            }
            Target::UpTo(_) | Target::All => {
                let through = match target {
                    Target::UpTo(position) => *position,
                    _ => u64::MAX,
                };
                let (first, last) = (keys.item(0), keys.item(through));
                let pending: Vec<(u64, u8, u8)> = self
                    .state
                    .range(first.as_slice()..=last.as_slice())?
                    .filter_map(|entry| match entry {
                        Ok((k, v)) => {
                            let (bits, family) = item_of(v.value());
                            let state = ItemState::from_bits(bits);
                            (state.marked(mark) != state)
                                .then(|| Ok((StateKeys::item_position(k.value()), bits, family)))
                        }
                        Err(error) => Some(Err(error)),
                    })
                    .collect::<Result<_, _>>()?;
                for (position, bits, family) in pending {
                    change(&mut self.state, position, bits, family)?;
                }
            }
        }
        self.store_counts(&keys, &counts)?;
        if changed > 0 {
            self.updates.push(Update {
                inbox: inbox.clone(),
                reason: Reason::Marked(mark),
                counts,
                ids: changed_ids,
                up_to: match target {
                    Target::UpTo(position) => Some(*position),
                    _ => None,
                },
                all: matches!(target, Target::All),
                quiet: false,
            });
        }
        Ok(Marked {
            counts,
            changed,
            unknown_ids,
        })
    }

    /// What removing the event at `position` (retention) does to the inboxes: its items and
    /// their counts go.
    pub(super) fn event_removed(
        &mut self,
        position: u64,
        event_type: &str,
        user: &str,
        id: &str,
    ) -> Result<(), redb::Error> {
        if self.notices.remove(position)?.is_some() {
            let admins: Vec<String> = self
                .admins
                .iter()?
                .map(|entry| entry.map(|(admin, _)| admin.value().to_owned()))
                .collect::<Result<_, _>>()?;
            for admin in admins {
                self.remove_item(&InboxKey::admin(admin), position, id)?;
            }
        } else if !user.is_empty() && Family::of_type(event_type).is_some() {
            self.remove_item(&InboxKey::user(user), position, id)?;
        }
        Ok(())
    }

    fn remove_item(
        &mut self,
        inbox: &InboxKey,
        position: u64,
        id: &str,
    ) -> Result<(), redb::Error> {
        let keys = StateKeys::of(inbox);
        let Some(removed) = self.state.remove(keys.item(position).as_slice())? else {
            return Ok(());
        };
        let (bits, family) = item_of(removed.value());
        drop(removed);
        self.state.remove(keys.id(id).as_slice())?;
        let mut counts = self.counts_of(&keys)?;
        if let Some(family) = Family::from_code(family) {
            counts.count(family, ItemState::from_bits(bits), false);
        }
        self.store_counts(&keys, &counts)
    }
}

fn new_item(inbox: InboxKey, counts: Counts, id: &str, quiet: bool) -> Update {
    Update {
        inbox,
        reason: Reason::NewItems,
        counts,
        ids: vec![id.to_owned()],
        up_to: None,
        all: false,
        quiet,
    }
}

/// Opens an inbox table in a read transaction; a journal that never stored inbox state has
/// none (`None`).
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(read_failed(error)),
    }
}

/// An inbox's counts in `txn`.
pub(super) fn counts_in(txn: &ReadTransaction, inbox: &InboxKey) -> Result<Counts, StoreError> {
    let Some(table) = read_table(txn, STATE)? else {
        return Ok(Counts::default());
    };
    Ok(table
        .get(StateKeys::of(inbox).counts())
        .map_err(read_failed)?
        .map_or_else(Counts::default, |v| Counts::decode(v.value())))
}

/// Whether `admin`'s admin inbox exists in `txn`.
pub(super) fn admin_known_in(txn: &ReadTransaction, admin: &str) -> Result<bool, StoreError> {
    let Some(table) = read_table(txn, ADMINS)? else {
        return Ok(false);
    };
    Ok(table.get(admin).map_err(read_failed)?.is_some())
}

/// `user`'s preferences in `txn` (`None`: never set).
pub(super) fn preferences_in(
    txn: &ReadTransaction,
    user: &str,
) -> Result<Option<Preferences>, StoreError> {
    let Some(table) = read_table(txn, PREFERENCES)? else {
        return Ok(None);
    };
    let Some(stored) = table.get(user).map_err(read_failed)? else {
        return Ok(None);
    };
    Ok(pb::Preferences::decode(stored.value())
        .ok()
        .and_then(|p| Preferences::from_pb(p).ok()))
}

/// A page of an inbox in `txn`, newest first, with its counts from the same snapshot.
pub(super) fn page_in(
    txn: &ReadTransaction,
    inbox: &InboxKey,
    query: &PageQuery,
) -> Result<InboxPage, StoreError> {
    let counts = counts_in(txn, inbox)?;
    let mut page = InboxPage {
        items: Vec::new(),
        next_before: 0,
        end: true,
        counts,
    };
    let Some(items) = read_table(txn, STATE)? else {
        return Ok(page);
    };
    let events = txn.open_table(EVENTS).map_err(read_failed)?;
    let keys = StateKeys::of(inbox);
    let before = query.before.unwrap_or(u64::MAX);
    if before == 0 {
        return Ok(page);
    }
    let (first, end) = (keys.item(0), keys.item(before));
    let range = items
        .range(first.as_slice()..end.as_slice())
        .map_err(read_failed)?
        .rev();
    for (scanned, entry) in range.enumerate() {
        let (k, v) = entry.map_err(read_failed)?;
        let position = StateKeys::item_position(k.value());
        let (bits, family) = item_of(v.value());
        if page.items.len() == query.limit || scanned == query.max_scanned {
            page.end = false;
            return Ok(page);
        }
        page.next_before = position;
        let state = ItemState::from_bits(bits);
        let Some(family) = Family::from_code(family) else {
            continue;
        };
        if !state.passes(query.filter)
            || (!query.families.is_empty() && !query.families.contains(&family))
        {
            continue;
        }
        let Some(record) = events.get(position).map_err(read_failed)? else {
            // Retention removes the event and its item in one transaction: an item without
            // its event is not served.
            continue;
        };
        let frame = read_record(record.value(), |view| {
            bytes::Bytes::copy_from_slice(view.frame)
        })
        .map_err(|source| StoreError::Corrupt { position, source })?;
        page.items.push(PageItem {
            position,
            state,
            family,
            frame,
        });
    }
    Ok(page)
}
