//! Routing keys: their canonical spelling, their family, and which typed message each has.
//!
//! Owns the list of typed event kinds and the routing-key aliases the producers use
//! (`app.install.failed` for `app.install_failed`). Does not own the fields of each kind
//! (see `catalog`).

use super::{ADMIN_NOTICE_TYPE, DecodeError, DecodeSettings, MAX_ROUTING_KEY_BYTES};
use crate::pb::event::Payload;

/// Routing keys some producers use for an event whose canonical type is spelled differently.
const ROUTING_KEY_ALIASES: &[(&str, &str)] = &[
    ("app.install.failed", "app.install_failed"),
    ("app.install.completed", "app.installed"),
];

/// Families of routing keys this server decodes; other keys are refused.
const FAMILIES: &[&str] = &["quota.", "billing.", "app.", "device."];

/// Families whose every event concerns one user, so an event without a user is refused: it
/// could only ever reach firehose subscribers, never the user it is about.
const PER_USER_FAMILIES: &[&str] = &["quota.", "billing.", "device."];

/// An event type that has a typed payload message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    QuotaUpdated,
    QuotaExceeded,
    QuotaRenewed,
    QuotaAlert,
    BillingLowBalance,
    BillingPaymentSuccess,
    BillingInvoiceGenerated,
    BillingOrderCompleted,
    BillingOrderCancelled,
    AppInstalled,
    AppInstallFailed,
    AppUpdated,
    DeviceCreated,
    DeviceStarted,
    DeviceStopped,
    DeviceDeleted,
    DeviceError,
}

/// Every typed kind, for lookups by name.
const KINDS: &[Kind] = &[
    Kind::QuotaUpdated,
    Kind::QuotaExceeded,
    Kind::QuotaRenewed,
    Kind::QuotaAlert,
    Kind::BillingLowBalance,
    Kind::BillingPaymentSuccess,
    Kind::BillingInvoiceGenerated,
    Kind::BillingOrderCompleted,
    Kind::BillingOrderCancelled,
    Kind::AppInstalled,
    Kind::AppInstallFailed,
    Kind::AppUpdated,
    Kind::DeviceCreated,
    Kind::DeviceStarted,
    Kind::DeviceStopped,
    Kind::DeviceDeleted,
    Kind::DeviceError,
];

impl Kind {
    /// The canonical event type.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::QuotaUpdated => "quota.updated",
            Kind::QuotaExceeded => "quota.exceeded",
            Kind::QuotaRenewed => "quota.renewed",
            Kind::QuotaAlert => "quota.alert",
            Kind::BillingLowBalance => "billing.low_balance",
            Kind::BillingPaymentSuccess => "billing.payment_success",
            Kind::BillingInvoiceGenerated => "billing.invoice_generated",
            Kind::BillingOrderCompleted => "billing.order.completed",
            Kind::BillingOrderCancelled => "billing.order.cancelled",
            Kind::AppInstalled => "app.installed",
            Kind::AppInstallFailed => "app.install_failed",
            Kind::AppUpdated => "app.updated",
            Kind::DeviceCreated => "device.created",
            Kind::DeviceStarted => "device.started",
            Kind::DeviceStopped => "device.stopped",
            Kind::DeviceDeleted => "device.deleted",
            Kind::DeviceError => "device.error",
        }
    }

    /// Whether the event is meaningless without a device: every `device.*` event, and app
    /// installs, which the catalog always sends with the device they happened on.
    pub(super) fn requires_device(self) -> bool {
        self.name().starts_with("device.")
            || matches!(self, Kind::AppInstalled | Kind::AppInstallFailed)
    }

    /// Whether `payload` is this kind's message.
    pub(super) fn matches(self, payload: &Payload) -> bool {
        matches!(
            (self, payload),
            (Kind::QuotaUpdated, Payload::QuotaUpdated(_))
                | (Kind::QuotaExceeded, Payload::QuotaExceeded(_))
                | (Kind::QuotaRenewed, Payload::QuotaRenewed(_))
                | (Kind::QuotaAlert, Payload::QuotaAlert(_))
                | (Kind::BillingLowBalance, Payload::BillingLowBalance(_))
                | (
                    Kind::BillingPaymentSuccess,
                    Payload::BillingPaymentSuccess(_)
                )
                | (
                    Kind::BillingInvoiceGenerated,
                    Payload::BillingInvoiceGenerated(_)
                )
                | (
                    Kind::BillingOrderCompleted,
                    Payload::BillingOrderCompleted(_)
                )
                | (
                    Kind::BillingOrderCancelled,
                    Payload::BillingOrderCancelled(_)
                )
                | (Kind::AppInstalled, Payload::AppInstalled(_))
                | (Kind::AppInstallFailed, Payload::AppInstallFailed(_))
                | (Kind::AppUpdated, Payload::AppUpdated(_))
                | (Kind::DeviceCreated, Payload::DeviceCreated(_))
                | (Kind::DeviceStarted, Payload::DeviceStarted(_))
                | (Kind::DeviceStopped, Payload::DeviceStopped(_))
                | (Kind::DeviceDeleted, Payload::DeviceDeleted(_))
                | (Kind::DeviceError, Payload::DeviceError(_))
        )
    }
}

/// How an event of a known family is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// With its typed message.
    Typed(Kind),
    /// As an untyped `Struct`: the family is known but the key has no message yet.
    Untyped,
}

/// The canonical spelling of a routing key (aliases resolved); other keys are returned as given.
pub(super) fn canonical(routing_key: &str) -> &str {
    ROUTING_KEY_ALIASES
        .iter()
        .find(|(alias, _)| *alias == routing_key)
        .map_or(routing_key, |(_, canonical)| canonical)
}

/// Resolves how an event under `routing_key` is carried; its type is `canonical(routing_key)`.
///
/// `admin.notice` is refused like any key outside the families: only this server derives
/// notices, so a producer sending one would be impersonating it.
pub(super) fn route(routing_key: &str, opts: DecodeSettings) -> Result<Route, DecodeError> {
    check_grammar(routing_key)?;
    let canonical = canonical(routing_key);
    if let Some(kind) = KINDS.iter().find(|kind| kind.name() == canonical) {
        return Ok(Route::Typed(*kind));
    }
    let in_family = FAMILIES
        .iter()
        .any(|family| canonical.len() > family.len() && canonical.starts_with(family));
    if !in_family || canonical == ADMIN_NOTICE_TYPE {
        return Err(DecodeError::UnknownRoutingKey(routing_key.to_owned()));
    }
    if opts.strict_schema {
        return Err(DecodeError::Untyped(canonical.to_owned()));
    }
    Ok(Route::Untyped)
}

/// Whether `text` follows the one grammar of event types (and so of routing keys on every
/// ingest path): lowercase segments of `[a-z0-9_-]` joined by single dots, at most
/// [`MAX_ROUTING_KEY_BYTES`] bytes. AMQP wildcards (`#`, `*`), empty segments, control and
/// non-ASCII characters all fail it, so every stored type is one a subscriber's pattern can name.
pub fn is_event_type(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_ROUTING_KEY_BYTES && text.split('.').all(is_segment)
}

/// Refuses a routing key that is not an event type ([`is_event_type`]).
pub(super) fn check_grammar(routing_key: &str) -> Result<(), DecodeError> {
    if is_event_type(routing_key) {
        return Ok(());
    }
    // Only a bounded prefix goes into the error: it ends up in logs and in a dead letter's
    // headers (escaped there by `Debug`, so control characters cannot forge log lines).
    let shown: String = routing_key.chars().take(MAX_ROUTING_KEY_BYTES).collect();
    Err(DecodeError::InvalidRoutingKey(shown))
}

/// One segment of an event type: `[a-z0-9_-]+`.
pub fn is_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether events of this canonical type must name a user.
pub(super) fn requires_user(event_type: &str) -> bool {
    PER_USER_FAMILIES
        .iter()
        .any(|family| event_type.starts_with(family))
}

/// Whether `event_type` (canonical) has a typed payload message.
pub(super) fn is_typed(event_type: &str) -> bool {
    KINDS.iter().any(|kind| kind.name() == event_type)
}

/// The known family (`quota`, `billing`, `app`, `device`) `event_type` belongs to, if any.
pub(super) fn family_of(event_type: &str) -> Option<&'static str> {
    FAMILIES
        .iter()
        .find(|family| event_type.starts_with(**family))
        .map(|family| family.trim_end_matches('.'))
}
