//! The event catalog (`docs/wire-format.md` "Event catalog"): which fields each typed event
//! has, which are required, and which date field says when it happened.
//!
//! Owns one decoder per typed kind, grouped by family. Does not own the envelope fields every
//! event shares (`userId`, `deviceId`, `timestamp`, `_trace`, `eventId`: see the parent module)
//! nor how a single value is read (see `fields`).

mod app;
mod billing;
mod device;
mod quota;

use prost_types::Timestamp;

use super::DecodeError;
use super::body::Body;
use super::routing::Kind;
use crate::pb::event::Payload;

/// What a typed decoder reads from a body: the payload and the event's own date, if it has one.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Content {
    /// The typed payload.
    pub(super) payload: Payload,
    /// The event's own date field (`startedAt`, `paidAt` ...), which beats `timestamp`.
    pub(super) occurred_at: Option<Timestamp>,
}

impl Content {
    /// Content whose date is only the envelope's `timestamp`.
    fn undated(payload: Payload) -> Self {
        Self {
            payload,
            occurred_at: None,
        }
    }

    /// Content with the event's own date.
    fn dated(payload: Payload, occurred_at: Option<Timestamp>) -> Self {
        Self {
            payload,
            occurred_at,
        }
    }
}

/// Decodes the typed payload of `kind` from `body`.
pub(super) fn decode(kind: Kind, body: &Body<'_>) -> Result<Content, DecodeError> {
    let fields = &body.fields;
    match kind {
        Kind::QuotaUpdated => quota::updated(fields),
        Kind::QuotaExceeded => quota::exceeded(fields),
        Kind::QuotaRenewed => quota::renewed(fields),
        Kind::QuotaAlert => quota::alert(fields),
        Kind::BillingLowBalance => billing::low_balance(fields),
        Kind::BillingPaymentSuccess => billing::payment_success(fields),
        Kind::BillingInvoiceGenerated => billing::invoice_generated(fields),
        Kind::BillingOrderCompleted => billing::order_completed(fields),
        Kind::BillingOrderCancelled => billing::order_cancelled(fields),
        Kind::AppInstalled => app::installed(fields),
        Kind::AppInstallFailed => app::install_failed(fields),
        Kind::AppUpdated => app::updated(fields),
        Kind::DeviceCreated => device::created(fields),
        Kind::DeviceStarted => device::started(fields),
        Kind::DeviceStopped => device::stopped(fields),
        Kind::DeviceDeleted => device::deleted(fields),
        Kind::DeviceError => device::error(body),
    }
}
