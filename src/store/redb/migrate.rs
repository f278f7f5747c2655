//! Converting what earlier versions wrote to what this one reads, at open, in the open's one
//! write transaction: every record or, when one cannot be read, none (the open stops with the
//! reason and the file is left as it was).
//!
//! Owns: the first record format (written before `meta` had a `format` key) and the first
//! layout of the inbox's state (items, ids and counts in three tables), which nothing else
//! reads any more. Does not own: the current record (`record.rs`), the current inbox layout
//! (`inbox.rs`) or when the conversions run (`RedbJournal::open`).
//!
//! The first format: `appended_ms` (8 bytes, little-endian), then the id, type, user and
//! device, each a 16-bit little-endian length and that many bytes of UTF-8, then the frame (the
//! rest). Its reader used to take a record that did not parse for empty fields; here it is
//! strict: a record cut short or not UTF-8 stops the conversion.

use redb::ReadableTable as _;

use redb::TableHandle as _;

use super::{
    BYTES, EVENTS, META, OpenCause, engine,
    inbox::{STATE, StateKeys, item_value},
    record::Record,
};
use crate::pb;

/// The first inbox layout's tables (issue 25's first version): (kind, owner, position) →
/// (state bits, family); (kind, owner, event id) → position; (kind, owner) → counts.
const FIRST_ITEMS: redb::TableDefinition<(u8, &str, u64), (u8, u8)> =
    redb::TableDefinition::new("inbox_items");
const FIRST_IDS: redb::TableDefinition<(u8, &str, &str), u64> =
    redb::TableDefinition::new("inbox_ids");
const FIRST_COUNTS: redb::TableDefinition<(u8, &str), &[u8]> =
    redb::TableDefinition::new("inbox_counts");

/// Moves the rows of the first inbox layout's three tables into `inbox_state` and deletes
/// the three; returns how many rows it moved (0 when the journal has none of them).
pub(super) fn merge_inbox_tables(txn: &redb::WriteTransaction) -> Result<u64, OpenCause> {
    let names: Vec<String> = txn
        .list_tables()
        .map_err(engine)?
        .map(|table| table.name().to_owned())
        .collect();
    let has = |table: &str| names.iter().any(|name| name == table);
    if ![FIRST_ITEMS.name(), FIRST_IDS.name(), FIRST_COUNTS.name()]
        .iter()
        .any(|table| has(table))
    {
        return Ok(0);
    }
    let mut state = txn.open_table(STATE).map_err(engine)?;
    let mut moved = 0_u64;
    if has(FIRST_ITEMS.name()) {
        let items = txn.open_table(FIRST_ITEMS).map_err(engine)?;
        for entry in items.iter().map_err(engine)? {
            let (key, value) = entry.map_err(engine)?;
            let ((kind, owner, position), (bits, family)) = (key.value(), value.value());
            let keys = StateKeys::new(kind, owner);
            state
                .insert(
                    keys.item(position).as_slice(),
                    item_value(bits, family).as_slice(),
                )
                .map_err(engine)?;
            moved += 1;
        }
    }
    if has(FIRST_IDS.name()) {
        let ids = txn.open_table(FIRST_IDS).map_err(engine)?;
        for entry in ids.iter().map_err(engine)? {
            let (key, value) = entry.map_err(engine)?;
            let (kind, owner, id) = key.value();
            state
                .insert(
                    StateKeys::new(kind, owner).id(id).as_slice(),
                    value.value().to_le_bytes().as_slice(),
                )
                .map_err(engine)?;
            moved += 1;
        }
    }
    if has(FIRST_COUNTS.name()) {
        let counts = txn.open_table(FIRST_COUNTS).map_err(engine)?;
        for entry in counts.iter().map_err(engine)? {
            let (key, value) = entry.map_err(engine)?;
            let (kind, owner) = key.value();
            state
                .insert(StateKeys::new(kind, owner).counts(), value.value())
                .map_err(engine)?;
            moved += 1;
        }
    }
    drop(state);
    txn.delete_table(FIRST_ITEMS).map_err(engine)?;
    txn.delete_table(FIRST_IDS).map_err(engine)?;
    txn.delete_table(FIRST_COUNTS).map_err(engine)?;
    Ok(moved)
}

/// Records converted per pass: redb cannot write a table while iterating it, so each pass
/// reads this many, then writes them back (bounding the memory a large journal takes).
const PER_PASS: usize = 4096;

/// Converts every record of `txn`'s `events` from the first format to the current one and
/// corrects the journal's size (`--retention-bytes`) by the difference; returns how many
/// records it converted. The caller records the new format and commits.
pub(super) fn convert(txn: &redb::WriteTransaction) -> Result<u64, OpenCause> {
    let mut events = txn.open_table(EVENTS).map_err(engine)?;
    let (mut old_bytes, mut new_bytes, mut converted) = (0_u64, 0_u64, 0_u64);
    let mut next = 0;
    loop {
        let mut pass = Vec::with_capacity(PER_PASS);
        for entry in events.range(next..).map_err(engine)?.take(PER_PASS) {
            let (position, value) = entry.map_err(engine)?;
            let (position, value) = (position.value(), value.value());
            let record = read_first_format(value)
                .map_err(|what| OpenCause::Unconvertible { position, what })?;
            old_bytes += value.len() as u64;
            pass.push((position, record));
        }
        let Some(&(last, _)) = pass.last() else {
            break;
        };
        for (position, mut record) in pass {
            let encoded = Record::encode_event(&mut record.0, record.1, &record.2);
            new_bytes += encoded.len() as u64;
            events
                .insert(position, encoded.as_slice())
                .map_err(engine)?;
            converted += 1;
        }
        next = last + 1;
    }
    drop(events);
    if converted > 0 {
        let mut meta = txn.open_table(META).map_err(engine)?;
        let stored = meta.get(BYTES).map_err(engine)?.map_or(0, |v| v.value());
        let corrected = stored.saturating_sub(old_bytes).saturating_add(new_bytes);
        meta.insert(BYTES, corrected).map_err(engine)?;
    }
    Ok(converted)
}

/// A record of the first format: the event's id, type, user and device (the rest left
/// empty), its append time and its frame.
struct FirstFormat(pb::Event, u64, bytes::Bytes);

/// Reads a record of the first format, strictly.
fn read_first_format(bytes: &[u8]) -> Result<FirstFormat, &'static str> {
    let (appended_ms, mut rest) = bytes
        .split_first_chunk::<8>()
        .ok_or("shorter than its append time")?;
    let mut text = || -> Result<String, &'static str> {
        let (len, tail) = rest
            .split_first_chunk::<2>()
            .ok_or("a field's length is missing")?;
        let (value, tail) = tail
            .split_at_checked(usize::from(u16::from_le_bytes(*len)))
            .ok_or("a field is cut short")?;
        rest = tail;
        std::str::from_utf8(value)
            .map(str::to_owned)
            .map_err(|_| "a field is not UTF-8")
    };
    let event = pb::Event {
        id: text()?,
        r#type: text()?,
        user_id: text()?,
        device_id: text()?,
        ..Default::default()
    };
    Ok(FirstFormat(
        event,
        u64::from_le_bytes(*appended_ms),
        bytes::Bytes::copy_from_slice(rest),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redb::Database;

    use super::super::{
        CURRENT_FORMAT, DEDUPE_FLOOR, EPOCH, FLOOR, FORMAT, IDS, RedbJournal, record::read_record,
        test_support::*,
    };
    use super::*;
    use crate::store::{Journal as _, encode_event_frame};

    /// A record in the first format, as the version before the `format` key wrote it.
    fn first_format(event: &pb::Event, appended_ms: u64, frame: &[u8]) -> Vec<u8> {
        let mut out = appended_ms.to_le_bytes().to_vec();
        for text in [&event.id, &event.r#type, &event.user_id, &event.device_id] {
            let len = u16::try_from(text.len()).unwrap();
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(frame);
        out
    }

    /// Writes a journal as the version before the `format` key left it: epoch 7, events
    /// `e1..=e5` at positions 1..=5 (u2's the even ones) appended at `appended_ms`, their ids,
    /// the size counter, and a floor of 0. Returns the events' frames.
    fn write_first_format_journal(dir: &TestDir, appended_ms: u64) -> Vec<Vec<u8>> {
        std::fs::create_dir_all(dir.journal()).unwrap();
        let db = Database::create(dir.journal().join("journal.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let mut frames = Vec::new();
        {
            let mut events = txn.open_table(EVENTS).unwrap();
            let mut ids = txn.open_table(IDS).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            let mut bytes = 0;
            for position in 1..=5_u64 {
                let mut event = event(
                    &format!("e{position}"),
                    if position % 2 == 0 { "u2" } else { "u1" },
                );
                event.cursor = crate::store::Cursor { epoch: 7, position }.to_string();
                let frame = encode_event_frame(&event);
                let record = first_format(&event, appended_ms, &frame);
                bytes += record.len() as u64;
                events.insert(position, record.as_slice()).unwrap();
                ids.insert(event.id.as_str(), (position, appended_ms))
                    .unwrap();
                frames.push(frame.to_vec());
            }
            meta.insert(EPOCH, 7).unwrap();
            meta.insert(BYTES, bytes).unwrap();
            meta.insert(FLOOR, 0).unwrap();
            meta.insert(DEDUPE_FLOOR, 0).unwrap();
        }
        txn.commit().unwrap();
        frames
    }

    /// The records as stored, each read as the current format.
    fn stored_records(dir: &TestDir) -> Vec<(u64, Vec<u8>)> {
        let db = Database::create(dir.journal().join("journal.redb")).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let events = txn.open_table(EVENTS).unwrap();
        events
            .iter()
            .unwrap()
            .map(|entry| {
                let (position, value) = entry.unwrap();
                (position.value(), value.value().to_vec())
            })
            .collect()
    }

    #[test]
    fn a_journal_of_the_first_format_is_converted_at_open_and_reads_as_before() {
        let dir = TestDir::new();
        let t0 = crate::store::unix_millis();
        let frames = write_first_format_journal(&dir, t0);
        let mut journal = dir.open();
        // The same journal: epoch, head, events and their frames, ids.
        assert_eq!(journal.head().epoch, 7);
        assert_eq!(journal.head().position, 5);
        let reader = journal.reader();
        let stored = read_after(&*reader, 0, 10);
        assert_eq!(
            stored
                .iter()
                .map(|e| (e.position, &*e.user_id, e.frame.to_vec()))
                .collect::<Vec<_>>(),
            (1..=5_u64)
                .map(|p| (
                    p,
                    if p % 2 == 0 { "u2" } else { "u1" },
                    frames[p as usize - 1].clone()
                ))
                .collect::<Vec<_>>()
        );
        assert_eq!(&*stored[0].event_type, "device.error");
        assert_eq!(&*stored[0].device_id, "d1");
        let out = journal.append(&mut [event("e2", "u2")]).unwrap();
        assert!(out[0].duplicate && !out[0].conflict, "{out:?}");
        drop((journal, reader));
        // Every record is in the current format, and the size counter (`--retention-bytes`)
        // counts them as they are now.
        let records = stored_records(&dir);
        for (_, record) in &records {
            assert_eq!(read_record(record, |record| record.appended_ms), Ok(t0));
        }
        let total: u64 = records.iter().map(|(_, r)| r.len() as u64).sum();
        assert_eq!(meta_value(&dir, BYTES), Some(total));
        assert_eq!(meta_value(&dir, FORMAT), Some(CURRENT_FORMAT));
        // Opened again: converted once, not again (the records stay as they are).
        drop(dir.open());
        assert_eq!(stored_records(&dir), records);
    }

    /// The value of `key` in `meta`.
    fn meta_value(dir: &TestDir, key: &str) -> Option<u64> {
        let db = Database::create(dir.journal().join("journal.redb")).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(key).unwrap().map(|v| v.value())
    }

    #[test]
    fn a_first_format_record_that_does_not_parse_stops_the_open_and_changes_nothing() {
        let dir = TestDir::new();
        write_first_format_journal(&dir, crate::store::unix_millis());
        {
            let db = Database::create(dir.journal().join("journal.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            // Position 4: the id says 300 bytes follow; fewer do.
            txn.open_table(EVENTS)
                .unwrap()
                .insert(4, &[0_u8, 0, 0, 0, 0, 0, 0, 0, 0x2c, 0x01, b'e'][..])
                .unwrap();
            txn.commit().unwrap();
        }
        let before = stored_records(&dir);
        let error = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap_err();
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause
                .as_deref()
                .is_some_and(|cause| cause.contains("position 4") && cause.contains("cut short")),
            "{cause:?}"
        );
        assert_eq!(stored_records(&dir), before, "nothing was converted");
        let error = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap_err();
        assert!(error.to_string().contains("--data-dir"), "{error}");
    }

    #[test]
    fn the_first_formats_reader_is_strict() {
        let good = first_format(&event("id", "u"), 9, b"frame");
        let read = read_first_format(&good).unwrap();
        assert_eq!(
            (&*read.0.id, &*read.0.user_id, read.1, &*read.2),
            ("id", "u", 9, &b"frame"[..])
        );
        assert_eq!(
            read_first_format(&good[..7]).err(),
            Some("shorter than its append time")
        );
        assert_eq!(
            read_first_format(&good[..9]).err(),
            Some("a field's length is missing")
        );
        assert_eq!(
            read_first_format(&good[..11]).err(),
            Some("a field is cut short")
        );
        let mut bad = good.clone();
        bad[10] = 0xff;
        assert_eq!(read_first_format(&bad).err(), Some("a field is not UTF-8"));
    }
}
