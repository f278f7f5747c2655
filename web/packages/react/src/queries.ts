// Keeping React Query caches fresh: what each event type does to a `QueryClient`, as data an app
// can override, and the hook that applies it to the provider's stream. The default table is what
// the consoles' Socket.IO hooks did, fixed where they listened for event names nobody sent.

import { useEffect, useRef } from "react";
import { useQueryClient, type QueryClient, type QueryKey } from "@tanstack/react-query";
import { canonicalEventType, type Event, type EventOrigin } from "@notify-backbone/client";
import { useNotificationsConnection } from "./provider.js";

/** What one event type does to the cache. Every part is optional. */
export interface QueryAction {
  /** Keys to invalidate: active queries under them refetch, the others are marked stale. */
  invalidate?: (event: Event) => readonly QueryKey[];
  /** Keys to remove from the cache (the thing is gone). */
  remove?: (event: Event) => readonly QueryKey[];
  /** Anything else, run first: e.g. patching cached data in place, without a refetch. */
  update?: (event: Event, queryClient: QueryClient) => void;
}

/** Event type → action. `null` turns a default off. */
export type QueryMapping = Readonly<Record<string, QueryAction | null>>;

/** A key only when its id is known: `['payment', '']` would refresh nothing useful. */
function keyed(name: string, id: string | undefined): QueryKey[] {
  return id === undefined || id === "" ? [] : [[name, id]];
}

function appId(event: Event): string | undefined {
  const payload = event.payload;
  switch (payload.case) {
    case "appInstalled":
    case "appInstallFailed":
    case "appUpdated":
      return payload.value.appId;
    default:
      return undefined;
  }
}

/** The status a device event sets, or `undefined` when it sets none. */
export function deviceStatusOf(event: Event): string | undefined {
  switch (canonicalEventType(event.type)) {
    case "device.started":
      return "running";
    case "device.stopped":
      return "stopped";
    default: {
      // `device.status.changed`: no producer sends it today, but the consoles' hooks expected it;
      // a producer that does would have its fields kept as they came (the `untyped` payload).
      const payload = event.payload;
      if (payload.case === "untyped") {
        const status = payload.value["status"] ?? payload.value["newStatus"];
        if (typeof status === "string" && status !== "") return status;
      }
      return undefined;
    }
  }
}

/** A device status change, as the default patch applies it. */
export interface DeviceStatusChange {
  deviceId: string;
  status: string;
  /** When it happened (the event's `occurredAt`), ISO 8601; `""` when unknown. */
  at: string;
}

function occurredAt(event: Event): string {
  const at = event.occurredAt;
  if (at === undefined) return "";
  return new Date(Number(at.seconds) * 1000 + Math.floor(at.nanos / 1e6)).toISOString();
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Whether a cached object is the device `deviceId` (by `id` or `deviceId`). */
function isDevice(item: unknown, deviceId: string): item is Record<string, unknown> {
  return isRecord(item) && (item["id"] === deviceId || item["deviceId"] === deviceId);
}

function patchDevice(item: Record<string, unknown>, change: DeviceStatusChange): Record<string, unknown> {
  return { ...item, status: change.status, ...(change.at === "" ? {} : { updatedAt: change.at }) };
}

function patchList(list: readonly unknown[], change: DeviceStatusChange): readonly unknown[] {
  let changed = false;
  const patched = list.map((item) => {
    if (!isDevice(item, change.deviceId)) return item;
    changed = true;
    return patchDevice(item, change);
  });
  return changed ? patched : list;
}

/**
 * `data` with the device's status patched, in the shapes device lists are cached in: a plain
 * array, `{ items: [...] }`, and infinite queries' `{ pages: [{ items: [...] }] }` (or pages that
 * are arrays). Anything else, and data without that device, comes back unchanged (the same
 * object, so React Query sees no change and re-renders nothing).
 */
export function patchDeviceStatus(data: unknown, change: DeviceStatusChange): unknown {
  if (Array.isArray(data)) return patchList(data, change);
  if (!isRecord(data)) return data;
  const items = data["items"];
  if (Array.isArray(items)) {
    const patched = patchList(items, change);
    return patched === items ? data : { ...data, items: patched };
  }
  const pages = data["pages"];
  if (Array.isArray(pages)) {
    const patched = pages.map((page) => patchDeviceStatus(page, change));
    return patched.every((page, n) => page === pages[n]) ? data : { ...data, pages: patched };
  }
  return data;
}

/**
 * Patches a device's new status into every cached `['devices', ...]` list and into
 * `['device', deviceId]`, without refetching anything.
 */
export function applyDeviceStatus(event: Event, queryClient: QueryClient): void {
  const status = deviceStatusOf(event);
  if (status === undefined || event.deviceId === "") return;
  const change: DeviceStatusChange = { deviceId: event.deviceId, status, at: occurredAt(event) };
  queryClient.setQueriesData({ queryKey: ["devices"] }, (data: unknown) => patchDeviceStatus(data, change));
  queryClient.setQueriesData({ queryKey: ["device", event.deviceId], exact: true }, (data: unknown) =>
    isRecord(data) ? patchDevice(data, change) : data,
  );
  // A fetch already under way may have read the device before the change, and its result would
  // overwrite the patch: start those again instead.
  for (const query of queryClient.getQueryCache().findAll({ queryKey: ["devices"] })) {
    if (query.state.fetchStatus === "fetching") {
      void queryClient.invalidateQueries({ queryKey: query.queryKey, exact: true });
    }
  }
  for (const query of queryClient.getQueryCache().findAll({ queryKey: ["device", event.deviceId], exact: true })) {
    if (query.state.fetchStatus === "fetching") {
      void queryClient.invalidateQueries({ queryKey: query.queryKey, exact: true });
    }
  }
}

const quotaAll: QueryAction = { invalidate: () => [["quotas"], ["quota-alerts"], ["quota-summary"]] };
const deviceStatus: QueryAction = { update: applyDeviceStatus };

/** The consoles' table. */
export const DEFAULT_QUERY_MAPPING: QueryMapping = {
  "quota.updated": quotaAll,
  "quota.alert": { invalidate: () => [["quota-alerts"], ["quota-summary"]] },
  "quota.exceeded": quotaAll,
  "quota.renewed": { invalidate: () => [["quotas"], ["quota-summary"]] },
  "device.status.changed": deviceStatus,
  "device.started": deviceStatus,
  "device.stopped": deviceStatus,
  "device.created": { invalidate: () => [["devices"], ["device-stats"]] },
  "device.deleted": {
    invalidate: () => [["devices"], ["device-stats"]],
    remove: (e) => keyed("device", e.deviceId),
  },
  "app.installed": {
    invalidate: (e) => [
      ["apps"],
      ...keyed("app", appId(e)),
      ...keyed("device-apps", e.deviceId),
      ...keyed("device", e.deviceId),
    ],
  },
  "app.updated": {
    invalidate: (e) => [["apps"], ...keyed("app", appId(e)), ...keyed("device-apps", e.deviceId)],
  },
  "app.install_failed": { invalidate: (e) => [["apps"], ...keyed("device-apps", e.deviceId)] },
  "billing.low_balance": {
    invalidate: (e) => [["payments"], ...keyed("balance", e.userId), ["billing"]],
  },
  "billing.payment_success": {
    invalidate: (e) => [
      ["payments"],
      ...keyed("payment", e.payload.case === "billingPaymentSuccess" ? e.payload.value.paymentId : undefined),
      ...keyed("balance", e.userId),
      ["billing"],
      ["transactions"],
    ],
  },
  "billing.invoice_generated": {
    invalidate: (e) => [
      ["invoices"],
      ...keyed("invoice", e.payload.case === "billingInvoiceGenerated" ? e.payload.value.invoiceId : undefined),
      ["billing"],
    ],
  },
};

/** What `mapping` does for `event` (its canonical type), or `undefined` for nothing. */
export function queryActionFor(event: Event, mapping: QueryMapping = DEFAULT_QUERY_MAPPING): QueryAction | undefined {
  const type = canonicalEventType(event.type);
  if (!Object.prototype.hasOwnProperty.call(mapping, type)) return undefined;
  return mapping[type] ?? undefined;
}

/** Applies `mapping` for one event to `queryClient`: update, then remove, then invalidate. */
export function applyEventToQueries(
  event: Event,
  queryClient: QueryClient,
  mapping: QueryMapping = DEFAULT_QUERY_MAPPING,
): void {
  const action = queryActionFor(event, mapping);
  if (action === undefined) return;
  action.update?.(event, queryClient);
  for (const queryKey of action.remove?.(event) ?? []) queryClient.removeQueries({ queryKey });
  for (const queryKey of action.invalidate?.(event) ?? []) void queryClient.invalidateQueries({ queryKey });
}

/**
 * How long before the hook mounted a history event may have happened and still be applied: the
 * queries load at mount and the history is read a moment later, so an event in between is in
 * the history but maybe not in what the queries loaded. The margin also absorbs a difference
 * between the server's clock (`receivedAt`) and the browser's. Older history is left alone: the
 * queries loaded after it.
 */
export const HISTORY_GRACE_MS = 30_000;

/**
 * Whether `useQueryRefresh` applies an event: every event of the stream (live, or replayed after
 * a reconnect), and history events received at most `HISTORY_GRACE_MS` before `mountedAt` (ms
 * since the epoch, the browser's clock).
 */
export function shouldApply(event: Event, origin: EventOrigin, mountedAt: number): boolean {
  if (!origin.history) return true;
  const at = event.receivedAt;
  if (at === undefined) return false;
  return Number(at.seconds) * 1000 + at.nanos / 1e6 >= mountedAt - HISTORY_GRACE_MS;
}

/** Options of `useQueryRefresh`. */
export interface QueryRefreshOptions {
  /** Per event type, replaces the default (`null` turns it off); other types keep theirs. */
  mapping?: QueryMapping;
  /** Default: the one from `QueryClientProvider`. */
  queryClient?: QueryClient;
}

/**
 * Applies the mapping to the query cache for every event the provider's stream delivers (live
 * ones, and the ones replayed after a reconnect), and for the first paint's history only what
 * happened shortly before the hook mounted (`shouldApply`): older history the queries loaded at
 * mount already show, and refetching for each of those events would only cost requests. Mount
 * it once, near the root. Unmounting removes this hook's listener only.
 */
export function useQueryRefresh(options: QueryRefreshOptions = {}): void {
  const connection = useNotificationsConnection();
  const queryClient = useQueryClient(options.queryClient);
  // The latest mapping without re-subscribing when an inline object changes identity.
  const mapping = useRef<QueryMapping>(DEFAULT_QUERY_MAPPING);
  const latest = options.mapping;
  useEffect(() => {
    mapping.current = latest === undefined ? DEFAULT_QUERY_MAPPING : { ...DEFAULT_QUERY_MAPPING, ...latest };
  }, [latest]);
  useEffect(() => {
    const mountedAt = Date.now();
    return connection.listen({
      onEvent: (event, origin) => {
        if (shouldApply(event, origin, mountedAt)) applyEventToQueries(event, queryClient, mapping.current);
      },
    });
  }, [connection, queryClient]);
}
