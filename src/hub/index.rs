//! The routing index: which subscribers select which events (one user's, every user's, the admin
//! feed), and the same decision for a stored event. Does not own the filters' rules (`filter`)
//! or the hand-off itself (`fan_out`).

use std::{collections::HashMap, sync::Arc};

use super::{Audience, Filter, Mailbox, Users};
use crate::{auth::Viewer, store::EventMeta};

pub(super) struct Subscriber {
    pub(super) id: u64,
    pub(super) filter: Filter,
    /// Checked for every event routed to this subscriber, on top of the routing index.
    pub(super) viewer: Viewer,
    pub(super) mailbox: Mailbox,
    /// The inboxes whose updates this stream gets.
    pub(super) inboxes: Inboxes,
}

/// The inboxes whose updates a stream gets in-band: its owner's, when the stream is of the
/// owner's own events, and the admin inbox of an admin's admin-feed stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inboxes {
    /// The user inbox of the user whose events the stream selects (`Users::One`): set only for
    /// that user's own streams. Their disabled types are not pushed on it either.
    pub user: bool,
    /// This admin's admin inbox (set only on an admin-feed stream of that admin).
    pub admin: Option<Box<str>>,
}

#[derive(Default)]
pub(super) struct Index {
    /// Every subscriber, by id.
    pub(super) all: HashMap<u64, Arc<Subscriber>>,
    /// Subscribers of one user's events.
    pub(super) by_user: HashMap<Box<str>, Vec<Arc<Subscriber>>>,
    /// Subscribers of every user's events.
    pub(super) firehose: Vec<Arc<Subscriber>>,
    /// Subscribers of the admin feed.
    pub(super) admin: Vec<Arc<Subscriber>>,
    /// Set at shutdown: no new subscribers.
    pub(super) closed: bool,
}

impl Index {
    pub(super) fn insert(&mut self, subscriber: Arc<Subscriber>) {
        match &subscriber.filter.users {
            Users::None => {}
            Users::One(user) => self
                .by_user
                .entry(user.clone())
                .or_default()
                .push(subscriber.clone()),
            Users::All => self.firehose.push(subscriber.clone()),
        }
        if subscriber.filter.admin_feed {
            self.admin.push(subscriber.clone());
        }
        self.all.insert(subscriber.id, subscriber);
    }

    pub(super) fn remove(&mut self, id: u64) -> bool {
        let Some(subscriber) = self.all.remove(&id) else {
            return false;
        };
        let keep = |s: &Arc<Subscriber>| s.id != id;
        match &subscriber.filter.users {
            Users::None => {}
            Users::One(user) => {
                if let Some(list) = self.by_user.get_mut(user) {
                    list.retain(keep);
                    if list.is_empty() {
                        self.by_user.remove(user);
                    }
                }
            }
            Users::All => self.firehose.retain(keep),
        }
        if subscriber.filter.admin_feed {
            self.admin.retain(keep);
        }
        true
    }
}

/// Whether a subscription with `filter`, seen by `viewer`, gets the stored event: the routing of
/// [`Hub::fan_out`] (its user, the firehose, the admin feed), the filters and the viewer,
/// decided from stored facts.
pub(super) fn selects(filter: &Filter, viewer: &Viewer, event: EventMeta<'_>) -> bool {
    let audience = Audience::of(event.event_type);
    let routed = match audience {
        Audience::AdminOnly => filter.admin_feed,
        Audience::Users { admin_too } => {
            filter.selects_user(event.user_id) || (admin_too && filter.admin_feed)
        }
    };
    routed
        && filter.passes(event.event_type, event.device_id)
        && viewer.may_see(event.user_id, audience == Audience::AdminOnly)
}
