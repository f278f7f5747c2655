//! The journal's record: one stored event as the `events` table holds it, a protobuf message
//! ([`Record`], derived with prost as the tracing code's messages are), and the borrowing reader
//! the scans use ([`RecordView`]).
//!
//! Owns: the record's fields and tags (record format 2, see `FORMAT` in `mod.rs`), encoding a
//! new event's record, reading one back, and what a record that does not decode is (prost's
//! [`DecodeError`]). Does not own: the first record format, which only the conversion at open
//! reads (`migrate.rs`), or what a caller does with a record that does not decode (scans report
//! it as `StoreError::Corrupt`; the writer's upkeep steps over it, see `append.rs`).
//!
//! Why a borrowing reader beside the derive: a scan examines every record in its range and
//! selects few (a replay for one user), and prost decodes strings and bytes into owned
//! `String`s and `Bytes`: four allocations and a copy of the frame per record examined, which
//! made a scan about twice as slow as the hand codec this replaces. [`RecordView`] reads the
//! same message in place (nothing copied until an event is selected). Measured in release mode
//! on 100k records of about 300 bytes, best of 15 on a loaded machine: one in fifty selected,
//! ~20 ms with the old codec, ~23 ms now; all selected, ~66 ms and ~72 ms (the walk over
//! protobuf tags is what remains; a view of `Cow`s, to carry prost's decoding where the walk
//! gives up, cost a quarter more, hence [`read_record`]'s callback). It walks the message
//! with prost's own wire primitives and hands whatever it does not read to the derive, so
//! what a record is, and what its error is, are prost's (the tests compare the two on
//! arbitrary bytes).

use bytes::Bytes;
use prost::{
    DecodeError, Message as _,
    encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field},
};

use crate::{
    pb,
    store::{EventMeta, StoredEvent},
};

/// One stored event: when it was appended, what dedupe and routing need, and its frame.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    /// Milliseconds since the Unix epoch when it was appended: the dedupe window and retention
    /// by age count from here.
    #[prost(uint64, tag = "1")]
    pub(super) appended_ms: u64,
    /// `Event.id`, for the dedupe window's upkeep (the `ids` table maps it back here).
    #[prost(string, tag = "2")]
    pub(super) id: String,
    /// `Event.type`.
    #[prost(string, tag = "3")]
    pub(super) event_type: String,
    /// `Event.user_id`.
    #[prost(string, tag = "4")]
    pub(super) user_id: String,
    /// `Event.device_id`.
    #[prost(string, tag = "5")]
    pub(super) device_id: String,
    /// The encoded `SubscribeResponse { event }`, cursor stamped: sent as it is.
    #[prost(bytes = "bytes", tag = "6")]
    pub(super) frame: Bytes,
}

/// The tags of [`Record`]'s fields, for [`RecordView`].
const APPENDED_MS: u32 = 1;
const ID: u32 = 2;
const EVENT_TYPE: u32 = 3;
const USER_ID: u32 = 4;
const DEVICE_ID: u32 = 5;
const FRAME: u32 = 6;

/// The contents of the length-delimited field at the start of `buf` (after its key), which
/// it then leaves behind; `None` if `buf` holds less than its length says.
fn delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    let (field, rest) = buf.split_at_checked(len)?;
    *buf = rest;
    Some(field)
}

impl Record {
    /// The record of `event` (cursor stamped, encoded as `frame`) appended at `appended_ms`,
    /// encoded. The event's strings are moved into the record for the encoding and back, so
    /// nothing is copied but into the output.
    pub(super) fn encode_event(event: &mut pb::Event, appended_ms: u64, frame: &Bytes) -> Vec<u8> {
        let record = Record {
            appended_ms,
            id: std::mem::take(&mut event.id),
            event_type: std::mem::take(&mut event.r#type),
            user_id: std::mem::take(&mut event.user_id),
            device_id: std::mem::take(&mut event.device_id),
            frame: frame.clone(),
        };
        let encoded = record.encode_to_vec();
        event.id = record.id;
        event.r#type = record.event_type;
        event.user_id = record.user_id;
        event.device_id = record.device_id;
        encoded
    }
}

/// A stored [`Record`] read in place: its strings and frame borrowed from the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordView<'a> {
    /// [`Record::appended_ms`].
    pub(super) appended_ms: u64,
    /// [`Record::id`].
    pub(super) id: &'a str,
    /// [`Record::event_type`].
    pub(super) event_type: &'a str,
    /// [`Record::user_id`].
    pub(super) user_id: &'a str,
    /// [`Record::device_id`].
    pub(super) device_id: &'a str,
    /// [`Record::frame`].
    pub(super) frame: &'a [u8],
}

/// Reads the record encoded in `bytes` and hands it to `read`: in place, or (should the fast
/// reader refuse a record prost reads) as prost decodes it, so what a record is, is prost's
/// to say. A callback rather than a returned view, so that the view can borrow from either.
///
/// # Errors
///
/// `bytes` is not a [`Record`] (only a bug or damage past redb's checksums makes one):
/// prost's error for it.
#[inline]
pub(super) fn read_record<T>(
    bytes: &[u8],
    read: impl FnOnce(RecordView<'_>) -> T,
) -> Result<T, DecodeError> {
    match RecordView::walk(bytes) {
        Some(view) => Ok(read(view)),
        None => decoded(bytes, read),
    }
}

/// [`read_record`] through prost's decoder (cold: only for what [`RecordView::walk`]
/// refused, which prost refuses too; the tests compare the two).
#[cold]
fn decoded<T>(bytes: &[u8], read: impl FnOnce(RecordView<'_>) -> T) -> Result<T, DecodeError> {
    let record = Record::decode(bytes)?;
    Ok(read(RecordView::of(&record)))
}

impl<'a> RecordView<'a> {
    /// A record with every field at its default.
    const EMPTY: Self = Self {
        appended_ms: 0,
        id: "",
        event_type: "",
        user_id: "",
        device_id: "",
        frame: &[],
    };

    /// A decoded record, seen as one read in place.
    fn of(record: &'a Record) -> Self {
        Self {
            appended_ms: record.appended_ms,
            id: &record.id,
            event_type: &record.event_type,
            user_id: &record.user_id,
            device_id: &record.device_id,
            frame: &record.frame,
        }
    }

    /// The fields of `bytes` in place, or `None` where they are not a record. Each refusal is
    /// one of prost's (the same primitives, the same checks of wire type, length and UTF-8);
    /// like the derive, a field given twice keeps its last value and an unknown one is skipped.
    #[inline]
    fn walk(bytes: &'a [u8]) -> Option<Self> {
        let mut view = Self::EMPTY;
        let mut buf = bytes;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf).ok()?;
            match (tag, wire_type) {
                (APPENDED_MS, WireType::Varint) => {
                    view.appended_ms = decode_varint(&mut buf).ok()?;
                }
                (FRAME, WireType::LengthDelimited) => view.frame = delimited(&mut buf)?,
                (ID..=DEVICE_ID, WireType::LengthDelimited) => {
                    let text = std::str::from_utf8(delimited(&mut buf)?).ok()?;
                    match tag {
                        ID => view.id = text,
                        EVENT_TYPE => view.event_type = text,
                        USER_ID => view.user_id = text,
                        DEVICE_ID => view.device_id = text,
                        _ => return None,
                    }
                }
                // A field of the record with another wire type than its own.
                (APPENDED_MS..=FRAME, _) => return None,
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?,
            }
        }
        Some(view)
    }

    /// What a scan's selection looks at.
    pub(super) fn meta(&self) -> EventMeta<'a> {
        EventMeta {
            event_type: self.event_type,
            user_id: self.user_id,
            device_id: self.device_id,
        }
    }

    /// The record as a scan returns it, at `position` (the frame copied out of the page).
    pub(super) fn stored(&self, position: u64) -> StoredEvent {
        StoredEvent {
            position,
            event_type: self.event_type.into(),
            user_id: self.user_id.into(),
            device_id: self.device_id.into(),
            frame: Bytes::copy_from_slice(self.frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_event_is_stored_as_its_record_and_read_back_in_place() {
        let mut event = pb::Event {
            id: "e1".into(),
            r#type: "device.error".into(),
            user_id: "u1".into(),
            device_id: "d1".into(),
            cursor: "c".into(),
            ..Default::default()
        };
        let frame = crate::store::encode_event_frame(&event);
        let encoded = Record::encode_event(&mut event, 1_700_000_000_123, &frame);
        // The event keeps its fields.
        assert_eq!((&*event.id, &*event.user_id), ("e1", "u1"));
        let record = Record::decode(encoded.as_slice()).unwrap();
        assert_eq!(
            record,
            Record {
                appended_ms: 1_700_000_000_123,
                id: "e1".into(),
                event_type: "device.error".into(),
                user_id: "u1".into(),
                device_id: "d1".into(),
                frame: frame.clone(),
            }
        );
        let view = RecordView::walk(&encoded).expect("read in place");
        assert_eq!(view, RecordView::of(&record));
        assert_eq!(view.meta().device_id, "d1");
        let stored = read_record(&encoded, |view| view.stored(3)).unwrap();
        assert_eq!((stored.position, stored.frame), (3, frame));
    }

    #[test]
    fn a_record_that_does_not_decode_is_prosts_error_not_empty_fields() {
        let record = Record {
            appended_ms: 5,
            id: "id".into(),
            frame: Bytes::from_static(b"frame"),
            ..Default::default()
        }
        .encode_to_vec();
        // Cut short, a string that is not UTF-8, a field of the wrong wire type.
        let mut not_utf8 = record.clone();
        not_utf8[3] = 0xff;
        for bad in [&record[..record.len() - 1], &not_utf8, &[0x0a_u8, 0x01][..]] {
            assert_eq!(
                read_record(bad, |_| ()).unwrap_err(),
                Record::decode(bad).unwrap_err(),
                "{bad:?}"
            );
        }
    }

    fn any_record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            ".{0,8}",
            ".{0,8}",
            ".{0,8}",
            ".{0,8}",
            proptest::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(
                |(appended_ms, id, event_type, user_id, device_id, frame)| Record {
                    appended_ms,
                    id,
                    event_type,
                    user_id,
                    device_id,
                    frame: frame.into(),
                },
            )
    }

    proptest! {
        /// The in-place reader and prost's decoder of the derive agree on every record, and
        /// on every run of bytes, record or not: what one reads the other reads alike, what one
        /// refuses the other refuses, and the reader took nothing from prost to do it.
        #[test]
        fn the_reader_agrees_with_prost(
            record in any_record(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
            noise in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let encoded = record.encode_to_vec();
            let view = RecordView::walk(&encoded);
            prop_assert_eq!(view, Some(RecordView::of(&record)));
            let mut flipped = encoded.clone();
            if !flipped.is_empty() {
                let at = flip.0.index(flipped.len());
                flipped[at] ^= flip.1;
            }
            let cut = &encoded[..cut.index(encoded.len() + 1)];
            for bytes in [cut, &flipped, &noise] {
                let decoded = Record::decode(bytes);
                prop_assert_eq!(
                    RecordView::walk(bytes),
                    decoded.as_ref().ok().map(RecordView::of),
                    "{:?}", bytes
                );
            }
        }
    }
}
