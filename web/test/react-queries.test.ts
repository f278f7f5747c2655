// The React Query table on a real QueryClient, without React: which keys each event invalidates,
// device status patched in place in every cached list shape, overrides.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { QueryClient, type QueryKey } from "@tanstack/react-query";
import { EventSchema, type Event } from "@notify-backbone/client";
import {
  DEFAULT_QUERY_MAPPING,
  HISTORY_GRACE_MS,
  applyEventToQueries,
  patchDeviceStatus,
  shouldApply,
} from "@notify-backbone/react";

const KEYS: QueryKey[] = [
  ["quotas"],
  ["quota-alerts"],
  ["quota-summary"],
  ["payments"],
  ["payment", "pay-1"],
  ["payment", "pay-2"],
  ["balance", "u1"],
  ["balance", "u2"],
  ["billing"],
  ["transactions"],
  ["invoices"],
  ["invoice", "inv-1"],
  ["apps"],
  ["app", "a1"],
  ["device-apps", "d1"],
  ["device", "d1"],
  ["device", "d2"],
  ["devices"],
  ["device-stats"],
];

/** A client holding every key of the table with data, none stale. */
function seeded(): QueryClient {
  const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
  for (const key of KEYS) client.setQueryData(key, { key });
  return client;
}

function invalidated(client: QueryClient): string[] {
  return client
    .getQueryCache()
    .getAll()
    .filter((query) => query.state.isInvalidated)
    .map((query) => JSON.stringify(query.queryKey))
    .sort();
}

function ev(init: MessageInitShape<typeof EventSchema>): Event {
  return create(EventSchema, { userId: "u1", ...init });
}

const keys = (...list: QueryKey[]) => list.map((key) => JSON.stringify(key)).sort();

test("each event type invalidates the consoles' keys, with the event's own ids", () => {
  const cases: [Event, string[]][] = [
    [ev({ type: "quota.updated" }), keys(["quotas"], ["quota-alerts"], ["quota-summary"])],
    [ev({ type: "quota.alert" }), keys(["quota-alerts"], ["quota-summary"])],
    [ev({ type: "quota.exceeded" }), keys(["quotas"], ["quota-alerts"], ["quota-summary"])],
    [ev({ type: "quota.renewed" }), keys(["quotas"], ["quota-summary"])],
    [ev({ type: "billing.low_balance" }), keys(["payments"], ["balance", "u1"], ["billing"])],
    [
      ev({
        type: "billing.payment_success",
        payload: { case: "billingPaymentSuccess", value: { paymentId: "pay-1", amount: { value: "9.90" } } },
      }),
      keys(["payments"], ["payment", "pay-1"], ["balance", "u1"], ["billing"], ["transactions"]),
    ],
    [
      ev({ type: "billing.invoice_generated", payload: { case: "billingInvoiceGenerated", value: { invoiceId: "inv-1" } } }),
      keys(["invoices"], ["invoice", "inv-1"], ["billing"]),
    ],
    [
      ev({ type: "app.installed", deviceId: "d1", payload: { case: "appInstalled", value: { appId: "a1" } } }),
      keys(["apps"], ["app", "a1"], ["device-apps", "d1"], ["device", "d1"]),
    ],
    [
      ev({ type: "app.updated", deviceId: "d1", payload: { case: "appUpdated", value: { appId: "a1" } } }),
      keys(["apps"], ["app", "a1"], ["device-apps", "d1"]),
    ],
    [
      ev({ type: "app.install_failed", deviceId: "d1", payload: { case: "appInstallFailed", value: { appId: "a1" } } }),
      keys(["apps"], ["device-apps", "d1"]),
    ],
    [ev({ type: "device.created", deviceId: "d1" }), keys(["devices"], ["device-stats"])],
    [ev({ type: "device.error", deviceId: "d1" }), []],
    [ev({ type: "admin.notice" }), []],
  ];
  for (const [event, expected] of cases) {
    const client = seeded();
    applyEventToQueries(event, client);
    assert.deepEqual(invalidated(client), expected, event.type);
  }
});

test("device.deleted invalidates the lists and removes the device's own query", () => {
  const client = seeded();
  applyEventToQueries(ev({ type: "device.deleted", deviceId: "d1" }), client);
  assert.deepEqual(invalidated(client), keys(["devices"], ["device-stats"]));
  assert.equal(client.getQueryData(["device", "d1"]), undefined);
  assert.notEqual(client.getQueryData(["device", "d2"]), undefined);
});

test("a status change patches every cached device list shape in place, refetching nothing", () => {
  const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
  const other = { id: "d2", status: "stopped" };
  const paged = {
    pages: [{ items: [{ id: "d1", status: "stopped", name: "one" }, other] }, { items: [{ id: "d3", status: "running" }] }],
    pageParams: [0, 1],
  };
  client.setQueryData(["devices", { page: "infinite" }], paged);
  client.setQueryData(["devices", "plain"], [{ deviceId: "d1", status: "stopped" }]);
  client.setQueryData(["devices", "one-page"], { items: [{ id: "d1", status: "stopped" }], total: 1 });
  client.setQueryData(["device", "d1"], { id: "d1", status: "stopped" });
  const untouched = [other];
  client.setQueryData(["devices", "others"], untouched);
  applyEventToQueries(
    ev({ type: "device.started", deviceId: "d1", occurredAt: { seconds: 1_700_000_000n, nanos: 5_000_000 } }),
    client,
  );
  const at = "2023-11-14T22:13:20.005Z";
  assert.deepEqual(client.getQueryData(["devices", { page: "infinite" }]), {
    pages: [{ items: [{ id: "d1", status: "running", name: "one", updatedAt: at }, other] }, paged.pages[1]],
    pageParams: [0, 1],
  });
  assert.deepEqual(client.getQueryData(["devices", "plain"]), [{ deviceId: "d1", status: "running", updatedAt: at }]);
  assert.deepEqual(client.getQueryData(["devices", "one-page"]), {
    items: [{ id: "d1", status: "running", updatedAt: at }],
    total: 1,
  });
  assert.deepEqual(client.getQueryData(["device", "d1"]), { id: "d1", status: "running", updatedAt: at });
  assert.equal(client.getQueryData(["devices", "others"]), untouched, "a list without the device keeps its identity");
  assert.deepEqual(invalidated(client), [], "a status change refetches nothing");

  applyEventToQueries(ev({ type: "device.stopped", deviceId: "d1" }), client);
  assert.equal((client.getQueryData(["device", "d1"]) as { status: string }).status, "stopped");
  // The name the consoles listened for, should a producer ever send it (kept as `untyped`).
  applyEventToQueries(
    ev({ type: "device.status.changed", deviceId: "d1", payload: { case: "untyped", value: { status: "error" } } }),
    client,
  );
  assert.equal((client.getQueryData(["device", "d1"]) as { status: string }).status, "error");
  assert.equal(patchDeviceStatus("not a list", { deviceId: "d1", status: "x", at: "" }), "not a list");
});

test("an app's mapping replaces or turns off a default, and adds types", () => {
  const client = seeded();
  const mapping = {
    ...DEFAULT_QUERY_MAPPING,
    "quota.updated": null,
    "billing.low_balance": { invalidate: () => [["billing"]] },
    "device.error": { invalidate: (e: Event) => [["device", e.deviceId]] },
  };
  applyEventToQueries(ev({ type: "quota.updated" }), client, mapping);
  assert.deepEqual(invalidated(client), []);
  applyEventToQueries(ev({ type: "billing.low_balance" }), client, mapping);
  applyEventToQueries(ev({ type: "device.error", deviceId: "d2" }), client, mapping);
  assert.deepEqual(invalidated(client), keys(["billing"], ["device", "d2"]));
});

test("a status change restarts a device list fetch already under way, which would overwrite it", async () => {
  const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
  void client.fetchQuery({ queryKey: ["devices", "loading"], queryFn: () => new Promise<never>(() => {}) });
  client.setQueryData(["devices", "loaded"], [{ id: "d1", status: "stopped" }]);
  applyEventToQueries(ev({ type: "device.started", deviceId: "d1" }), client);
  assert.deepEqual(invalidated(client), keys(["devices", "loading"]));
  assert.deepEqual(client.getQueryData(["devices", "loaded"]), [{ id: "d1", status: "running" }]);
});

test("history is applied only when it happened shortly before the hook mounted", () => {
  const mountedAt = Date.UTC(2026, 0, 1, 12);
  const at = (ms: number) => ev({ receivedAt: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 } });
  const history = { history: true };
  assert.ok(shouldApply(at(mountedAt - 1_000), history, mountedAt), "just before the mount");
  assert.ok(shouldApply(at(mountedAt + 5_000), history, mountedAt), "a server clock ahead");
  assert.ok(shouldApply(at(mountedAt - HISTORY_GRACE_MS), history, mountedAt));
  assert.ok(!shouldApply(at(mountedAt - HISTORY_GRACE_MS - 1_000), history, mountedAt), "older: loaded at mount");
  assert.ok(!shouldApply(ev({}), history, mountedAt), "no time: treated as old");
  assert.ok(shouldApply(at(0), { history: false }, mountedAt), "the stream's events always");
});
