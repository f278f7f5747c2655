/**
 * What a console must reload when an event arrives.
 *
 * This is the table "What browsers refresh on each event" of the platform's wire notes, as data:
 * the consoles used to hard-code it in their socket handlers. Import it from any front end (it
 * has no dependency on the generated client or on the DOM):
 *
 * ```ts
 * import { refreshPlan, resourcesToRefresh } from "./refresh";
 *
 * for (const resource of resourcesToRefresh(event.type)) invalidate(resource);
 * const device = refreshPlan(event.type).device;
 * if (device?.action === "drop") removeDevice(event.deviceId);
 * if (device?.action === "patchStatus") setDeviceStatus(event.deviceId, device.status);
 * ```
 *
 * Event types are the canonical ones notify-backbone sends in `Event.type` (`app.install_failed`);
 * the older wire spellings (`app.install.failed`, `app.install.completed`) are accepted too.
 * Types the table does not list (`device.error`, `billing.order.*`, `admin.notice`, unknown ones)
 * need no reload: the functions return an empty list for them.
 */

/** A piece of data a console caches and reloads. */
export type Resource =
  | "quotas"
  | "quotaAlerts"
  | "quotaSummary"
  | "payments"
  | "payment"
  | "balance"
  | "billing"
  | "transactions"
  | "invoices"
  | "invoice"
  | "apps"
  | "app"
  | "deviceApps"
  | "device"
  | "devices"
  | "deviceStats";

/** Every resource, in the order of the table. */
export const RESOURCES: readonly Resource[] = [
  "quotas",
  "quotaAlerts",
  "quotaSummary",
  "payments",
  "payment",
  "balance",
  "billing",
  "transactions",
  "invoices",
  "invoice",
  "apps",
  "app",
  "deviceApps",
  "device",
  "devices",
  "deviceStats",
];

/** Human-readable names of the resources, for hints and logs. */
export const RESOURCE_LABELS: Readonly<Record<Resource, string>> = {
  quotas: "quotas",
  quotaAlerts: "quota alerts",
  quotaSummary: "quota summary",
  payments: "payments",
  payment: "payment",
  balance: "balance",
  billing: "billing",
  transactions: "transactions",
  invoices: "invoices",
  invoice: "invoice",
  apps: "apps",
  app: "app",
  deviceApps: "device apps",
  device: "device",
  devices: "devices",
  deviceStats: "device stats",
};

/**
 * What to do with the event's device (`Event.device_id`) in a cached device list, besides
 * reloading: patch its status in place (`device.started` → `running`, `device.stopped` →
 * `stopped`, the `device.status.changed` view consoles derive), or drop it (`device.deleted`).
 */
export type DeviceAction =
  | { readonly action: "patchStatus"; readonly status: "running" | "stopped" }
  | { readonly action: "drop" };

/** Everything a console does for one event type. */
export interface RefreshPlan {
  /** Data to reload. */
  readonly resources: readonly Resource[];
  /** What to do with the event's device in a cached list, when anything. */
  readonly device?: DeviceAction;
}

/** The table, keyed by canonical event type. */
export const REFRESH_TABLE: Readonly<Record<string, RefreshPlan>> = {
  "quota.updated": { resources: ["quotas", "quotaAlerts", "quotaSummary"] },
  "quota.alert": { resources: ["quotaAlerts", "quotaSummary"] },
  "quota.exceeded": { resources: ["quotas", "quotaAlerts", "quotaSummary"] },
  "quota.renewed": { resources: ["quotas", "quotaSummary"] },
  "billing.low_balance": { resources: ["payments", "balance", "billing"] },
  "billing.payment_success": {
    resources: ["payments", "payment", "balance", "billing", "transactions"],
  },
  "billing.invoice_generated": { resources: ["invoices", "invoice", "billing"] },
  "app.installed": { resources: ["apps", "app", "deviceApps", "device"] },
  "app.install_failed": { resources: ["apps", "deviceApps"] },
  "app.updated": { resources: ["apps", "app", "deviceApps"] },
  "device.started": {
    resources: ["devices", "device"],
    device: { action: "patchStatus", status: "running" },
  },
  "device.stopped": {
    resources: ["devices", "device"],
    device: { action: "patchStatus", status: "stopped" },
  },
  "device.created": { resources: ["devices", "deviceStats"] },
  "device.deleted": { resources: ["devices", "deviceStats"], device: { action: "drop" } },
};

/** Older wire spellings of event types, mapped to the canonical type. */
export const EVENT_TYPE_ALIASES: Readonly<Record<string, string>> = {
  "app.install.completed": "app.installed",
  "app.install.failed": "app.install_failed",
};

const NOTHING: RefreshPlan = { resources: [] };

/** The canonical spelling of `eventType`. */
export function canonicalEventType(eventType: string): string {
  return EVENT_TYPE_ALIASES[eventType] ?? eventType;
}

/** Everything to do for an event of `eventType`; no resources for a type the table omits. */
export function refreshPlan(eventType: string): RefreshPlan {
  const type = canonicalEventType(eventType);
  return Object.prototype.hasOwnProperty.call(REFRESH_TABLE, type)
    ? (REFRESH_TABLE[type] ?? NOTHING)
    : NOTHING;
}

/** The data to reload for an event of `eventType`, in the table's order; empty when none. */
export function resourcesToRefresh(eventType: string): readonly Resource[] {
  return refreshPlan(eventType).resources;
}

/** What to do with the event's device in a cached list, or `undefined`. */
export function deviceAction(eventType: string): DeviceAction | undefined {
  return refreshPlan(eventType).device;
}

/** A short readable hint, e.g. `quotas, quota alerts, quota summary`, or `""` for nothing. */
export function describeRefresh(eventType: string): string {
  const plan = refreshPlan(eventType);
  const parts = plan.resources.map((resource) => RESOURCE_LABELS[resource]);
  if (plan.device?.action === "patchStatus") {
    parts.push(`patch device status to ${plan.device.status}`);
  } else if (plan.device?.action === "drop") {
    parts.push("drop the device");
  }
  return parts.join(", ");
}
