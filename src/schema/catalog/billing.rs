//! `billing.*`: balances, payments, invoices and orders.
//!
//! Amounts are required: a payment or an invoice of an unknown amount would show users a wrong
//! figure, so such a body is dead-lettered with the field named rather than delivered.

use super::Content;
use crate::pb::{self, event::Payload};
use crate::schema::DecodeError;
use crate::schema::fields::Fields;

/// `billing.low_balance`. `daysRemaining` stays unset when not sent: the producers' default of
/// 3 is theirs to fill in, not a fact about this user.
pub(super) fn low_balance(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let detected_at = fields.date("detectedAt")?;
    let payload = pb::BillingLowBalance {
        username: fields.text("username")?,
        email: fields.text("email")?,
        current_balance: Some(fields.required_money("currentBalance")?),
        threshold: Some(fields.required_money("threshold")?),
        days_remaining: fields.number("daysRemaining")?,
        detected_at,
    };
    Ok(Content::dated(
        Payload::BillingLowBalance(payload),
        detected_at,
    ))
}

/// `billing.payment_success`. The e-mail is `userEmail` on the wire.
pub(super) fn payment_success(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let paid_at = fields.date("paidAt")?;
    let payload = pb::BillingPaymentSuccess {
        username: fields.text("username")?,
        email: fields.text(fields.alias(&["userEmail", "email"]))?,
        amount: Some(fields.required_money("amount")?),
        order_id: fields.text("orderId")?,
        payment_id: fields.required_string("paymentId")?,
        payment_method: fields.text("paymentMethod")?,
        paid_at,
        new_balance: Some(fields.required_money("newBalance")?),
    };
    Ok(Content::dated(
        Payload::BillingPaymentSuccess(payload),
        paid_at,
    ))
}

/// `billing.invoice_generated`.
pub(super) fn invoice_generated(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let generated_at = fields.date("generatedAt")?;
    let payload = pb::BillingInvoiceGenerated {
        username: fields.text("username")?,
        email: fields.text("email")?,
        invoice_id: fields.required_string("invoiceId")?,
        amount: Some(fields.required_money("amount")?),
        month: fields.text("month")?,
        due_date: fields.date("dueDate")?,
        generated_at,
    };
    Ok(Content::dated(
        Payload::BillingInvoiceGenerated(payload),
        generated_at,
    ))
}

/// `billing.order.completed`.
pub(super) fn order_completed(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    Ok(Content::undated(Payload::BillingOrderCompleted(
        pb::BillingOrderCompleted {
            order_id: fields.required_string("orderId")?,
            amount: Some(fields.required_money("amount")?),
        },
    )))
}

/// `billing.order.cancelled`.
pub(super) fn order_cancelled(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    Ok(Content::undated(Payload::BillingOrderCancelled(
        pb::BillingOrderCancelled {
            order_id: fields.required_string("orderId")?,
            reason: fields.text("reason")?,
        },
    )))
}
