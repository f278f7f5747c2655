// One readable line per event: `summarize(event)` is pure (no DOM, no clock, no locale), so the
// page, a test or another front end gets the same text for the same event.
//
// Money is the `Decimal.value` string exactly as the producer wrote it (`99.90` stays `99.90`);
// optional parts that were not sent are left out rather than shown empty.

import type { JsonValue } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AlertSeverity,
  QuotaStatus,
  type Decimal,
  type Event,
} from "@notify-backbone/client";

/** The first argument that is a non-empty string, else `""`. */
function first(...values: (string | undefined)[]): string {
  for (const value of values) {
    if (value !== undefined && value !== "") return value;
  }
  return "";
}

/** `text` preceded by `prefix`, or `""` when `text` is empty. */
function prefixed(prefix: string, text: string): string {
  return text === "" ? "" : prefix + text;
}

/** A decimal amount verbatim, `""` when unset. */
function money(amount: Decimal | undefined): string {
  return amount?.value ?? "";
}

/** A number without float noise: at most two decimals, no trailing zeros (`97.5`, `105`). */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  return String(Math.round(value * 100) / 100);
}

/** The UTC calendar date of a timestamp, `YYYY-MM-DD`, or `""` when unset. */
export function isoDate(timestamp: Timestamp | undefined): string {
  if (timestamp === undefined) return "";
  const millis = Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6);
  const date = new Date(millis);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString().slice(0, 10);
}

/** `QuotaStatus.ACTIVE` → `active`; `""` for unspecified or unknown values. */
function quotaStatusName(status: QuotaStatus): string {
  if (status === QuotaStatus.UNSPECIFIED) return "";
  const name = (QuotaStatus as unknown as Record<number, string | undefined>)[status];
  return name === undefined ? "" : name.toLowerCase();
}

/** A string member of a JSON object, `""` otherwise. */
function jsonString(object: { [key: string]: JsonValue } | undefined, key: string): string {
  const value = object?.[key];
  return typeof value === "string" ? value : "";
}

/** The readable summary of one event, e.g. `Payment of 99.90 received (order o-1)`. */
export function summarize(event: Event): string {
  const payload = event.payload;
  switch (payload.case) {
    case "quotaUpdated": {
      const p = payload.value;
      const status = first(p.statusText, quotaStatusName(p.status));
      return `Quota ${p.quotaId} updated${prefixed(": ", status)}`;
    }
    case "quotaExceeded": {
      const p = payload.value;
      const percent =
        p.usagePercent === undefined ? "" : ` (${formatNumber(p.usagePercent)}% used)`;
      return `Quota ${p.quotaId} exceeded${percent}`;
    }
    case "quotaRenewed": {
      const p = payload.value;
      return `Quota ${p.quotaId} renewed${prefixed(" until ", isoDate(p.validUntil))}`;
    }
    case "quotaAlert": {
      const p = payload.value;
      const level =
        p.severity === AlertSeverity.CRITICAL
          ? "Critical quota alert"
          : p.severity === AlertSeverity.WARNING
            ? "Warning quota alert"
            : "Quota alert";
      const plan = prefixed(" (", p.planName) + (p.planName === "" ? "" : ")");
      const detail =
        p.warnings.length > 0
          ? p.warnings.join("; ")
          : p.maxPercent === undefined
            ? ""
            : `${formatNumber(p.maxPercent)}% used`;
      return `${level}${plan}${prefixed(": ", detail)}`;
    }
    case "billingLowBalance": {
      const p = payload.value;
      const threshold = money(p.threshold);
      return `Low balance: ${money(p.currentBalance)}${prefixed(" (threshold ", threshold)}${threshold === "" ? "" : ")"}`;
    }
    case "billingPaymentSuccess": {
      const p = payload.value;
      const order = p.orderId === "" ? "" : ` (order ${p.orderId})`;
      return `Payment of ${money(p.amount)} received${order}`;
    }
    case "billingInvoiceGenerated": {
      const p = payload.value;
      return `Invoice ${p.invoiceId}${prefixed(" for ", p.month)}${prefixed(": ", money(p.amount))}`;
    }
    case "billingOrderCompleted": {
      const p = payload.value;
      return `Order ${p.orderId} completed${prefixed(": ", money(p.amount))}`;
    }
    case "billingOrderCancelled": {
      const p = payload.value;
      return `Order ${p.orderId} cancelled${prefixed(": ", p.reason)}`;
    }
    case "appInstalled": {
      const p = payload.value;
      const app = first(p.appName, p.appId, "App");
      const device = first(p.deviceName, event.deviceId);
      return `${app}${prefixed(" ", p.version)} installed${prefixed(" on ", device)}`;
    }
    case "appInstallFailed": {
      const p = payload.value;
      const app = first(p.appName, p.appId, "App");
      const device = first(p.deviceName, event.deviceId);
      return `${app} failed to install${prefixed(" on ", device)}${prefixed(": ", p.error)}`;
    }
    case "appUpdated": {
      const p = payload.value;
      const app = first(p.appName, p.packageName, p.appId, "App");
      const from = first(p.oldVersion, jsonString(p.oldValues, "versionName"));
      const to = first(p.newVersion, p.versionName, jsonString(p.newValues, "versionName"));
      if (from !== "" && to !== "") return `${app} updated ${from} → ${to}`;
      if (to !== "") return `${app} updated to ${to}`;
      const fields = p.updatedFields.join(", ");
      return `${app} updated${fields === "" ? "" : ` (${fields})`}`;
    }
    case "deviceCreated": {
      const p = payload.value;
      const name = first(p.deviceName, event.deviceId);
      const status = p.status === "" ? "" : ` (${p.status})`;
      return `Device${prefixed(" ", name)} created${status}`;
    }
    case "deviceStarted":
      return "Device started";
    case "deviceStopped": {
      const seconds = payload.value.durationSeconds;
      return seconds === undefined
        ? "Device stopped"
        : `Device stopped after ${formatNumber(seconds)}s`;
    }
    case "deviceDeleted": {
      const name = first(payload.value.deviceName, event.deviceId);
      return `Device${prefixed(" ", name)} deleted`;
    }
    case "deviceError": {
      const p = payload.value;
      const name = first(p.deviceName, event.deviceId);
      const text = first(p.errorMessage, p.errorType);
      return `Device${prefixed(" ", name)} error${prefixed(": ", text)}`;
    }
    case "adminNotice": {
      const p = payload.value;
      if (p.title === "") return p.message;
      return `${p.title}${prefixed(": ", p.message)}`;
    }
    case "untyped":
      return `${event.type} (untyped)`;
    case undefined:
      return event.type;
  }
}
