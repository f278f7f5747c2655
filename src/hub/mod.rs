//! Fan-out: which subscribers get an event, and handing it to them without ever waiting.
//!
//! Owns: the routing index (user id → subscribers, the firehose, the admin feed), filters, each
//! subscriber's bounded `Mailbox` and its overflow policy (continue from the journal), replay
//! on resume and the hand-off to live events, history pages ([`Hub::list`]), heartbeats, and
//! ending every stream on shutdown. Does not own: decoding (`schema`), positions (`store`), the
//! order of events (the `sequencer` calls [`Hub::fan_out`] in journal order, one event at a
//! time), or transport (`grpc` turns a [`Subscription`] into a gRPC stream).
//!
//! Each event is encoded once into a `SubscribeResponse`; all its recipients share those bytes.
//! History pages decode stored frames; one that does not decode is served without its payload,
//! logged and counted, never left out (see `decode_events`). Replays check the frames that can
//! hold a `Struct` the same way (`make_replayable`).
//!
//! Journal reads (replays, history pages) never run on the async workers, which carry every
//! live stream: each read is bounded (stored events examined, events and bytes selected) and
//! runs on a blocking thread, at most `--replay-readers` replay reads and as many history reads
//! at once. A storm of resumes waits for its turn at the replay readers: it is slow for those
//! who replay, while live streams, `Publish`, health checks, history pages and resumes that are
//! already at the head go on as before. A reader is held only while it reads, never by a stream
//! that is slow to take what was read.
//!
//! The files, one concept each: `index` (who is subscribed to what: the routing index),
//! `fan_out` ([`Hub`]: registering subscribers, handing each event to them, heartbeats,
//! shutdown), `subscription` ([`Subscription`]: one stream, its replay and catch-up from the
//! journal), `storm` (a stream's conflation, coalesced notices and rate, when it asked for
//! them), `shared` (what
//! both share: the settings, the index behind its lock, the journal and its readers), `reads`
//! (the journal readers those reads run on), `history` (pages of stored
//! events), `frames` (the control frames a stream sends), `unreadable` (stored frames that do
//! not decode), `error` ([`HubError`]), `filter` and `mailbox`; `tests` holds the tests of all
//! but `filter` and `mailbox` (theirs are beside them), one file per subject.

mod error;
mod fan_out;
mod filter;
mod frames;
mod history;
mod index;
mod mailbox;
mod reads;
mod shared;
mod storm;
mod subscription;
mod unreadable;

pub use error::HubError;
pub use fan_out::{Hub, Routed, StreamOptions};
pub use filter::{Filter, FilterError, FilterSettings, MAX_PATTERN_LEN, MAX_TYPE_PATTERNS, Users};
pub use index::Inboxes;
pub(crate) use mailbox::with_batched_wakes;
pub use mailbox::{EndReason, Frame};
pub use reads::ReadError;
pub use shared::HubSettings;
pub use storm::StormControl;
pub use subscription::Subscription;

// Used only inside the hub.
use filter::Audience;
use mailbox::{Mailbox, Next, Push};

#[cfg(test)]
mod tests;
