//! `device.*` (device-service): lifecycle events from the transactional outbox (shape C) and
//! `device.error` in the envelope (shape D).

use super::Content;
use crate::pb::{self, event::Payload};
use crate::schema::DecodeError;
use crate::schema::body::Body;
use crate::schema::fields::Fields;

/// `device.created`.
pub(super) fn created(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    Ok(Content::undated(Payload::DeviceCreated(
        pb::DeviceCreated {
            device_name: fields.text("deviceName")?,
            status: fields.text("status")?,
            tenant_id: fields.text("tenantId")?,
            provider_type: fields.text("providerType")?,
            saga_id: fields.text("sagaId")?,
        },
    )))
}

/// `device.started`.
pub(super) fn started(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let payload = pb::DeviceStarted {
        tenant_id: fields.text("tenantId")?,
        provider_type: fields.text("providerType")?,
    };
    Ok(Content::dated(
        Payload::DeviceStarted(payload),
        fields.date("startedAt")?,
    ))
}

/// `device.stopped`. `duration` is in seconds on the wire.
pub(super) fn stopped(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let payload = pb::DeviceStopped {
        tenant_id: fields.text("tenantId")?,
        provider_type: fields.text("providerType")?,
        duration_seconds: fields.number("duration")?,
    };
    Ok(Content::dated(
        Payload::DeviceStopped(payload),
        fields.date("stoppedAt")?,
    ))
}

/// `device.deleted`.
pub(super) fn deleted(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    Ok(Content::undated(Payload::DeviceDeleted(
        pb::DeviceDeleted {
            device_name: fields.text("deviceName")?,
            tenant_id: fields.text("tenantId")?,
            provider_type: fields.text("providerType")?,
        },
    )))
}

/// `device.error`. The envelope carries `priority` at its top level; a `payload.priority`, when
/// sent, is the more specific of the two.
pub(super) fn error(body: &Body<'_>) -> Result<Content, DecodeError> {
    let fields = &body.fields;
    let priority = match fields.string("priority")? {
        Some(priority) => priority,
        None => body.root.text("priority")?,
    };
    let payload = pb::DeviceError {
        device_name: fields.text("deviceName")?,
        error_type: fields.text("errorType")?,
        error_message: fields.text("errorMessage")?,
        priority,
    };
    Ok(Content::dated(
        Payload::DeviceError(payload),
        fields.date("occurredAt")?,
    ))
}
