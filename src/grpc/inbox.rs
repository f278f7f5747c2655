//! The notification centre's calls: `ListInbox`, `GetInboxCounts`, `MarkInbox`,
//! `GetPreferences`, `SetPreferences`, and the inboxes a `Subscribe` stream gets updates of.
//!
//! Owns: validating these requests, deciding whose inbox a call is about (a user their own; an
//! admin any user's to read, only their own to change), reading the state off the async
//! workers, and turning marks and preferences into the writer's commands. Does not own the
//! state (`store`), its meaning (`inbox`) or how updates reach streams (`hub`).

use std::sync::Arc;

use prost::Message as _;

use super::{error::ApiError, service::NotifyService};
use crate::{
    auth::Principal,
    hub::Inboxes,
    inbox::{Applied, Command, Family, InboxKey, MAX_MARK_IDS, Mark, Marked, Preferences, Target},
    pb,
    store::{Cursor, InboxReader, JournalReader, PageQuery, StoreError},
};

/// `ListInbox` page size when the request says 0, and the most it may ask for.
const PAGE_DEFAULT: usize = 20;
const PAGE_MAX: usize = 100;
/// Items one page examines at most, selected or not (a filter that selects few): the page then
/// ends early, and `next_before` continues.
const PAGE_SCAN_LIMIT: usize = 4096;
/// The longest event id a mark may name (ids are bounded on the way in too).
const MAX_ID_LEN: usize = 256;

impl NotifyService {
    /// The inbox a read is about, once the policy allows it.
    fn readable_inbox(
        &self,
        principal: &Principal,
        user_id: &str,
        admin_inbox: bool,
    ) -> Result<InboxKey, ApiError> {
        self.auth
            .policy
            .may_read_inbox(principal, user_id, admin_inbox)?;
        let owner = if user_id.is_empty() {
            principal.user_id.clone()
        } else {
            user_id.to_owned()
        };
        Ok(if admin_inbox {
            InboxKey::admin(owner)
        } else {
            InboxKey::user(owner)
        })
    }

    /// Runs `read` on the inboxes' state, off the async workers.
    async fn read_inbox<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn InboxReader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let journal: Arc<dyn JournalReader> = self.hub.journal();
        tokio::task::spawn_blocking(move || match journal.inbox() {
            Some(inbox) => read(inbox),
            None => Err(StoreError::Unavailable(
                "this node's journal keeps no inbox".into(),
            )),
        })
        .await
        .map_err(|_| ApiError::InboxRead(StoreError::Unavailable("the read failed".into())))?
        .map_err(ApiError::InboxRead)
    }

    /// Makes sure an admin inbox exists before it is read: the first use of an admin inbox
    /// creates it (through the writer, so every node creates it at the same point of the
    /// journal), with the newest retained notices.
    pub(super) async fn ensure_admin_inbox(
        &self,
        principal: &Principal,
        inbox: &InboxKey,
    ) -> Result<(), ApiError> {
        // Only the admin's own use creates it: another admin reading it (for support) finds
        // it empty until then.
        if inbox.kind != crate::inbox::Kind::Admin || inbox.owner != principal.user_id {
            return Ok(());
        }
        let admin = inbox.owner.clone();
        if self.read_inbox(move |r| r.admin_known(&admin)).await? {
            return Ok(());
        }
        self.publisher
            .submit_inbox(Command::JoinAdmin {
                admin: inbox.owner.clone(),
            })
            .await?;
        Ok(())
    }

    pub(super) async fn list_inbox(
        &self,
        principal: &Principal,
        request: pb::ListInboxRequest,
    ) -> Result<pb::ListInboxResponse, ApiError> {
        let inbox = self.readable_inbox(principal, &request.user_id, request.admin_inbox)?;
        let filter = pb::InboxFilter::try_from(request.filter).map_err(|_| ApiError::Invalid {
            field: "filter",
            why: format!("{} is not an InboxFilter", request.filter),
        })?;
        let families = request
            .families
            .iter()
            .map(|&value| {
                Family::from_pb(value).ok_or_else(|| ApiError::Invalid {
                    field: "families",
                    why: format!("{value} is not a family"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let before = self.own_cursor("before", &request.before)?;
        let limit = match request.limit {
            0 => PAGE_DEFAULT,
            n => usize::try_from(n).unwrap_or(PAGE_MAX).min(PAGE_MAX),
        };
        self.ensure_admin_inbox(principal, &inbox).await?;
        let head = self.hub.head();
        let query = PageQuery {
            filter,
            families,
            before,
            limit,
            max_scanned: PAGE_SCAN_LIMIT,
        };
        let page = self.read_inbox(move |r| r.page(&inbox, &query)).await?;
        let items = page
            .items
            .into_iter()
            .map(|item| pb::InboxItem {
                event: event_of(&item.frame),
                family: i32::from(item.family.code()),
                seen: item.state.seen(),
                read: item.state.read(),
                archived: item.state.archived(),
            })
            .collect();
        Ok(pb::ListInboxResponse {
            items,
            next_before: if page.end {
                String::new()
            } else {
                self.cursor_of(page.next_before)
            },
            end: page.end,
            counts: Some(page.counts.to_pb()),
            head_cursor: head.to_string(),
        })
    }

    pub(super) async fn inbox_counts(
        &self,
        principal: &Principal,
        request: &pb::GetInboxCountsRequest,
    ) -> Result<pb::GetInboxCountsResponse, ApiError> {
        let inbox = self.readable_inbox(principal, &request.user_id, request.admin_inbox)?;
        self.ensure_admin_inbox(principal, &inbox).await?;
        let counts = self.read_inbox(move |r| r.counts(&inbox)).await?;
        Ok(pb::GetInboxCountsResponse {
            counts: Some(counts.to_pb()),
        })
    }

    pub(super) async fn mark_inbox(
        &self,
        principal: &Principal,
        request: pb::MarkInboxRequest,
    ) -> Result<pb::MarkInboxResponse, ApiError> {
        // Only the owner changes an inbox: the request names no user.
        let inbox = self.readable_inbox(principal, "", request.admin_inbox)?;
        let mark = Mark::from_pb(request.mark).ok_or(ApiError::Missing("mark"))?;
        let up_to = self.own_cursor("up_to_cursor", &request.up_to_cursor)?;
        let target = match (request.ids.is_empty(), up_to, request.all) {
            (false, None, false) => {
                if request.ids.len() > MAX_MARK_IDS {
                    return Err(ApiError::Invalid {
                        field: "ids",
                        why: format!("at most {MAX_MARK_IDS} ids per call"),
                    });
                }
                if let Some(bad) = request
                    .ids
                    .iter()
                    .find(|id| id.is_empty() || id.len() > MAX_ID_LEN)
                {
                    return Err(ApiError::Invalid {
                        field: "ids",
                        why: format!("{bad:?} is not an event id (1 to {MAX_ID_LEN} bytes)"),
                    });
                }
                Target::Ids(request.ids)
            }
            (true, Some(cursor), false) => Target::UpTo(cursor),
            (true, None, true) => Target::All,
            (true, None, false) => return Err(ApiError::Missing("ids, up_to_cursor or all")),
            _ => {
                return Err(ApiError::Conflicting(
                    "ids, up_to_cursor and all exclude each other: set one",
                ));
            }
        };
        if !matches!(target, Target::Ids(_)) && !mark.takes_ranges() {
            return Err(ApiError::Invalid {
                field: "mark",
                why: "only SEEN and READ take up_to_cursor or all; name the items by ids".into(),
            });
        }
        self.inbox_rate.check(&principal.user_id)?;
        self.ensure_admin_inbox(principal, &inbox).await?;
        let applied = self
            .publisher
            .submit_inbox(Command::Mark {
                inbox,
                mark,
                target,
            })
            .await?;
        let Applied::Marked(Marked {
            counts,
            changed,
            unknown_ids,
        }) = applied
        else {
            return Err(ApiError::InboxRead(StoreError::Unavailable(
                "the writer answered a mark with something else".into(),
            )));
        };
        Ok(pb::MarkInboxResponse {
            counts: Some(counts.to_pb()),
            changed,
            unknown_ids,
        })
    }

    pub(super) async fn preferences(
        &self,
        principal: &Principal,
        request: &pb::GetPreferencesRequest,
    ) -> Result<pb::GetPreferencesResponse, ApiError> {
        let inbox = self.readable_inbox(principal, &request.user_id, false)?;
        let stored = self
            .read_inbox(move |r| r.preferences(&inbox.owner))
            .await?;
        Ok(pb::GetPreferencesResponse {
            preferences: Some(stored.unwrap_or_default().to_pb()),
        })
    }

    pub(super) async fn set_preferences(
        &self,
        principal: &Principal,
        request: pb::SetPreferencesRequest,
    ) -> Result<pb::SetPreferencesResponse, ApiError> {
        let preferences = Preferences::from_pb(request.preferences.unwrap_or_default())?;
        self.inbox_rate.check(&principal.user_id)?;
        let applied = self
            .publisher
            .submit_inbox(Command::SetPreferences {
                user: principal.user_id.clone(),
                preferences: Box::new(preferences),
            })
            .await?;
        let Applied::Preferences(stored) = applied else {
            return Err(ApiError::InboxRead(StoreError::Unavailable(
                "the writer answered preferences with something else".into(),
            )));
        };
        Ok(pb::SetPreferencesResponse {
            preferences: Some(stored.to_pb()),
        })
    }

    /// The inboxes a stream of `principal` gets updates of, when it asked for them
    /// (`SubscribeRequest.inbox`): the user inbox on a stream of the caller's own events, the admin inbox on an admin's admin-feed stream (created first if
    /// this is the admin's first use of it).
    pub(super) async fn stream_inboxes(
        &self,
        principal: &Principal,
        request: &pb::SubscribeRequest,
    ) -> Result<Inboxes, ApiError> {
        if !request.inbox || self.hub.journal().inbox().is_none() {
            return Ok(Inboxes::default());
        }
        let own_events = (request.user_id.is_empty() && !request.admin_feed)
            || request.user_id == principal.user_id;
        let admin = (request.admin_feed && self.auth.policy.is_admin(principal))
            .then(|| InboxKey::admin(principal.user_id.clone()));
        if let Some(inbox) = &admin {
            self.ensure_admin_inbox(principal, inbox).await?;
        }
        Ok(Inboxes {
            user: own_events,
            admin: admin.map(|inbox| inbox.owner.into_boxed_str()),
        })
    }

    /// The position of a cursor field of this journal; a cursor of another journal (the
    /// storage was replaced) names no item here.
    fn own_cursor(&self, field: &'static str, text: &str) -> Result<Option<u64>, ApiError> {
        if text.is_empty() {
            return Ok(None);
        }
        let cursor = Cursor::parse(text).map_err(|reason| ApiError::Cursor { field, reason })?;
        if cursor.epoch != self.hub.head().epoch {
            return Err(ApiError::Invalid {
                field,
                why: "the cursor is from another journal (the server's storage was replaced); \
                      read the inbox again"
                    .into(),
            });
        }
        Ok(Some(cursor.position))
    }

    fn cursor_of(&self, position: u64) -> String {
        Cursor {
            epoch: self.hub.head().epoch,
            position,
        }
        .to_string()
    }
}

/// The event in a stored frame (`SubscribeResponse { event }`). A frame that does not decode
/// (only damage makes one) gives an item without its event: the item stays visible (its state
/// and family) rather than vanish.
fn event_of(frame: &bytes::Bytes) -> Option<pb::Event> {
    match pb::SubscribeResponse::decode(frame.clone()) {
        Ok(pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Event(event)),
        }) => Some(event),
        _ => {
            tracing::warn!("an inbox item's stored event does not decode; served without it");
            None
        }
    }
}
