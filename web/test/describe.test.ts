// `describe(event, locale)`: every payload case worded in both languages, exact strings per
// family for events shaped like the wire fixtures (tests/fixtures/wire) after decoding, and
// amounts carried as the producer's strings.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AlertSeverity,
  CURRENCY,
  EventSchema,
  LOCALES,
  NoticeSeverity,
  QuotaStatus,
  describe,
  type Event,
  type Locale,
} from "@notify-backbone/client";

type Init = MessageInitShape<typeof EventSchema>;
type PayloadInit = NonNullable<Init["payload"]>;
type PayloadCase = NonNullable<Event["payload"]["case"]>;

function event(
  type: string,
  payload: PayloadInit | undefined,
  extra: { userId?: string; deviceId?: string } = {},
): Event {
  const init: Init = { id: "e-1", type, userId: "u-1001", deviceId: "d-7001", ...extra };
  if (payload !== undefined) init.payload = payload;
  return create(EventSchema, init);
}

const money = (value: string) => ({ value });
const at = (iso: string) => timestampFromDate(new Date(iso));

/**
 * One typical event per payload case. A `Record` over the cases, so a case added to the contract
 * fails to compile here until it has a sample (and `describe` fails until it has wording).
 */
const SAMPLES: Record<PayloadCase, Event> = {
  quotaUpdated: event("quota.updated", {
    case: "quotaUpdated",
    value: { quotaId: "q-2001", status: QuotaStatus.ACTIVE, statusText: "active" },
  }),
  quotaExceeded: event("quota.exceeded", {
    case: "quotaExceeded",
    value: { quotaId: "q-2001", usagePercent: 105 },
  }),
  quotaRenewed: event("quota.renewed", {
    case: "quotaRenewed",
    value: { quotaId: "q-2001", validUntil: at("2025-12-31T23:59:59.000Z"), extensionDays: 30 },
  }),
  quotaAlert: event("quota.alert", {
    case: "quotaAlert",
    value: {
      quotaId: "q-2001",
      planName: "Pro",
      severity: AlertSeverity.CRITICAL,
      percentage: { devices: 90, cpu: 97.5, memory: 60, storage: 40, traffic: 12 },
      warnings: ["CPU usage at 97.5%", "Device count at 90%"],
      maxPercent: 97.5,
    },
  }),
  billingLowBalance: event("billing.low_balance", {
    case: "billingLowBalance",
    value: {
      username: "alice",
      currentBalance: money("9.5"),
      threshold: money("10"),
      daysRemaining: 2,
    },
  }),
  billingPaymentSuccess: event("billing.payment_success", {
    case: "billingPaymentSuccess",
    value: {
      amount: money("99.9"),
      orderId: "o-4001",
      paymentId: "p-3001",
      paymentMethod: "alipay",
      newBalance: money("109.40"),
    },
  }),
  billingInvoiceGenerated: event("billing.invoice_generated", {
    case: "billingInvoiceGenerated",
    value: {
      invoiceId: "inv-5001",
      amount: money("250.00"),
      month: "2025-11",
      dueDate: at("2025-12-15T00:00:00.000Z"),
    },
  }),
  billingOrderCompleted: event("billing.order.completed", {
    case: "billingOrderCompleted",
    value: { orderId: "o-4002", amount: money("29.99") },
  }),
  billingOrderCancelled: event("billing.order.cancelled", {
    case: "billingOrderCancelled",
    value: { orderId: "o-4003", reason: "payment timeout" },
  }),
  appInstalled: event("app.installed", {
    case: "appInstalled",
    value: { appId: "a-8001", appName: "WeChat", deviceName: "phone-1", version: "8.0.50" },
  }),
  appInstallFailed: event("app.install_failed", {
    case: "appInstallFailed",
    value: {
      appId: "a-8003",
      appName: "Douyin",
      deviceName: "phone-1",
      error: "INSTALL_FAILED_INSUFFICIENT_STORAGE",
    },
  }),
  appUpdated: event("app.updated", {
    case: "appUpdated",
    value: { appName: "WeChat", oldVersion: "8.0.50", newVersion: "8.0.51" },
  }),
  deviceCreated: event(
    "device.created",
    { case: "deviceCreated", value: { deviceName: "phone-10", status: "creating", providerType: "redroid" } },
    { deviceId: "d-7010" },
  ),
  deviceStarted: event(
    "device.started",
    { case: "deviceStarted", value: { providerType: "redroid" } },
    { deviceId: "d-7010" },
  ),
  deviceStopped: event(
    "device.stopped",
    { case: "deviceStopped", value: { providerType: "redroid", durationSeconds: 3600 } },
    { deviceId: "d-7010" },
  ),
  deviceDeleted: event(
    "device.deleted",
    { case: "deviceDeleted", value: { deviceName: "phone-10", providerType: "redroid" } },
    { deviceId: "d-7010" },
  ),
  deviceError: event(
    "device.error",
    {
      case: "deviceError",
      value: {
        deviceName: "phone-10",
        errorType: "adb_disconnected",
        errorMessage: "ADB connection lost",
        priority: "high",
      },
    },
    { deviceId: "d-7010" },
  ),
  adminNotice: event(
    "admin.notice",
    {
      case: "adminNotice",
      value: {
        severity: NoticeSeverity.ERROR,
        title: "Quota exceeded",
        message: "User u-1001 exceeded quota q-2001 (105 % used).",
        subjectUserId: "u-1001",
        sourceEventType: "quota.exceeded",
      },
    },
    { userId: "" },
  ),
  untyped: event("device.rebooted", { case: "untyped", value: { reason: "watchdog" } }),
};

/** `describe` in both languages, as `[zh-CN, en]`. */
function both(e: Event): [ReturnType<typeof describe>, ReturnType<typeof describe>] {
  return [describe(e, "zh-CN"), describe(e, "en")];
}

/** Asserts the exact title and summary in Chinese and in English. */
function says(e: Event, zh: [string, string], en: [string, string]) {
  const [inZh, inEn] = both(e);
  assert.deepEqual([inZh.title, inZh.summary], zh, "zh-CN");
  assert.deepEqual([inEn.title, inEn.summary], en, "en");
}

test("the samples cover every case of Event.payload in the schema", () => {
  const payload = EventSchema.oneofs.find((oneof) => oneof.name === "payload");
  assert.ok(payload);
  assert.deepEqual(
    payload.fields.map((field) => field.localName).sort(),
    Object.keys(SAMPLES).sort(),
  );
});

test("every payload case, typical or empty, reads differently in each language and never empty", () => {
  const cases = Object.entries(SAMPLES) as [PayloadCase, Event][];
  for (const [name, sample] of cases) {
    // The same type with a payload of all defaults: every fallback must still say something.
    const empty = create(EventSchema, {
      type: sample.type,
      payload: { case: name, value: {} } as PayloadInit,
    });
    for (const e of [sample, empty]) {
      const [zh, en] = both(e);
      const label = `${name} ${JSON.stringify({ zh, en })}`;
      for (const text of [zh.title, zh.summary, en.title, en.summary]) {
        assert.ok(text.trim() !== "", label);
        assert.ok(!/undefined|NaN|\[object/.test(text), label);
      }
      assert.notEqual(zh.summary, en.summary, label);
      // An admin notice keeps its own title, the same in both; every other title is translated.
      if (!(name === "adminNotice" && e === sample)) assert.notEqual(zh.title, en.title, label);
    }
  }
});

test("Chinese is the default; an unknown locale from plain JavaScript falls back to it", () => {
  const e = SAMPLES.billingPaymentSuccess;
  assert.deepEqual(describe(e), describe(e, "zh-CN"));
  assert.deepEqual(describe(e, "fr" as Locale), describe(e, "zh-CN"));
  assert.deepEqual(LOCALES, ["zh-CN", "en"]);
});

test("quota: status, percentages, renewal", () => {
  says(
    SAMPLES.quotaUpdated,
    ["配额已更新", "配额 q-2001 已更新：正常"],
    ["Quota updated", "Quota q-2001 updated: active"],
  );
  // A status this version does not know is shown as the producer spelled it.
  says(
    event("quota.updated", { case: "quotaUpdated", value: { quotaId: "q-1", statusText: "frozen" } }),
    ["配额已更新", "配额 q-1 已更新：frozen"],
    ["Quota updated", "Quota q-1 updated: frozen"],
  );
  says(
    SAMPLES.quotaExceeded,
    ["配额已超限", "配额 q-2001 已超限（已用 105%）"],
    ["Quota exceeded", "Quota q-2001 exceeded (105% used)"],
  );
  says(
    SAMPLES.quotaRenewed,
    ["配额已续期", "配额 q-2001 已续期 30 天，有效期至 2025-12-31"],
    ["Quota renewed", "Quota q-2001 renewed by 30 days, until 2025-12-31"],
  );
  // Highest usage first.
  says(
    SAMPLES.quotaAlert,
    ["配额用量告急", "Pro 套餐：CPU 97.5%、设备 90%、内存 60%、存储 40%、流量 12%"],
    ["Quota usage critical", "Pro plan: CPU 97.5%, devices 90%, memory 60%, storage 40%, traffic 12%"],
  );
  // The legacy single figure, no per-resource percentages.
  says(
    event("quota.alert", {
      case: "quotaAlert",
      value: { quotaId: "q-2005", planName: "Enterprise", severity: AlertSeverity.WARNING, maxPercent: 88 },
    }),
    ["配额用量预警", "Enterprise 套餐：用量已达 88%"],
    ["Quota usage warning", "Enterprise plan: usage at 88%"],
  );
});

test("billing: amounts verbatim with their currency", () => {
  says(
    SAMPLES.billingLowBalance,
    ["余额不足", "余额 ¥9.5，低于 ¥10（约可用 2 天）"],
    ["Low balance", "Balance CNY 9.5 is below CNY 10 (about 2 days left)"],
  );
  says(
    SAMPLES.billingPaymentSuccess,
    ["支付成功", "已收到付款 ¥99.9（支付宝，订单 o-4001），余额 ¥109.40"],
    ["Payment received", "Payment of CNY 99.9 received (Alipay, order o-4001); balance CNY 109.40"],
  );
  says(
    event("billing.payment_success", {
      case: "billingPaymentSuccess",
      value: { amount: money("99.90"), paymentId: "p-3002" },
    }),
    ["支付成功", "已收到付款 ¥99.90"],
    ["Payment received", "Payment of CNY 99.90 received"],
  );
  says(
    SAMPLES.billingInvoiceGenerated,
    ["账单已生成", "2025-11 账单 inv-5001：¥250.00，请于 2025-12-15 前支付"],
    ["Invoice issued", "Invoice inv-5001 for 2025-11: CNY 250.00, due 2025-12-15"],
  );
  says(
    SAMPLES.billingOrderCompleted,
    ["订单已完成", "订单 o-4002 已完成，金额 ¥29.99"],
    ["Order completed", "Order o-4002 completed: CNY 29.99"],
  );
  says(
    SAMPLES.billingOrderCancelled,
    ["订单已取消", "订单 o-4003 已取消：payment timeout"],
    ["Order cancelled", "Order o-4003 cancelled: payment timeout"],
  );
  assert.equal(CURRENCY, "CNY");
});

test("amounts never go through a float", () => {
  // Each of these changes when parsed as a number and printed again.
  for (const amount of ["99.90", "0.10", "12345678901234567.89", "0.30000000000000000001", "1000.000"]) {
    const e = event("billing.order.completed", {
      case: "billingOrderCompleted",
      value: { orderId: "o-1", amount: money(amount) },
    });
    assert.notEqual(String(Number(amount)), amount, amount);
    const [zh, en] = both(e);
    assert.equal(zh.summary, `订单 o-1 已完成，金额 ¥${amount}`);
    assert.equal(en.summary, `Order o-1 completed: CNY ${amount}`);
  }
  // A refund-like negative amount keeps its sign before the yuan sign.
  const [zh, en] = both(
    event("billing.low_balance", { case: "billingLowBalance", value: { currentBalance: money("-5.00") } }),
  );
  assert.equal(zh.summary, "余额 -¥5.00");
  assert.equal(en.summary, "Balance is CNY -5.00");
});

test("apps: names before ids, both forms of app.updated", () => {
  says(
    SAMPLES.appInstalled,
    ["应用已安装", "WeChat 8.0.50 已安装到设备 phone-1"],
    ["App installed", "WeChat 8.0.50 installed on phone-1"],
  );
  says(
    event("app.installed", { case: "appInstalled", value: { appId: "a-8002" } }, { deviceId: "d-7002" }),
    ["应用已安装", "a-8002 已安装到设备 d-7002"],
    ["App installed", "a-8002 installed on d-7002"],
  );
  says(
    SAMPLES.appInstallFailed,
    ["应用安装失败", "Douyin 安装到设备 phone-1 失败：INSTALL_FAILED_INSUFFICIENT_STORAGE"],
    ["App install failed", "Douyin failed to install on phone-1: INSTALL_FAILED_INSUFFICIENT_STORAGE"],
  );
  says(
    SAMPLES.appUpdated,
    ["应用已更新", "设备 d-7001 上的 WeChat 已从 8.0.50 更新到 8.0.51"],
    ["App updated", "WeChat updated 8.0.50 → 8.0.51 on d-7001"],
  );
  // Catalog edit: no user, no device; the old version from oldValues.
  says(
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
    ["应用已更新", "com.tencent.mm 已从 8.0.50 更新到 8.0.51"],
    ["App updated", "com.tencent.mm updated 8.0.50 → 8.0.51"],
  );
  says(
    event(
      "app.updated",
      { case: "appUpdated", value: { appId: "a-1", updatedFields: ["description", "icon"] } },
      { deviceId: "" },
    ),
    ["应用已更新", "a-1 已更新（description、icon）"],
    ["App updated", "a-1 updated (description, icon)"],
  );
});

test("devices: names, else ids; durations; errors", () => {
  says(
    SAMPLES.deviceCreated,
    ["设备已创建", "设备 phone-10 已创建（创建中）"],
    ["Device created", "Device phone-10 created (creating)"],
  );
  says(
    SAMPLES.deviceStarted,
    ["设备已启动", "设备 d-7010 已启动（redroid）"],
    ["Device started", "Device d-7010 started (redroid)"],
  );
  says(
    SAMPLES.deviceStopped,
    ["设备已停止", "设备 d-7010 已停止，运行了 1 小时"],
    ["Device stopped", "Device d-7010 stopped after 1h"],
  );
  says(
    event("device.stopped", { case: "deviceStopped", value: { durationSeconds: 5425.4 } }),
    ["设备已停止", "设备 d-7001 已停止，运行了 1 小时 30 分 25 秒"],
    ["Device stopped", "Device d-7001 stopped after 1h 30m 25s"],
  );
  says(
    event("device.deleted", { case: "deviceDeleted", value: {} }, { deviceId: "d-7012" }),
    ["设备已删除", "设备 d-7012 已删除"],
    ["Device deleted", "Device d-7012 deleted"],
  );
  says(
    SAMPLES.deviceError,
    ["设备异常", "设备 phone-10 出错：ADB connection lost（adb_disconnected）"],
    ["Device error", "Device phone-10 error: ADB connection lost (adb_disconnected)"],
  );
});

test("admin notices keep their own title and message; untyped and missing payloads are generic", () => {
  says(
    SAMPLES.adminNotice,
    ["Quota exceeded", "错误：User u-1001 exceeded quota q-2001 (105 % used)."],
    ["Quota exceeded", "Error: User u-1001 exceeded quota q-2001 (105 % used)."],
  );
  says(
    SAMPLES.untyped,
    ["设备通知", "事件 device.rebooted（设备 d-7001）"],
    ["Device notification", "Event device.rebooted (device d-7001)"],
  );
  // A type newer than this package: no payload case it knows.
  says(
    event("billing.refund", undefined, { deviceId: "" }),
    ["计费通知", "事件 billing.refund"],
    ["Billing notification", "Event billing.refund"],
  );
  says(
    event("", undefined, { deviceId: "" }),
    ["通知", "未知类型的事件"],
    ["Notification", "An event of unknown type"],
  );
});
