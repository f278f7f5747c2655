//! Typed events sent through `Publish`: the same checks as a JSON body, on a `pb::Event`.
//!
//! Owns the type resolution between the request's routing key and `Event.type`, the payload /
//! type match, and the required fields of each typed message. Field names in errors are the
//! proto's (`user_id`, `billing_payment_success.amount`), since that is what the caller wrote.

use super::routing::{self, Kind, Route};
use super::{DecodeError, DecodeSettings, Properties, dates, id, money};
use crate::pb::{self, event::Payload};

/// Validates `event` and fills what the server assigns: canonical type, `received_at`,
/// `occurred_at` when unset, `id` when empty; `cursor` is cleared (the journal assigns it).
pub(super) fn accept(
    routing_key: &str,
    mut event: pb::Event,
    props: &Properties,
    opts: DecodeSettings,
) -> Result<pb::Event, DecodeError> {
    let event_type = resolve_type(routing_key, &event.r#type)?;
    let route = routing::route(&event_type, opts)?;
    check_payload(route, &event_type, event.payload.as_mut(), &event.device_id)?;
    check_timestamps(&event)?;
    if routing::requires_user(&event_type) && event.user_id.is_empty() {
        return Err(DecodeError::missing("user_id"));
    }
    if matches!(route, Route::Typed(kind) if kind.requires_device()) && event.device_id.is_empty() {
        return Err(DecodeError::missing("device_id"));
    }
    event.cursor.clear();
    if event.id.is_empty() {
        // Hashed before `occurred_at` is filled in below, so that publishing the same event
        // twice gives the same id even though it is received at two different times.
        event.id = id::from_typed(&event_type, &event);
    }
    let received_at = dates::from_system_time(props.received_at);
    let sent_at = props.timestamp_ms.and_then(dates::from_epoch_ms);
    event.occurred_at = event.occurred_at.or(sent_at).or(Some(received_at));
    event.received_at = Some(received_at);
    event.r#type = event_type;
    Ok(event)
}

/// The canonical type: from the routing key when given, else from `Event.type`. When both are
/// given they must name the same event, or the caller is confused about what it publishes.
fn resolve_type(routing_key: &str, event_type: &str) -> Result<String, DecodeError> {
    for given in [routing_key, event_type] {
        if !given.is_empty() {
            routing::check_grammar(given)?;
        }
    }
    let from_key = routing::canonical(routing_key);
    let from_event = routing::canonical(event_type);
    match (from_key.is_empty(), from_event.is_empty()) {
        (true, true) => Err(DecodeError::missing("type")),
        (false, false) if from_key != from_event => Err(DecodeError::invalid(
            "type",
            format!("event type {event_type:?} does not match routing key {routing_key:?}"),
        )),
        (false, _) => Ok(from_key.to_owned()),
        (true, false) => Ok(from_event.to_owned()),
    }
}

/// Checks that `payload` is the message of the route and that its own required fields are set.
fn check_payload(
    route: Route,
    event_type: &str,
    payload: Option<&mut Payload>,
    device_id: &str,
) -> Result<(), DecodeError> {
    let mismatch = || DecodeError::PayloadMismatch {
        event_type: event_type.to_owned(),
    };
    let payload = payload.ok_or_else(mismatch)?;
    let matches = match route {
        Route::Typed(kind) => kind.matches(payload),
        Route::Untyped => matches!(payload, Payload::Untyped(_)),
    };
    if !matches {
        return Err(mismatch());
    }
    match route {
        Route::Typed(kind) => check_fields(kind, payload, device_id),
        Route::Untyped => Ok(()),
    }
}

/// The required ids and the amounts of a typed payload, as for a JSON body. Amounts are
/// normalized in place, so a typed `1e3` is stored as `1000` like a JSON one.
fn check_fields(kind: Kind, payload: &mut Payload, device_id: &str) -> Result<(), DecodeError> {
    let field = |name: &str| format!("{}.{name}", oneof_name(kind));
    match payload {
        Payload::QuotaUpdated(quota) => require(&field("quota_id"), &quota.quota_id),
        Payload::QuotaExceeded(quota) => require(&field("quota_id"), &quota.quota_id),
        Payload::QuotaRenewed(quota) => require(&field("quota_id"), &quota.quota_id),
        Payload::QuotaAlert(quota) => require(&field("quota_id"), &quota.quota_id),
        Payload::BillingLowBalance(low) => {
            amount(&field("current_balance"), &mut low.current_balance)?;
            amount(&field("threshold"), &mut low.threshold)
        }
        Payload::BillingPaymentSuccess(payment) => {
            require(&field("payment_id"), &payment.payment_id)?;
            amount(&field("amount"), &mut payment.amount)?;
            amount(&field("new_balance"), &mut payment.new_balance)
        }
        Payload::BillingInvoiceGenerated(invoice) => {
            require(&field("invoice_id"), &invoice.invoice_id)?;
            amount(&field("amount"), &mut invoice.amount)
        }
        Payload::BillingOrderCompleted(order) => {
            require(&field("order_id"), &order.order_id)?;
            amount(&field("amount"), &mut order.amount)
        }
        Payload::BillingOrderCancelled(order) => require(&field("order_id"), &order.order_id),
        Payload::AppInstalled(app) => require(&field("app_id"), &app.app_id),
        Payload::AppInstallFailed(app) => require(&field("app_id"), &app.app_id),
        // The catalog form is the one without a device, and it names the app by id.
        Payload::AppUpdated(app) if device_id.is_empty() => require(&field("app_id"), &app.app_id),
        _ => Ok(()),
    }
}

/// Every timestamp a typed event carries must be one that proto3 JSON can write (RFC 3339:
/// years 0001 to 9999, nanoseconds within a second): subscribers that render events as JSON —
/// the `subscribe` command, browsers — would otherwise fail on the event, again on every replay.
/// (Timestamps decoded from producer JSON are in range by construction.)
fn check_timestamps(event: &pb::Event) -> Result<(), DecodeError> {
    let usage = |u: &Option<pb::QuotaUsage>| u.as_ref().and_then(|u| u.last_updated_at);
    // `received_at` is not checked: the server overwrites it.
    let mut stamps = vec![("occurred_at", event.occurred_at)];
    match &event.payload {
        Some(Payload::QuotaUpdated(q)) => {
            stamps.push(("quota_updated.usage.last_updated_at", usage(&q.usage)));
        }
        Some(Payload::QuotaExceeded(q)) => {
            stamps.push(("quota_exceeded.usage.last_updated_at", usage(&q.usage)));
        }
        Some(Payload::QuotaRenewed(q)) => stamps.push(("quota_renewed.valid_until", q.valid_until)),
        Some(Payload::BillingLowBalance(b)) => {
            stamps.push(("billing_low_balance.detected_at", b.detected_at));
        }
        Some(Payload::BillingPaymentSuccess(b)) => {
            stamps.push(("billing_payment_success.paid_at", b.paid_at));
        }
        Some(Payload::BillingInvoiceGenerated(b)) => {
            stamps.push(("billing_invoice_generated.due_date", b.due_date));
            stamps.push(("billing_invoice_generated.generated_at", b.generated_at));
        }
        _ => {}
    }
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in seconds since the Unix epoch.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    for (field, stamp) in stamps {
        if let Some(stamp) = stamp
            && (!RANGE.contains(&stamp.seconds) || !(0..1_000_000_000).contains(&stamp.nanos))
        {
            return Err(DecodeError::invalid(
                field,
                "must be a timestamp between the years 0001 and 9999",
            ));
        }
    }
    Ok(())
}

/// The name of the `Event.payload` oneof field that carries `kind`.
fn oneof_name(kind: Kind) -> String {
    kind.name().replace('.', "_")
}

/// A required string field of a typed payload.
fn require(field: &str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::missing(field));
    }
    Ok(())
}

/// A required amount of a typed payload, normalized to plain decimal notation.
fn amount(field: &str, decimal: &mut Option<pb::Decimal>) -> Result<(), DecodeError> {
    let Some(decimal) = decimal else {
        return Err(DecodeError::missing(field));
    };
    decimal.value = money::normalize_decimal(&decimal.value)
        .map_err(|problem| DecodeError::invalid(field, problem))?;
    Ok(())
}
