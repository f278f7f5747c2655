// The summary line of each event type, for events shaped like the wire fixtures
// (tests/fixtures/wire) after the server decoded them.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AlertSeverity,
  EventSchema,
  NoticeSeverity,
  QuotaStatus,
} from "@notify-backbone/client";
import { formatNumber, isoDate, summarize } from "../src/summary";

type Init = MessageInitShape<typeof EventSchema>;

function event(type: string, payload: Init["payload"], extra: { userId?: string; deviceId?: string } = {}) {
  const init: Init = { id: "e-1", type, userId: "u-1001", deviceId: "d-7001", ...extra };
  if (payload !== undefined) init.payload = payload;
  return create(EventSchema, init);
}

const money = (value: string) => ({ value });

test("quota.updated: status text, else the enum name, else nothing", () => {
  const init = { quotaId: "q-2001", status: QuotaStatus.ACTIVE, statusText: "active" };
  assert.equal(
    summarize(event("quota.updated", { case: "quotaUpdated", value: init })),
    "Quota q-2001 updated: active",
  );
  assert.equal(
    summarize(
      event("quota.updated", {
        case: "quotaUpdated",
        value: { quotaId: "q-1", status: QuotaStatus.SUSPENDED },
      }),
    ),
    "Quota q-1 updated: suspended",
  );
  assert.equal(
    summarize(event("quota.updated", { case: "quotaUpdated", value: { quotaId: "q-1" } })),
    "Quota q-1 updated",
  );
});

test("quota.exceeded: percentage only when sent", () => {
  assert.equal(
    summarize(
      event("quota.exceeded", {
        case: "quotaExceeded",
        value: { quotaId: "q-2001", usagePercent: 105 },
      }),
    ),
    "Quota q-2001 exceeded (105% used)",
  );
  assert.equal(
    summarize(event("quota.exceeded", { case: "quotaExceeded", value: { quotaId: "q-2002" } })),
    "Quota q-2002 exceeded",
  );
});

test("quota.renewed: the UTC date of valid_until", () => {
  const validUntil = timestampFromDate(new Date("2025-12-31T23:59:59.000Z"));
  assert.equal(
    summarize(
      event("quota.renewed", {
        case: "quotaRenewed",
        value: { quotaId: "q-2001", validUntil, extensionDays: 30 },
      }),
    ),
    "Quota q-2001 renewed until 2025-12-31",
  );
  assert.equal(
    summarize(event("quota.renewed", { case: "quotaRenewed", value: { quotaId: "q-2001" } })),
    "Quota q-2001 renewed",
  );
});

test("quota.alert: severity, plan and warnings", () => {
  assert.equal(
    summarize(
      event("quota.alert", {
        case: "quotaAlert",
        value: {
          quotaId: "q-2001",
          planName: "Pro",
          severity: AlertSeverity.CRITICAL,
          warnings: ["CPU usage at 97.5%", "Device count at 90%"],
          maxPercent: 97.5,
        },
      }),
    ),
    "Critical quota alert (Pro): CPU usage at 97.5%; Device count at 90%",
  );
  assert.equal(
    summarize(
      event("quota.alert", {
        case: "quotaAlert",
        value: {
          quotaId: "q-2003",
          planName: "Basic",
          severity: AlertSeverity.WARNING,
          warnings: ["Storage usage at 94.9%"],
        },
      }),
    ),
    "Warning quota alert (Basic): Storage usage at 94.9%",
  );
  // The legacy single-figure form has no warnings: the highest percentage stands in.
  assert.equal(
    summarize(
      event("quota.alert", {
        case: "quotaAlert",
        value: {
          quotaId: "q-2005",
          planName: "Enterprise",
          severity: AlertSeverity.WARNING,
          maxPercent: 88,
        },
      }),
    ),
    "Warning quota alert (Enterprise): 88% used",
  );
  assert.equal(
    summarize(event("quota.alert", { case: "quotaAlert", value: { quotaId: "q" } })),
    "Quota alert",
  );
});

test("billing: money is the decimal string verbatim", () => {
  assert.equal(
    summarize(
      event("billing.low_balance", {
        case: "billingLowBalance",
        value: { currentBalance: money("4.80"), threshold: money("10.00") },
      }),
    ),
    "Low balance: 4.80 (threshold 10.00)",
  );
  assert.equal(
    summarize(
      event("billing.payment_success", {
        case: "billingPaymentSuccess",
        value: { amount: money("99.9"), orderId: "o-4001", paymentId: "p-3001" },
      }),
    ),
    "Payment of 99.9 received (order o-4001)",
  );
  assert.equal(
    summarize(
      event("billing.payment_success", {
        case: "billingPaymentSuccess",
        value: { amount: money("99.90"), paymentId: "p-3002" },
      }),
    ),
    "Payment of 99.90 received",
  );
  assert.equal(
    summarize(
      event("billing.invoice_generated", {
        case: "billingInvoiceGenerated",
        value: { invoiceId: "inv-5001", month: "2025-11", amount: money("250.00") },
      }),
    ),
    "Invoice inv-5001 for 2025-11: 250.00",
  );
  assert.equal(
    summarize(
      event("billing.invoice_generated", {
        case: "billingInvoiceGenerated",
        value: { invoiceId: "inv-5002", amount: money("12.30") },
      }),
    ),
    "Invoice inv-5002: 12.30",
  );
  assert.equal(
    summarize(
      event("billing.order.completed", {
        case: "billingOrderCompleted",
        value: { orderId: "o-4002", amount: money("29.99") },
      }),
    ),
    "Order o-4002 completed: 29.99",
  );
  assert.equal(
    summarize(
      event("billing.order.cancelled", {
        case: "billingOrderCancelled",
        value: { orderId: "o-4003", reason: "payment timeout" },
      }),
    ),
    "Order o-4003 cancelled: payment timeout",
  );
  assert.equal(
    summarize(
      event("billing.order.cancelled", { case: "billingOrderCancelled", value: { orderId: "o-1" } }),
    ),
    "Order o-1 cancelled",
  );
});

test("app events: names, else ids", () => {
  assert.equal(
    summarize(
      event("app.installed", {
        case: "appInstalled",
        value: { appId: "a-8001", appName: "WeChat", deviceName: "phone-1", version: "8.0.50" },
      }),
    ),
    "WeChat 8.0.50 installed on phone-1",
  );
  assert.equal(
    summarize(
      event(
        "app.installed",
        { case: "appInstalled", value: { appId: "a-8002", installationId: "i-6002" } },
        { deviceId: "d-7002" },
      ),
    ),
    "a-8002 installed on d-7002",
  );
  assert.equal(
    summarize(
      event("app.install_failed", {
        case: "appInstallFailed",
        value: {
          appId: "a-8003",
          appName: "Douyin",
          deviceName: "phone-1",
          error: "INSTALL_FAILED_INSUFFICIENT_STORAGE",
        },
      }),
    ),
    "Douyin failed to install on phone-1: INSTALL_FAILED_INSUFFICIENT_STORAGE",
  );
  assert.equal(
    summarize(
      event(
        "app.install_failed",
        { case: "appInstallFailed", value: { appId: "a-8004", error: "device offline" } },
        { deviceId: "d-7003" },
      ),
    ),
    "a-8004 failed to install on d-7003: device offline",
  );
  assert.equal(
    summarize(
      event("app.updated", {
        case: "appUpdated",
        value: { appName: "WeChat", oldVersion: "8.0.50", newVersion: "8.0.51" },
      }),
    ),
    "WeChat updated 8.0.50 → 8.0.51",
  );
  // Catalog edit: no user, no device; package name and version name, old value from oldValues.
  assert.equal(
    summarize(
      event(
        "app.updated",
        {
          case: "appUpdated",
          value: {
            appId: "a-8001",
            packageName: "com.tencent.mm",
            versionName: "8.0.51",
            updatedFields: ["versionName", "description"],
            oldValues: { versionName: "8.0.50", description: "Old" },
            newValues: { versionName: "8.0.51", description: "New" },
          },
        },
        { userId: "", deviceId: "" },
      ),
    ),
    "com.tencent.mm updated 8.0.50 → 8.0.51",
  );
  assert.equal(
    summarize(
      event("app.updated", {
        case: "appUpdated",
        value: { appId: "a-1", packageName: "com.example", versionName: "2.0" },
      }),
    ),
    "com.example updated to 2.0",
  );
  assert.equal(
    summarize(
      event("app.updated", {
        case: "appUpdated",
        value: { appId: "a-1", updatedFields: ["description"] },
      }),
    ),
    "a-1 updated (description)",
  );
});

test("device events", () => {
  assert.equal(
    summarize(
      event("device.created", {
        case: "deviceCreated",
        value: { deviceName: "phone-10", status: "creating", providerType: "redroid" },
      }),
    ),
    "Device phone-10 created (creating)",
  );
  assert.equal(
    summarize(event("device.started", { case: "deviceStarted", value: { providerType: "redroid" } })),
    "Device started",
  );
  assert.equal(
    summarize(
      event("device.stopped", { case: "deviceStopped", value: { durationSeconds: 3600 } }),
    ),
    "Device stopped after 3600s",
  );
  assert.equal(
    summarize(event("device.stopped", { case: "deviceStopped", value: {} })),
    "Device stopped",
  );
  assert.equal(
    summarize(event("device.deleted", { case: "deviceDeleted", value: { deviceName: "phone-10" } })),
    "Device phone-10 deleted",
  );
  assert.equal(
    summarize(
      event("device.deleted", { case: "deviceDeleted", value: {} }, { deviceId: "d-7012" }),
    ),
    "Device d-7012 deleted",
  );
  assert.equal(
    summarize(
      event("device.error", {
        case: "deviceError",
        value: {
          deviceName: "phone-10",
          errorType: "adb_disconnected",
          errorMessage: "ADB connection lost",
        },
      }),
    ),
    "Device phone-10 error: ADB connection lost",
  );
});

test("admin notices, untyped and unknown payloads", () => {
  assert.equal(
    summarize(
      event(
        "admin.notice",
        {
          case: "adminNotice",
          value: {
            severity: NoticeSeverity.ERROR,
            title: "Quota exceeded",
            message: "User u-1001 exceeded quota q-2001",
          },
        },
        { userId: "" },
      ),
    ),
    "Quota exceeded: User u-1001 exceeded quota q-2001",
  );
  assert.equal(
    summarize(event("device.rebooted", { case: "untyped", value: { deviceId: "d-1" } })),
    "device.rebooted (untyped)",
  );
  assert.equal(summarize(event("billing.refund", { case: undefined })), "billing.refund");
});

test("helpers", () => {
  assert.equal(formatNumber(97.5), "97.5");
  assert.equal(formatNumber(105), "105");
  assert.equal(formatNumber(1 / 3), "0.33");
  assert.equal(isoDate(undefined), "");
  assert.equal(isoDate(timestampFromDate(new Date("2025-01-02T00:00:00Z"))), "2025-01-02");
});
