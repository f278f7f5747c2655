//! `quota.*` (user-service, body shape B): limits, usage, status and alerts of a user's quota.

use serde_json::Value;

use super::Content;
use crate::pb::{self, event::Payload};
use crate::schema::DecodeError;
use crate::schema::fields::Fields;

/// `quota.updated`.
pub(super) fn updated(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let status_text = fields.text("status")?;
    Ok(Content::undated(Payload::QuotaUpdated(pb::QuotaUpdated {
        quota_id: fields.required_string("quotaId")?,
        limits: limits(fields)?,
        usage: usage(fields)?,
        status: status(&status_text) as i32,
        status_text,
    })))
}

/// `quota.exceeded`. `usagePercent` is `null` when a limit is 0 (a division by zero in the
/// producer), which leaves it unset.
pub(super) fn exceeded(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    Ok(Content::undated(Payload::QuotaExceeded(
        pb::QuotaExceeded {
            quota_id: fields.required_string("quotaId")?,
            limits: limits(fields)?,
            usage: usage(fields)?,
            usage_percent: fields.number("usagePercent")?,
        },
    )))
}

/// `quota.renewed`.
pub(super) fn renewed(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    Ok(Content::undated(Payload::QuotaRenewed(pb::QuotaRenewed {
        quota_id: fields.required_string("quotaId")?,
        limits: limits(fields)?,
        valid_until: fields.date("validUntil")?,
        extension_days: fields.number("extensionDays")?,
    })))
}

/// `quota.alert`. Today's producer sends `severity` and a `percentage` object; older ones sent
/// `alertLevel` and `usagePercent`, either as the same object or as one figure.
pub(super) fn alert(fields: &Fields<'_>) -> Result<Content, DecodeError> {
    let severity_text = fields.text(fields.alias(&["severity", "alertLevel"]))?;
    let single_percent = match fields.get("usagePercent") {
        None | Some(Value::Object(_)) => None,
        Some(_) => fields.number("usagePercent")?,
    };
    let percentage_field = if fields.get("percentage").is_some() || single_percent.is_some() {
        "percentage"
    } else {
        "usagePercent"
    };
    let percentage = match fields.object(percentage_field)? {
        Some(object) => Some(percentages(&object)?),
        None => None,
    };
    let max_percent = single_percent.or_else(|| percentage.as_ref().and_then(highest));
    Ok(Content::undated(Payload::QuotaAlert(pb::QuotaAlert {
        quota_id: fields.required_string("quotaId")?,
        plan_name: fields.text("planName")?,
        severity: alert_severity(&severity_text) as i32,
        percentage,
        warnings: fields.strings("warnings")?,
        max_percent,
    })))
}

/// The `limits` object, key by key. Unset when absent.
fn limits(fields: &Fields<'_>) -> Result<Option<pb::QuotaLimits>, DecodeError> {
    let Some(limits) = fields.object("limits")? else {
        return Ok(None);
    };
    Ok(Some(pb::QuotaLimits {
        max_devices: limits.number("maxDevices")?,
        max_concurrent_devices: limits.number("maxConcurrentDevices")?,
        max_cpu_cores_per_device: limits.number("maxCpuCoresPerDevice")?,
        max_memory_mb_per_device: limits.number("maxMemoryMBPerDevice")?,
        max_storage_gb_per_device: limits.number("maxStorageGBPerDevice")?,
        total_cpu_cores: limits.number("totalCpuCores")?,
        total_memory_gb: limits.number("totalMemoryGB")?,
        total_storage_gb: limits.number("totalStorageGB")?,
        max_bandwidth_mbps: limits.number("maxBandwidthMbps")?,
        monthly_traffic_gb: limits.number("monthlyTrafficGB")?,
        max_usage_hours_per_day: limits.number("maxUsageHoursPerDay")?,
        max_usage_hours_per_month: limits.number("maxUsageHoursPerMonth")?,
    }))
}

/// The `usage` object, key by key. Unset when absent.
fn usage(fields: &Fields<'_>) -> Result<Option<pb::QuotaUsage>, DecodeError> {
    let Some(usage) = fields.object("usage")? else {
        return Ok(None);
    };
    Ok(Some(pb::QuotaUsage {
        current_devices: usage.number("currentDevices")?,
        current_concurrent_devices: usage.number("currentConcurrentDevices")?,
        used_cpu_cores: usage.number("usedCpuCores")?,
        used_memory_gb: usage.number("usedMemoryGB")?,
        used_storage_gb: usage.number("usedStorageGB")?,
        current_bandwidth_mbps: usage.number("currentBandwidthMbps")?,
        monthly_traffic_used_gb: usage.number("monthlyTrafficUsedGB")?,
        today_usage_hours: usage.number("todayUsageHours")?,
        monthly_usage_hours: usage.number("monthlyUsageHours")?,
        last_updated_at: usage.date("lastUpdatedAt")?,
    }))
}

/// A `percentage` object, key by key.
fn percentages(object: &Fields<'_>) -> Result<pb::QuotaPercentages, DecodeError> {
    Ok(pb::QuotaPercentages {
        devices: object.number("devices")?,
        cpu: object.number("cpu")?,
        memory: object.number("memory")?,
        storage: object.number("storage")?,
        traffic: object.number("traffic")?,
    })
}

/// The largest percentage sent, if any.
fn highest(percentage: &pb::QuotaPercentages) -> Option<f64> {
    [
        percentage.devices,
        percentage.cpu,
        percentage.memory,
        percentage.storage,
        percentage.traffic,
    ]
    .into_iter()
    .flatten()
    .reduce(f64::max)
}

/// A quota status as spelled by user-service; unknown spellings are unspecified (the text is
/// kept in `status_text`).
fn status(text: &str) -> pb::QuotaStatus {
    match text.to_ascii_lowercase().as_str() {
        "active" => pb::QuotaStatus::Active,
        "exceeded" => pb::QuotaStatus::Exceeded,
        "suspended" => pb::QuotaStatus::Suspended,
        "expired" => pb::QuotaStatus::Expired,
        _ => pb::QuotaStatus::Unspecified,
    }
}

/// An alert severity as spelled by user-service.
fn alert_severity(text: &str) -> pb::AlertSeverity {
    match text.to_ascii_lowercase().as_str() {
        "warning" => pb::AlertSeverity::Warning,
        "critical" => pb::AlertSeverity::Critical,
        _ => pb::AlertSeverity::Unspecified,
    }
}
