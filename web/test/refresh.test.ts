// The refresh table against the wire notes' "What browsers refresh on each event".
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  RESOURCES,
  RESOURCE_LABELS,
  REFRESH_TABLE,
  canonicalEventType,
  describeRefresh,
  deviceAction,
  refreshPlan,
  resourcesToRefresh,
} from "@notify-backbone/client";

// Copied from the table, one row per line, in its words.
const EXPECTED: Record<string, string[]> = {
  "quota.updated": ["quotas", "quota alerts", "quota summary"],
  "quota.alert": ["quota alerts", "quota summary"],
  "quota.exceeded": ["quotas", "quota alerts", "quota summary"],
  "quota.renewed": ["quotas", "quota summary"],
  "billing.low_balance": ["payments", "balance", "billing"],
  "billing.payment_success": ["payments", "payment", "balance", "billing", "transactions"],
  "billing.invoice_generated": ["invoices", "invoice", "billing"],
  "app.installed": ["apps", "app", "device apps", "device"],
  "app.install_failed": ["apps", "device apps"],
  "app.updated": ["apps", "app", "device apps"],
  "device.started": ["devices", "device"],
  "device.stopped": ["devices", "device"],
  "device.created": ["devices", "device stats"],
  "device.deleted": ["devices", "device stats"],
};

test("every row of the table, in its order", () => {
  assert.deepEqual(Object.keys(REFRESH_TABLE).sort(), Object.keys(EXPECTED).sort());
  for (const [type, labels] of Object.entries(EXPECTED)) {
    const got = resourcesToRefresh(type).map((resource) => RESOURCE_LABELS[resource]);
    assert.deepEqual(got, labels, type);
  }
});

test("device status is patched in place on start and stop", () => {
  assert.deepEqual(deviceAction("device.started"), { action: "patchStatus", status: "running" });
  assert.deepEqual(deviceAction("device.stopped"), { action: "patchStatus", status: "stopped" });
});

test("a deleted device is dropped; no other event drops or patches one", () => {
  assert.deepEqual(deviceAction("device.deleted"), { action: "drop" });
  for (const type of Object.keys(EXPECTED)) {
    if (!["device.started", "device.stopped", "device.deleted"].includes(type)) {
      assert.equal(deviceAction(type), undefined, type);
    }
  }
});

test("types outside the table need nothing", () => {
  for (const type of [
    "device.error",
    "billing.order.completed",
    "billing.order.cancelled",
    "admin.notice",
    "no.such",
    "",
    "toString",
    "__proto__",
  ]) {
    assert.deepEqual(resourcesToRefresh(type), [], type);
    assert.equal(refreshPlan(type).device, undefined, type);
    assert.equal(describeRefresh(type), "", type);
  }
});

test("older wire spellings map to the canonical rows", () => {
  assert.equal(canonicalEventType("app.install.failed"), "app.install_failed");
  assert.deepEqual(resourcesToRefresh("app.install.failed"), resourcesToRefresh("app.install_failed"));
  assert.deepEqual(resourcesToRefresh("app.install.completed"), resourcesToRefresh("app.installed"));
});

test("every resource has a label and is used", () => {
  const used = new Set(Object.values(REFRESH_TABLE).flatMap((plan) => plan.resources));
  assert.deepEqual([...used].sort(), [...RESOURCES].sort());
  for (const resource of RESOURCES) assert.ok(RESOURCE_LABELS[resource].length > 0);
});

test("hints read well", () => {
  assert.equal(describeRefresh("quota.alert"), "quota alerts, quota summary");
  assert.equal(describeRefresh("device.stopped"), "devices, device, patch device status to stopped");
  assert.equal(describeRefresh("device.deleted"), "devices, device stats, drop the device");
});
