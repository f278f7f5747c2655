// The event union narrowed by `type`: `Event.type` and the `payload` oneof always agree on the
// server's side (the catalog maps each type to one payload), but the generated `Event` cannot say
// so. `TypedEvent` does, so `if (event.type === "billing.payment_success")` gives the payment's
// fields without a second check of `payload.case`.

import type { Decimal, Event } from "./gen/cloudphone/notify/v1/events_pb.js";
import { canonicalEventType } from "./refresh.js";

type Payload = Event["payload"];
type PayloadCase = NonNullable<Payload["case"]>;

/** Each event type of the catalog and the `payload` case the server sends it with. */
export const PAYLOAD_CASE_BY_TYPE = {
  "quota.updated": "quotaUpdated",
  "quota.exceeded": "quotaExceeded",
  "quota.renewed": "quotaRenewed",
  "quota.alert": "quotaAlert",
  "billing.low_balance": "billingLowBalance",
  "billing.payment_success": "billingPaymentSuccess",
  "billing.invoice_generated": "billingInvoiceGenerated",
  "billing.order.completed": "billingOrderCompleted",
  "billing.order.cancelled": "billingOrderCancelled",
  "app.installed": "appInstalled",
  "app.install_failed": "appInstallFailed",
  "app.updated": "appUpdated",
  "device.created": "deviceCreated",
  "device.started": "deviceStarted",
  "device.stopped": "deviceStopped",
  "device.deleted": "deviceDeleted",
  "device.error": "deviceError",
  "admin.notice": "adminNotice",
} as const satisfies Record<string, PayloadCase>;

/** An event type with a typed payload. */
export type KnownEventType = keyof typeof PAYLOAD_CASE_BY_TYPE;

/** An event of type `T`, its payload narrowed to that type's message. */
export type EventOf<T extends KnownEventType> = Omit<Event, "type" | "payload"> & {
  readonly type: T;
  readonly payload: Extract<Payload, { case: (typeof PAYLOAD_CASE_BY_TYPE)[T] }>;
};

/** Every typed event: `switch (event.type)` narrows `event.payload.value`. */
export type TypedEvent = { [T in KnownEventType]: EventOf<T> }[KnownEventType];

function isKnownType(type: string): type is KnownEventType {
  return Object.prototype.hasOwnProperty.call(PAYLOAD_CASE_BY_TYPE, type);
}

/**
 * `event` as a `TypedEvent`, or `undefined` for a type without a typed payload (an `untyped`
 * event of a known family, or a type newer than this package). Older wire spellings of a type
 * (`app.install.failed`) are accepted, although the server sends the canonical one.
 */
export function asTyped(event: Event): TypedEvent | undefined {
  const type = canonicalEventType(event.type);
  if (!isKnownType(type) || event.payload.case !== PAYLOAD_CASE_BY_TYPE[type]) return undefined;
  return { ...event, type } as unknown as TypedEvent;
}

/**
 * Whether `event` is of type `type` (with its typed payload). Exact: the server always sends the
 * canonical spelling; use `asTyped` for events from elsewhere that may carry an older one.
 */
export function isEventOf<T extends KnownEventType>(event: Event, type: T): event is Event & EventOf<T> {
  return event.type === type && event.payload.case === PAYLOAD_CASE_BY_TYPE[type];
}

/**
 * An amount of money as the exact decimal string the producer wrote (`"99.90"` stays
 * `"99.90"`), or `undefined` when the event has none. Never a `number`: binary floating point
 * cannot hold most decimal amounts, and a console must show and compare what the producer sent.
 */
export function moneyOf(amount: Decimal | undefined): string | undefined {
  return amount === undefined || amount.value === "" ? undefined : amount.value;
}

/**
 * Compares two decimal strings exactly (as `moneyOf` returns them): negative, zero or positive
 * like `Array.prototype.sort` wants. Throws on a string that is not plain decimal notation.
 */
export function compareMoney(a: string, b: string): number {
  const pa = parseDecimal(a);
  const pb = parseDecimal(b);
  if (pa.negative !== pb.negative) {
    return isZero(pa) && isZero(pb) ? 0 : pa.negative ? -1 : 1;
  }
  const sign = pa.negative ? -1 : 1;
  const width = Math.max(pa.fraction.length, pb.fraction.length);
  const ia = pa.integer.replace(/^0+/, "");
  const ib = pb.integer.replace(/^0+/, "");
  if (ia.length !== ib.length) return sign * (ia.length - ib.length);
  const da = ia + pa.fraction.padEnd(width, "0");
  const db = ib + pb.fraction.padEnd(width, "0");
  return da === db ? 0 : sign * (da < db ? -1 : 1);
}

interface ParsedDecimal {
  negative: boolean;
  integer: string;
  fraction: string;
}

function parseDecimal(text: string): ParsedDecimal {
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (match === null) throw new RangeError(`not a plain decimal: ${JSON.stringify(text)}`);
  return { negative: match[1] === "-", integer: match[2] ?? "0", fraction: match[3] ?? "" };
}

function isZero(d: ParsedDecimal): boolean {
  return /^0*$/.test(d.integer) && /^0*$/.test(d.fraction);
}
