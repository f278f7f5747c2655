// The generated TypeScript client from Node, over gRPC on HTTP/2 (@connectrpc/connect-node),
// against a running server: subscribe, receive typed events, resume by cursor.
//
// Environment (all required; the test fails, never skips, without them):
//   NOTIFY_URL            e.g. http://127.0.0.1:50051
//   NOTIFY_USER_ID        the user the events are about
//   NOTIFY_USER_TOKEN     a token for that user
//   NOTIFY_SERVICE_TOKEN  a token that may Publish (role `service`)
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { createClient, type Client } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { Event } from "@notify-backbone/client";
import {
  NotificationService,
  type SubscribeResponse,
} from "@notify-backbone/client";

/** Longest wait for any one message or call. */
const WAIT_MS = 15_000;
const FIXTURES = new URL("../../tests/fixtures/wire/", import.meta.url);

type Json = Record<string, unknown>;

function environment() {
  const names = ["NOTIFY_URL", "NOTIFY_USER_ID", "NOTIFY_USER_TOKEN", "NOTIFY_SERVICE_TOKEN"];
  const missing = names.filter((name) => !process.env[name]);
  if (missing.length > 0) {
    throw new Error(
      `${missing.join(", ")} not set: start notify-backbone and set NOTIFY_URL (e.g. ` +
        "http://127.0.0.1:50051), NOTIFY_USER_ID, NOTIFY_USER_TOKEN (a token for that user) and " +
        "NOTIFY_SERVICE_TOKEN (role service) before running test:node-client",
    );
  }
  const env = (name: string) => process.env[name] ?? "";
  return {
    url: env("NOTIFY_URL"),
    userId: env("NOTIFY_USER_ID"),
    userToken: env("NOTIFY_USER_TOKEN"),
    serviceToken: env("NOTIFY_SERVICE_TOKEN"),
  };
}

/** A wire fixture's text, byte for byte (so numbers keep their spelling, `109.40` included). */
async function fixture(name: string): Promise<string> {
  return (await readFile(new URL(name, FIXTURES), "utf8")).trim();
}

/** `body` with its one string member `"key":"…"` (at any depth) set to `value`, or with that
 * member added at the top when it has none. */
function withString(body: string, key: string, value: string): string {
  const member = new RegExp(`"${key}":"(?:[^"\\\\]|\\\\.)*"`, "g");
  const count = body.match(member)?.length ?? 0;
  assert.ok(count <= 1, `the fixture has at most one string "${key}"`);
  const replacement = `"${key}":${JSON.stringify(value)}`;
  return count === 1 ? body.replace(member, replacement) : body.replace(/^\{/, `{${replacement},`);
}

/** `body` with several string members replaced, as by `withString`. */
function withStrings(body: string, values: Record<string, string>): string {
  return Object.entries(values).reduce((text, [key, value]) => withString(text, key, value), body);
}

function withTimeout<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** One subscription, read message by message, each read bounded by `WAIT_MS`. */
class Stream {
  private readonly abort = new AbortController();
  private readonly iterator: AsyncIterator<SubscribeResponse>;
  /** The last cursor seen on any message. */
  cursor = "";

  constructor(client: Client<typeof NotificationService>, token: string, resumeAfter: string) {
    const responses = client.subscribe(
      { resumeAfter },
      { signal: this.abort.signal, headers: { authorization: `Bearer ${token}` } },
    );
    this.iterator = responses[Symbol.asyncIterator]();
  }

  /** The next message that is not a heartbeat. */
  async next(what: string): Promise<SubscribeResponse["kind"]> {
    for (;;) {
      const result = await withTimeout(this.iterator.next(), what);
      if (result.done === true) throw new Error(`the stream ended while waiting for ${what}`);
      const kind = result.value.kind;
      const cursor =
        kind.case === "event" || kind.case === "caughtUp" || kind.case === "heartbeat"
          ? kind.value.cursor
          : kind.case === "gap"
            ? kind.value.toCursor
            : "";
      if (cursor !== "") this.cursor = cursor;
      if (kind.case !== "heartbeat") return kind;
    }
  }

  async caughtUp(what: string): Promise<void> {
    const kind = await this.next(what);
    assert.equal(kind.case, "caughtUp", `expected CaughtUp (${what}), got ${String(kind.case)}`);
  }

  async event(what: string): Promise<Event> {
    const kind = await this.next(what);
    assert.equal(kind.case, "event", `expected an event (${what}), got ${String(kind.case)}`);
    return kind.value as Event;
  }

  close(): void {
    this.abort.abort();
  }
}

test("subscribes, receives typed events and resumes by cursor over gRPC (HTTP/2)", async () => {
  const env = environment();
  const sessionManager = new Http2SessionManager(env.url);
  // gRPC in connect-node is always HTTP/2 (it takes no `httpVersion`); one session, closed at the end.
  const transport = createGrpcTransport({ baseUrl: env.url, sessionManager });
  const client = createClient(NotificationService, transport);
  const run = randomUUID();

  async function publish(routingKey: string, body: string) {
    const json = new TextEncoder().encode(body);
    const response = await withTimeout(
      client.publish(
        { routingKey, body: { case: "json", value: json } },
        { headers: { authorization: `Bearer ${env.serviceToken}` } },
      ),
      `Publish ${routingKey}`,
    );
    assert.equal(response.id, (JSON.parse(body) as Json)["eventId"], "the producer's eventId is the id");
    assert.equal(response.duplicate, false);
    assert.notEqual(response.cursor, "");
    return response;
  }

  const streams: Stream[] = [];
  try {
    // 1. Live subscription without resume: CaughtUp comes first.
    const live = new Stream(client, env.userToken, "");
    streams.push(live);
    await live.caughtUp("the first CaughtUp");

    // 2. A payment for this user, from the envelope fixture, with fresh ids.
    const orderId = `o-${run}`;
    const paymentId = `node-client-payment-${run}`;
    const payment = withStrings(await fixture("billing.payment_success.envelope.json"), {
      eventId: paymentId,
      userId: env.userId,
      orderId,
    });
    const published = await publish("billing.payment_success", payment);

    const received = await live.event("the payment");
    assert.equal(received.id, paymentId);
    assert.equal(received.cursor, published.cursor);
    assert.equal(received.type, "billing.payment_success");
    assert.equal(received.userId, env.userId);
    assert.equal(received.payload.case, "billingPaymentSuccess");
    if (received.payload.case === "billingPaymentSuccess") {
      const value = received.payload.value;
      assert.equal(value.amount?.value, "99.9", "the amount is the producer's decimal, verbatim");
      assert.equal(value.orderId, orderId);
      assert.equal(value.paymentMethod, "alipay");
      assert.equal(value.newBalance?.value, "109.40");
    }
    assert.ok(received.occurredAt !== undefined, "occurred_at is set");
    const resumeAfter = live.cursor;
    live.close();

    // 3. Two installs while nobody listens.
    const template = await fixture("app.installed.shape-a.json");
    const templateJson = JSON.parse(template) as Json;
    const installs = [
      { appName: "WeChat", version: "8.0.50" },
      { appName: "Douyin", version: "30.1.0" },
    ].map((values, index) => {
      const fields = {
        ...values,
        eventId: `node-client-install-${index}-${run}`,
        installationId: `i-${index}-${run}`,
        userId: env.userId,
      };
      return { ...fields, body: withStrings(template, fields) };
    });
    for (const install of installs) await publish("app.installed", install.body);

    // 4. Resume after the last cursor: exactly those two, in order, typed, then CaughtUp.
    const resumed = new Stream(client, env.userToken, resumeAfter);
    streams.push(resumed);
    for (const install of installs) {
      const event = await resumed.event(`the replayed ${install.appName} install`);
      assert.equal(event.id, install.eventId);
      assert.equal(event.type, "app.installed");
      assert.equal(event.userId, env.userId);
      assert.equal(event.deviceId, templateJson["deviceId"]);
      assert.equal(event.payload.case, "appInstalled");
      if (event.payload.case === "appInstalled") {
        assert.equal(event.payload.value.appName, install.appName);
        assert.equal(event.payload.value.version, install.version);
        assert.equal(event.payload.value.installationId, install.installationId);
        assert.equal(event.payload.value.appId, templateJson["applicationId"]);
      }
    }
    await resumed.caughtUp("CaughtUp after the replay");
  } finally {
    for (const stream of streams) stream.close();
    sessionManager.abort();
  }
});
