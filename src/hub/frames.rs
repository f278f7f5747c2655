//! The control frames a stream sends besides events: `CaughtUp`, `Gap`, `Heartbeat` and inbox
//! updates, each
//! encoded as a `SubscribeResponse` at the position it stands for. Does not own when they are
//! sent (`fan_out`, `subscription`).

use prost::Message;

use super::Frame;
use crate::{
    pb::{self, subscribe_response::Kind},
    store::Cursor,
};

pub(super) fn caught_up_frame(head: Cursor) -> Frame {
    control_frame(
        Kind::CaughtUp(pb::CaughtUp {
            cursor: head.to_string(),
        }),
        head.position,
    )
}

/// A `Gap` from `from` to position `to` of this journal (`epoch`).
pub(super) fn gap_frame(from: Cursor, epoch: u64, to: u64, reason: pb::GapReason) -> Frame {
    control_frame(
        Kind::Gap(pb::Gap {
            from_cursor: from.to_string(),
            to_cursor: Cursor {
                epoch,
                position: to,
            }
            .to_string(),
            reason: reason.into(),
        }),
        to,
    )
}

/// An `InboxUpdate`: it stands for no position ([`NO_POSITION`]), so a stream's cursor does not
/// move when it sends one.
pub(super) fn inbox_frame(update: pb::InboxUpdate) -> Frame {
    control_frame(Kind::Inbox(update), NO_POSITION)
}

/// The position of a frame that moves no cursor (an inbox update).
pub(super) const NO_POSITION: u64 = u64::MAX;

pub(super) fn control_frame(kind: Kind, position: u64) -> Frame {
    Frame {
        bytes: pb::SubscribeResponse { kind: Some(kind) }
            .encode_to_vec()
            .into(),
        position,
        published_at: None,
        trace: None,
    }
}
