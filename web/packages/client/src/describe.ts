// What a console shows for an event: `describe(event, locale)` gives a short title and a one-line
// summary, in Chinese (the consoles' first language, the default) or English.
//
// What this module owns: the wording of every event type of the catalog, one phrasebook per
// locale, and how the typed fields enter it (money verbatim with its currency, percentages,
// names before ids). What it does not: dates in the reader's time zone or relative times ("3
// minutes ago"), which depend on the clock and the browser; the page's own English one-liner
// (web/src/summary.ts). It is pure: no DOM, no clock, no `Intl`, so the same event gives the
// same text in a browser, in Node and in a test.

import type { JsonObject } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AlertSeverity,
  NoticeSeverity,
  QuotaStatus,
  type Decimal,
  type Event,
  type QuotaPercentages,
} from "./gen/cloudphone/notify/v1/events_pb.js";

/** The languages `describe` writes. */
export type Locale = "zh-CN" | "en";

/** Every locale, the default first. */
export const LOCALES: readonly Locale[] = ["zh-CN", "en"];

/** What a console shows for one event: a short title and a one-line summary. */
export interface EventDescription {
  /** A few words naming what happened, e.g. `支付成功` / `Payment received`. */
  readonly title: string;
  /** One line with the event's own figures, e.g. `已收到付款 ¥99.90（订单 o-4001）`. */
  readonly summary: string;
}

/**
 * The currency of every amount: the contract's `Decimal` carries none, and the platform bills in
 * yuan. Shown as `¥` in Chinese and as the ISO code in English, where `¥` could be read as yen.
 */
export const CURRENCY = "CNY";

type Payload = Event["payload"];
type PayloadCase = NonNullable<Payload["case"]>;
type PayloadOf<K extends PayloadCase> = Extract<Payload, { case: K }>["value"];

/**
 * One locale's wording: a phrase for each payload case, and one for an event without a payload
 * (a type newer than this package). A mapped type, so a payload case added to the contract is a
 * missing property of every phrasebook until it is worded.
 */
type Phrasebook = {
  readonly [K in PayloadCase]: (value: PayloadOf<K>, event: Event) => EventDescription;
} & {
  readonly none: (event: Event) => EventDescription;
};

/**
 * The title and one-line summary of `event` in `locale` (Chinese unless told otherwise). Every
 * payload case has its own wording; an `untyped` payload or none at all gets a generic text
 * naming the event's type. Amounts are the `Decimal` strings verbatim (`99.90` stays `99.90`)
 * with the currency; an unknown locale (from untyped JavaScript) falls back to Chinese.
 */
export function describe(event: Event, locale: Locale = "zh-CN"): EventDescription {
  const book = Object.prototype.hasOwnProperty.call(PHRASEBOOKS, locale)
    ? PHRASEBOOKS[locale]
    : PHRASEBOOKS["zh-CN"];
  const payload = event.payload;
  switch (payload.case) {
    case "quotaUpdated":
      return book.quotaUpdated(payload.value, event);
    case "quotaExceeded":
      return book.quotaExceeded(payload.value, event);
    case "quotaRenewed":
      return book.quotaRenewed(payload.value, event);
    case "quotaAlert":
      return book.quotaAlert(payload.value, event);
    case "billingLowBalance":
      return book.billingLowBalance(payload.value, event);
    case "billingPaymentSuccess":
      return book.billingPaymentSuccess(payload.value, event);
    case "billingInvoiceGenerated":
      return book.billingInvoiceGenerated(payload.value, event);
    case "billingOrderCompleted":
      return book.billingOrderCompleted(payload.value, event);
    case "billingOrderCancelled":
      return book.billingOrderCancelled(payload.value, event);
    case "appInstalled":
      return book.appInstalled(payload.value, event);
    case "appInstallFailed":
      return book.appInstallFailed(payload.value, event);
    case "appUpdated":
      return book.appUpdated(payload.value, event);
    case "deviceCreated":
      return book.deviceCreated(payload.value, event);
    case "deviceStarted":
      return book.deviceStarted(payload.value, event);
    case "deviceStopped":
      return book.deviceStopped(payload.value, event);
    case "deviceDeleted":
      return book.deviceDeleted(payload.value, event);
    case "deviceError":
      return book.deviceError(payload.value, event);
    case "adminNotice":
      return book.adminNotice(payload.value, event);
    case "untyped":
      return book.untyped(payload.value, event);
    case undefined:
      return book.none(event);
    default:
      // A payload case this switch does not list is a type error here.
      return unreachable(payload);
  }
}

function unreachable(payload: never): never {
  throw new TypeError(`describe: unknown payload ${JSON.stringify(payload)}`);
}

// ---- Shared helpers: what both languages take from the fields ----

/** The first argument that is a non-empty string, else `""`. */
function first(...values: (string | undefined)[]): string {
  for (const value of values) {
    if (value !== undefined && value !== "") return value;
  }
  return "";
}

/** `before + text + after`, or `""` when `text` is empty. */
function wrap(before: string, text: string, after = ""): string {
  return text === "" ? "" : before + text + after;
}

/**
 * An amount with its currency, or `""` when unset. The digits are the producer's string as it
 * came: never parsed, so no binary float rounds `0.1` or drops the `0` of `99.90`.
 */
function money(amount: Decimal | undefined, locale: Locale): string {
  const value = amount?.value ?? "";
  if (value === "") return "";
  if (locale === "en") return `${CURRENCY} ${value}`;
  return value.startsWith("-") ? `-¥${value.slice(1)}` : `¥${value}`;
}

/**
 * A figure that is a `double` in the contract (percentages, days), without float noise: at most
 * two decimals, no trailing zeros (`97.5`, `105`, `33.33`), as the server's own notices write it.
 */
function figure(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  return String(Math.round(value * 100) / 100);
}

/** The UTC calendar date of a timestamp, `YYYY-MM-DD`, or `""` when unset or out of range. */
function date(timestamp: Timestamp | undefined): string {
  if (timestamp === undefined) return "";
  const millis = Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6);
  const at = new Date(millis);
  return Number.isNaN(at.getTime()) ? "" : at.toISOString().slice(0, 10);
}

/** The device's display name, else the event's device id, else `""`. */
function deviceOf(name: string, event: Event): string {
  return first(name, event.deviceId);
}

/** The resources of a quota alert that were sent, highest usage first (ties in contract order). */
function percentages(
  percentage: QuotaPercentages | undefined,
  labels: Readonly<Record<keyof QuotaResources, string>>,
): string[] {
  if (percentage === undefined) return [];
  const sent: { label: string; percent: number }[] = [];
  for (const key of RESOURCE_ORDER) {
    const percent = percentage[key];
    if (percent !== undefined) sent.push({ label: labels[key], percent });
  }
  sent.sort((a, b) => b.percent - a.percent);
  return sent.map(({ label, percent }) => `${label} ${figure(percent)}%`);
}

type QuotaResources = Pick<QuotaPercentages, "devices" | "cpu" | "memory" | "storage" | "traffic">;
const RESOURCE_ORDER: readonly (keyof QuotaResources)[] = [
  "devices",
  "cpu",
  "memory",
  "storage",
  "traffic",
];

/** A `versionName` member of a catalog edit's old or new values, `""` otherwise. */
function versionIn(values: JsonObject | undefined): string {
  const value = values?.["versionName"];
  return typeof value === "string" ? value : "";
}

/** The versions of an `app.updated`, in either of its two forms. */
function versionsOf(p: PayloadOf<"appUpdated">): { from: string; to: string } {
  return {
    from: first(p.oldVersion, versionIn(p.oldValues)),
    to: first(p.newVersion, p.versionName, versionIn(p.newValues)),
  };
}

/** A quota status as the producer meant it: the enum when known, else its own spelling. */
function quotaStatus(
  p: PayloadOf<"quotaUpdated">,
  names: Readonly<Record<Exclude<QuotaStatus, QuotaStatus.UNSPECIFIED>, string>>,
): string {
  const known = p.status === QuotaStatus.UNSPECIFIED ? undefined : names[p.status];
  return first(known, p.statusText);
}

/** Whole seconds as hours, minutes and seconds, the zero parts left out. */
function duration(seconds: number, units: { h: string; m: string; s: string }): string {
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const parts: string[] = [];
  if (h > 0) parts.push(`${h}${units.h}`);
  if (m > 0) parts.push(`${m}${units.m}`);
  if (s > 0 || parts.length === 0) parts.push(`${s}${units.s}`);
  return parts.join(" ");
}

/** The family of a type (`device` for `device.rebooted`), `""` for none of the catalog's. */
function familyOf(type: string): "quota" | "billing" | "app" | "device" | "" {
  const family = type.split(".", 1)[0];
  return family === "quota" || family === "billing" || family === "app" || family === "device"
    ? family
    : "";
}

// ---- 简体中文 ----

const ZH_QUOTA_STATUS = {
  [QuotaStatus.ACTIVE]: "正常",
  [QuotaStatus.EXCEEDED]: "已超限",
  [QuotaStatus.SUSPENDED]: "已暂停",
  [QuotaStatus.EXPIRED]: "已过期",
} as const;

const ZH_RESOURCES = {
  devices: "设备",
  cpu: "CPU",
  memory: "内存",
  storage: "存储",
  traffic: "流量",
} as const;

/** Payment methods the platform's producers send (`alipay`, `wechat`); others as they came. */
const ZH_PAYMENT_METHODS: Readonly<Record<string, string>> = {
  alipay: "支付宝",
  wechat: "微信支付",
};

/** Device statuses in the producers' spelling (`creating` at creation); others as they came. */
const ZH_DEVICE_STATUS: Readonly<Record<string, string>> = {
  creating: "创建中",
  starting: "启动中",
  running: "运行中",
  stopping: "停止中",
  stopped: "已停止",
  error: "异常",
  deleted: "已删除",
};

const ZH_NOTICE_SEVERITY: Readonly<Record<NoticeSeverity, string>> = {
  [NoticeSeverity.UNSPECIFIED]: "通知",
  [NoticeSeverity.INFO]: "提示",
  [NoticeSeverity.SUCCESS]: "成功",
  [NoticeSeverity.WARNING]: "警告",
  [NoticeSeverity.ERROR]: "错误",
  [NoticeSeverity.CRITICAL]: "严重",
};

const ZH_FAMILY = { quota: "配额", billing: "计费", app: "应用", device: "设备", "": "" } as const;

function own<T>(table: Readonly<Record<string, T>>, key: string): T | undefined {
  return Object.prototype.hasOwnProperty.call(table, key) ? table[key] : undefined;
}

/** `（a，b）` of the non-empty parts, or `""`. */
function zhParens(...parts: string[]): string {
  const sent = parts.filter((part) => part !== "");
  return sent.length === 0 ? "" : `（${sent.join("，")}）`;
}

/** ` X ` between Chinese words, or `""`: Latin names and ids keep a space from the text. */
function zhName(name: string): string {
  return wrap(" ", name, " ");
}

/** An app's name (and version) before a Chinese verb: `WeChat 8.0.50 `, or `应用` unnamed. */
function zhApp(name: string, version = ""): string {
  return name === "" ? `应用${zhName(version)}` : `${name}${wrap(" ", version)} `;
}

function zhGeneric(event: Event): EventDescription {
  return {
    title: `${ZH_FAMILY[familyOf(event.type)]}通知`,
    summary:
      (event.type === "" ? "未知类型的事件" : `事件 ${event.type}`) +
      zhParens(wrap("设备 ", event.deviceId)),
  };
}

const ZH: Phrasebook = {
  quotaUpdated: (p) => ({
    title: "配额已更新",
    summary: `配额${zhName(p.quotaId)}已更新${wrap("：", quotaStatus(p, ZH_QUOTA_STATUS))}`.trim(),
  }),
  quotaExceeded: (p) => ({
    title: "配额已超限",
    summary:
      `配额${zhName(p.quotaId)}已超限`.trim() +
      (p.usagePercent === undefined ? "" : `（已用 ${figure(p.usagePercent)}%）`),
  }),
  quotaRenewed: (p) => ({
    title: "配额已续期",
    summary:
      `配额${zhName(p.quotaId)}已续期`.trim() +
      (p.extensionDays === undefined ? "" : ` ${figure(p.extensionDays)} 天`) +
      wrap("，有效期至 ", date(p.validUntil)),
  }),
  quotaAlert: (p) => {
    const title =
      p.severity === AlertSeverity.CRITICAL
        ? "配额用量告急"
        : p.severity === AlertSeverity.WARNING
          ? "配额用量预警"
          : "配额告警";
    const subject = p.planName !== "" ? `${p.planName} 套餐` : `配额${zhName(p.quotaId)}`.trim();
    const usage = percentages(p.percentage, ZH_RESOURCES);
    const detail =
      usage.length > 0
        ? usage.join("、")
        : p.maxPercent !== undefined
          ? `用量已达 ${figure(p.maxPercent)}%`
          : p.warnings.join("；");
    return { title, summary: detail === "" ? `${subject}用量偏高` : `${subject}：${detail}` };
  },
  billingLowBalance: (p) => {
    const balance = money(p.currentBalance, "zh-CN");
    const threshold = money(p.threshold, "zh-CN");
    const days = p.daysRemaining === undefined ? "" : `约可用 ${figure(p.daysRemaining)} 天`;
    const head =
      balance !== "" && threshold !== ""
        ? `余额 ${balance}，低于 ${threshold}`
        : balance !== ""
          ? `余额 ${balance}`
          : threshold !== ""
            ? `余额低于 ${threshold}`
            : "余额不足，请及时充值";
    return { title: "余额不足", summary: head + zhParens(days) };
  },
  billingPaymentSuccess: (p) => {
    const method = own(ZH_PAYMENT_METHODS, p.paymentMethod.toLowerCase()) ?? p.paymentMethod;
    const balance = money(p.newBalance, "zh-CN");
    return {
      title: "支付成功",
      summary:
        `已收到付款${wrap(" ", money(p.amount, "zh-CN"))}` +
        zhParens(method, wrap("订单 ", p.orderId)) +
        wrap("，余额 ", balance),
    };
  },
  billingInvoiceGenerated: (p) => {
    const amount = money(p.amount, "zh-CN");
    const due = date(p.dueDate);
    const bill = `${wrap("", p.month, " ")}账单${zhName(p.invoiceId)}`.trim();
    return {
      title: "账单已生成",
      summary:
        bill === "账单" && amount === "" && due === ""
          ? "已生成新账单"
          : bill + wrap("：", amount) + wrap("，请于 ", due, " 前支付"),
    };
  },
  billingOrderCompleted: (p) => ({
    title: "订单已完成",
    summary: `订单${zhName(p.orderId)}已完成`.trim() + wrap("，金额 ", money(p.amount, "zh-CN")),
  }),
  billingOrderCancelled: (p) => ({
    title: "订单已取消",
    summary: `订单${zhName(p.orderId)}已取消`.trim() + wrap("：", p.reason),
  }),
  appInstalled: (p, event) => ({
    title: "应用已安装",
    summary:
      `${zhApp(first(p.appName, p.appId), p.version)}已安装` +
      wrap("到设备 ", deviceOf(p.deviceName, event)),
  }),
  appInstallFailed: (p, event) => ({
    title: "应用安装失败",
    summary:
      zhApp(first(p.appName, p.appId)) +
      (deviceOf(p.deviceName, event) === ""
        ? "安装失败"
        : `安装到设备 ${deviceOf(p.deviceName, event)} 失败`) +
      wrap("：", p.error),
  }),
  appUpdated: (p, event) => {
    const app = zhApp(first(p.appName, p.packageName, p.appId));
    const where = wrap("设备 ", event.deviceId, " 上的 ");
    const { from, to } = versionsOf(p);
    const change =
      from !== "" && to !== ""
        ? `已从 ${from} 更新到 ${to}`
        : to !== ""
          ? `已更新到 ${to}`
          : `已更新${zhParens(p.updatedFields.join("、"))}`;
    return { title: "应用已更新", summary: `${where}${app}${change}` };
  },
  deviceCreated: (p, event) => ({
    title: "设备已创建",
    summary:
      `设备${zhName(deviceOf(p.deviceName, event))}已创建`.trim() +
      zhParens(own(ZH_DEVICE_STATUS, p.status) ?? p.status),
  }),
  deviceStarted: (p, event) => ({
    title: "设备已启动",
    summary: `设备${zhName(event.deviceId)}已启动`.trim() + zhParens(p.providerType),
  }),
  deviceStopped: (p, event) => ({
    title: "设备已停止",
    summary:
      `设备${zhName(event.deviceId)}已停止`.trim() +
      (p.durationSeconds === undefined
        ? ""
        : `，运行了 ${duration(p.durationSeconds, { h: " 小时", m: " 分", s: " 秒" })}`),
  }),
  deviceDeleted: (p, event) => ({
    title: "设备已删除",
    summary: `设备${zhName(deviceOf(p.deviceName, event))}已删除`.trim(),
  }),
  deviceError: (p, event) => {
    const text = first(p.errorMessage, p.errorType);
    const kind = p.errorMessage !== "" && p.errorType !== "" ? `（${p.errorType}）` : "";
    return {
      title: "设备异常",
      summary: `设备${zhName(deviceOf(p.deviceName, event))}出错`.trim() + wrap("：", text) + kind,
    };
  },
  adminNotice: (p) => {
    const title = first(p.title, "管理员通知");
    const message = first(p.message, p.title, "无详情");
    const severity = ZH_NOTICE_SEVERITY[p.severity] ?? "通知";
    return { title, summary: `${severity}：${message}` };
  },
  untyped: (_value, event) => zhGeneric(event),
  none: zhGeneric,
};

// ---- English ----

const EN_QUOTA_STATUS = {
  [QuotaStatus.ACTIVE]: "active",
  [QuotaStatus.EXCEEDED]: "exceeded",
  [QuotaStatus.SUSPENDED]: "suspended",
  [QuotaStatus.EXPIRED]: "expired",
} as const;

const EN_RESOURCES = {
  devices: "devices",
  cpu: "CPU",
  memory: "memory",
  storage: "storage",
  traffic: "traffic",
} as const;

const EN_PAYMENT_METHODS: Readonly<Record<string, string>> = {
  alipay: "Alipay",
  wechat: "WeChat Pay",
};

const EN_NOTICE_SEVERITY: Readonly<Record<NoticeSeverity, string>> = {
  [NoticeSeverity.UNSPECIFIED]: "Notice",
  [NoticeSeverity.INFO]: "Info",
  [NoticeSeverity.SUCCESS]: "Success",
  [NoticeSeverity.WARNING]: "Warning",
  [NoticeSeverity.ERROR]: "Error",
  [NoticeSeverity.CRITICAL]: "Critical",
};

const EN_FAMILY = {
  quota: "Quota notification",
  billing: "Billing notification",
  app: "App notification",
  device: "Device notification",
  "": "Notification",
} as const;

/** ` (a, b)` of the non-empty parts, or `""`. */
function enParens(...parts: string[]): string {
  const sent = parts.filter((part) => part !== "");
  return sent.length === 0 ? "" : ` (${sent.join(", ")})`;
}

function plural(count: number, one: string, many: string): string {
  return `${figure(count)} ${count === 1 ? one : many}`;
}

function enGeneric(event: Event): EventDescription {
  return {
    title: EN_FAMILY[familyOf(event.type)],
    summary:
      (event.type === "" ? "An event of unknown type" : `Event ${event.type}`) +
      enParens(wrap("device ", event.deviceId)),
  };
}

const EN: Phrasebook = {
  quotaUpdated: (p) => ({
    title: "Quota updated",
    summary: `Quota${wrap(" ", p.quotaId)} updated${wrap(": ", quotaStatus(p, EN_QUOTA_STATUS))}`,
  }),
  quotaExceeded: (p) => ({
    title: "Quota exceeded",
    summary:
      `Quota${wrap(" ", p.quotaId)} exceeded` +
      (p.usagePercent === undefined ? "" : ` (${figure(p.usagePercent)}% used)`),
  }),
  quotaRenewed: (p) => ({
    title: "Quota renewed",
    summary:
      `Quota${wrap(" ", p.quotaId)} renewed` +
      (p.extensionDays === undefined ? "" : ` by ${plural(p.extensionDays, "day", "days")}`) +
      wrap(p.extensionDays === undefined ? " until " : ", until ", date(p.validUntil)),
  }),
  quotaAlert: (p) => {
    const title =
      p.severity === AlertSeverity.CRITICAL
        ? "Quota usage critical"
        : p.severity === AlertSeverity.WARNING
          ? "Quota usage warning"
          : "Quota alert";
    const subject = p.planName !== "" ? `${p.planName} plan` : `Quota${wrap(" ", p.quotaId)}`;
    const usage = percentages(p.percentage, EN_RESOURCES);
    const detail =
      usage.length > 0
        ? usage.join(", ")
        : p.maxPercent !== undefined
          ? `usage at ${figure(p.maxPercent)}%`
          : p.warnings.join("; ");
    return { title, summary: detail === "" ? `${subject} usage is high` : `${subject}: ${detail}` };
  },
  billingLowBalance: (p) => {
    const balance = money(p.currentBalance, "en");
    const threshold = money(p.threshold, "en");
    const days =
      p.daysRemaining === undefined ? "" : `about ${plural(p.daysRemaining, "day", "days")} left`;
    const head =
      balance !== "" && threshold !== ""
        ? `Balance ${balance} is below ${threshold}`
        : balance !== ""
          ? `Balance is ${balance}`
          : threshold !== ""
            ? `Balance is below ${threshold}`
            : "Balance is low: please top up";
    return { title: "Low balance", summary: head + enParens(days) };
  },
  billingPaymentSuccess: (p) => {
    const method = own(EN_PAYMENT_METHODS, p.paymentMethod.toLowerCase()) ?? p.paymentMethod;
    return {
      title: "Payment received",
      summary:
        `Payment${wrap(" of ", money(p.amount, "en"))} received` +
        enParens(method, wrap("order ", p.orderId)) +
        wrap("; balance ", money(p.newBalance, "en")),
    };
  },
  billingInvoiceGenerated: (p) => {
    const amount = money(p.amount, "en");
    const due = date(p.dueDate);
    const bill = `Invoice${wrap(" ", p.invoiceId)}${wrap(" for ", p.month)}`;
    return {
      title: "Invoice issued",
      summary:
        bill === "Invoice" && amount === "" && due === ""
          ? "A new invoice was issued"
          : bill + wrap(": ", amount) + wrap(", due ", due),
    };
  },
  billingOrderCompleted: (p) => ({
    title: "Order completed",
    summary: `Order${wrap(" ", p.orderId)} completed${wrap(": ", money(p.amount, "en"))}`,
  }),
  billingOrderCancelled: (p) => ({
    title: "Order cancelled",
    summary: `Order${wrap(" ", p.orderId)} cancelled${wrap(": ", p.reason)}`,
  }),
  appInstalled: (p, event) => ({
    title: "App installed",
    summary:
      `${first(p.appName, p.appId, "App")}${wrap(" ", p.version)} installed` +
      wrap(" on ", deviceOf(p.deviceName, event)),
  }),
  appInstallFailed: (p, event) => ({
    title: "App install failed",
    summary:
      `${first(p.appName, p.appId, "App")} failed to install` +
      wrap(" on ", deviceOf(p.deviceName, event)) +
      wrap(": ", p.error),
  }),
  appUpdated: (p, event) => {
    const app = first(p.appName, p.packageName, p.appId, "App");
    const { from, to } = versionsOf(p);
    const change =
      from !== "" && to !== ""
        ? ` ${from} → ${to}`
        : to !== ""
          ? ` to ${to}`
          : enParens(p.updatedFields.join(", "));
    const where = wrap(" on ", event.deviceId);
    return { title: "App updated", summary: `${app} updated${change}${where}` };
  },
  deviceCreated: (p, event) => ({
    title: "Device created",
    summary: `Device${wrap(" ", deviceOf(p.deviceName, event))} created${enParens(p.status)}`,
  }),
  deviceStarted: (p, event) => ({
    title: "Device started",
    summary: `Device${wrap(" ", event.deviceId)} started${enParens(p.providerType)}`,
  }),
  deviceStopped: (p, event) => ({
    title: "Device stopped",
    summary:
      `Device${wrap(" ", event.deviceId)} stopped` +
      (p.durationSeconds === undefined
        ? ""
        : ` after ${duration(p.durationSeconds, { h: "h", m: "m", s: "s" })}`),
  }),
  deviceDeleted: (p, event) => ({
    title: "Device deleted",
    summary: `Device${wrap(" ", deviceOf(p.deviceName, event))} deleted`,
  }),
  deviceError: (p, event) => {
    const text = first(p.errorMessage, p.errorType);
    const kind = p.errorMessage !== "" && p.errorType !== "" ? ` (${p.errorType})` : "";
    return {
      title: "Device error",
      summary: `Device${wrap(" ", deviceOf(p.deviceName, event))} error${wrap(": ", text)}${kind}`,
    };
  },
  adminNotice: (p) => {
    const title = first(p.title, "Admin notice");
    const message = first(p.message, p.title, "no details");
    const severity = EN_NOTICE_SEVERITY[p.severity] ?? "Notice";
    return { title, summary: `${severity}: ${message}` };
  },
  untyped: (_value, event) => enGeneric(event),
  none: enGeneric,
};

const PHRASEBOOKS: Readonly<Record<Locale, Phrasebook>> = { "zh-CN": ZH, en: EN };
