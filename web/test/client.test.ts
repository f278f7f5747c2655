// The client package beyond the loop itself: token refresh at expiry, the shared connection's
// listeners, the event union and exact money.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  EventSchema,
  Feed,
  ListEventsResponseSchema,
  Notifications,
  SubscribeResponseSchema,
  asTyped,
  compareMoney,
  isEventOf,
  moneyOf,
  type Event,
  type FeedState,
  type NotificationClient,
  type SubscribeResponse,
} from "@notify-backbone/client";

const event = (id: string, cursor: string): SubscribeResponse =>
  create(SubscribeResponseSchema, { kind: { case: "event", value: { id, cursor, type: "device.error" } } });
const caughtUp = (cursor: string): SubscribeResponse =>
  create(SubscribeResponseSchema, { kind: { case: "caughtUp", value: { cursor } } });

/**
 * A client whose n-th `subscribe` plays `scripts[n]`; it records each call's request and token.
 * `listEvents` answers `history` (newest first), but refuses the token `stale` as expired.
 */
function scriptedClient(scripts: (SubscribeResponse | ConnectError)[][], history: Event[] = []) {
  const calls: { resumeAfter: string; authorization: string }[] = [];
  const listCalls: string[] = [];
  const client = {
    subscribe(request: { resumeAfter?: string }, options?: { headers?: Record<string, string> }) {
      calls.push({ resumeAfter: request.resumeAfter ?? "", authorization: options?.headers?.authorization ?? "" });
      const script = scripts[calls.length - 1] ?? [new ConnectError("no more scripts", Code.PermissionDenied)];
      return (async function* () {
        for (const step of script) {
          if (step instanceof ConnectError) throw step;
          yield step;
        }
      })();
    },
    async listEvents(_request: unknown, options?: { headers?: Record<string, string> }) {
      const authorization = options?.headers?.authorization ?? "";
      listCalls.push(authorization);
      if (authorization === "Bearer stale") throw new ConnectError("token expired", Code.Unauthenticated);
      return create(ListEventsResponseSchema, { events: [...history].reverse(), headCursor: "h0" });
    },
  };
  return { client: client as unknown as NotificationClient, calls, listCalls };
}

const expired = () => new ConnectError("token expired; last cursor sent: c2", Code.Unauthenticated);

test("a stream that ends UNAUTHENTICATED continues at once with a refreshed token, after its cursor", async () => {
  const { client, calls } = scriptedClient([
    [caughtUp("c0"), event("e1", "c1"), event("e2", "c2"), expired()],
    [caughtUp("c2"), event("e3", "c3"), new ConnectError("stop", Code.PermissionDenied)],
  ]);
  const seen: string[] = [];
  const states: FeedState["state"][] = [];
  const sleeps: number[] = [];
  let refreshes = 0;
  const feed = new Feed(
    client,
    { onEvent: (e) => seen.push(e.id), onState: (s) => states.push(s.state), onGap: () => {} },
    {
      refreshToken: async () => `fresh-${++refreshes}`,
      sleep: async (ms) => void sleeps.push(ms),
    },
  );
  await feed.start("first", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);
  assert.deepEqual(seen, ["e1", "e2", "e3"]);
  assert.equal(refreshes, 1);
  assert.deepEqual(calls, [
    { resumeAfter: "", authorization: "Bearer first" },
    { resumeAfter: "c2", authorization: "Bearer fresh-1" },
  ]);
  assert.deepEqual(sleeps, [], "no backoff for an expired token");
  assert.equal(states.at(-1), "error");
});

test("a refreshed token refused at once stops the feed instead of refreshing forever", async () => {
  const { client, calls } = scriptedClient([[expired()], [expired()], [expired()]]);
  let refreshes = 0;
  const states: FeedState[] = [];
  const feed = new Feed(
    client,
    { onEvent: () => {}, onState: (s) => states.push(s), onGap: () => {} },
    { refreshToken: async () => `fresh-${++refreshes}` },
  );
  await feed.start("first", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);
  assert.equal(refreshes, 1);
  assert.equal(calls.length, 2);
  const last = states.at(-1);
  assert.ok(last?.state === "error" && last.error.code === Code.Unauthenticated);
});

test("every expiry is refreshed, the next one too, and one after an outage", async () => {
  const { client, calls } = scriptedClient([
    [caughtUp("c0"), event("e1", "c1"), expired()],
    [caughtUp("c1"), event("e2", "c2"), expired()],
    [new ConnectError("server restarting", Code.Unavailable)],
    [expired()],
    [caughtUp("c2"), event("e3", "c3"), new ConnectError("stop", Code.PermissionDenied)],
  ]);
  const seen: string[] = [];
  let refreshes = 0;
  const feed = new Feed(
    client,
    { onEvent: (e) => seen.push(e.id), onState: () => {}, onGap: () => {} },
    { refreshToken: async () => `fresh-${++refreshes}`, sleep: async () => {} },
  );
  await feed.start("first", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);
  assert.deepEqual(seen, ["e1", "e2", "e3"]);
  assert.equal(refreshes, 3, "two expiries in a row, then one after an outage");
  assert.deepEqual(
    calls.map((call) => `${call.resumeAfter} ${call.authorization}`),
    [" Bearer first", "c1 Bearer fresh-1", "c2 Bearer fresh-2", "c2 Bearer fresh-2", "c2 Bearer fresh-3"],
  );
});

test("the first paint's history is read again with a fresh token when the first one expired", async () => {
  const old = create(EventSchema, { id: "h1", cursor: "c-h1", type: "device.error" });
  const { client, calls, listCalls } = scriptedClient(
    [[caughtUp("h0"), new ConnectError("stop", Code.PermissionDenied)]],
    [old],
  );
  const seen: string[] = [];
  const feed = new Feed(
    client,
    { onEvent: (e) => seen.push(e.id), onState: () => {}, onGap: () => {} },
    { history: 10, refreshToken: async () => "fresh" },
  );
  await feed.start("stale", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);
  assert.deepEqual(listCalls, ["Bearer stale", "Bearer fresh"]);
  assert.deepEqual(seen, ["h1"]);
  assert.deepEqual(calls[0], { resumeAfter: "h0", authorization: "Bearer fresh" });
});

test("a token source that fails stops the feed with the reason", async () => {
  const { client } = scriptedClient([[expired()]]);
  const states: FeedState[] = [];
  const feed = new Feed(
    client,
    { onEvent: () => {}, onState: (s) => states.push(s), onGap: () => {} },
    { refreshToken: async () => Promise.reject(new Error("session over")) },
  );
  await feed.start("first", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);
  const last = states.at(-1);
  assert.ok(last?.state === "error" && last.error.message.includes("session over"), String(last?.state));
});

test("one connection, many listeners: removing one leaves the others; history is marked", async () => {
  const old = create(EventSchema, { id: "h1", cursor: "c-h1", type: "device.error" });
  const { client, calls } = scriptedClient(
    [[caughtUp("h0"), event("e1", "c1"), event("e2", "c2"), new ConnectError("stop", Code.PermissionDenied)]],
    [old],
  );
  const connection = new Notifications({ client, getToken: () => "t", history: 5, keep: 2 });
  const a: string[] = [];
  const b: string[] = [];
  const removeA = connection.listen({ onEvent: (e, origin) => a.push(`${e.id}${origin.history ? "(h)" : ""}`) });
  const listenerB = { onEvent: (e: Event) => b.push(e.id) };
  const removeB1 = connection.listen(listenerB);
  const removeB2 = connection.listen(listenerB);
  removeB1();
  removeB1();
  const done = new Promise<void>((resolve) =>
    connection.listen({ onState: (s) => s.state === "error" && resolve() }),
  );
  connection.start();
  await done;
  assert.deepEqual(a, ["h1(h)", "e1", "e2"]);
  assert.deepEqual(b, ["h1", "e1", "e2"], "the same listener added twice and removed once still hears once");
  assert.equal(calls[0]?.resumeAfter, "h0", "live starts where the history page ended");
  assert.deepEqual(
    connection.recent.map((e) => e.id),
    ["e1", "e2"],
    "recent keeps the latest `keep`",
  );
  removeA();
  removeB2();
});

test("the event union narrows by type; money stays an exact decimal string", () => {
  const payment = create(EventSchema, {
    id: "p1",
    type: "billing.payment_success",
    payload: { case: "billingPaymentSuccess", value: { paymentId: "pay-1", amount: { value: "0.10" } } },
  });
  const typed = asTyped(payment);
  assert.ok(typed !== undefined);
  if (typed.type === "billing.payment_success") {
    // Compiles only because `type` narrowed the payload.
    assert.equal(typed.payload.value.paymentId, "pay-1");
    assert.equal(moneyOf(typed.payload.value.amount), "0.10");
  } else {
    assert.fail(`narrowed to ${typed.type}`);
  }
  assert.ok(isEventOf(payment, "billing.payment_success"));
  assert.ok(!isEventOf(payment, "billing.low_balance"));
  const mismatched = create(EventSchema, { type: "billing.payment_success", payload: { case: "deviceError", value: {} } });
  assert.equal(asTyped(mismatched), undefined);
  assert.equal(asTyped(create(EventSchema, { type: "quota.unknown_yet", payload: { case: "untyped", value: {} } })), undefined);
  const legacy = create(EventSchema, { type: "app.install.failed", payload: { case: "appInstallFailed", value: { appId: "a" } } });
  assert.equal(asTyped(legacy)?.type, "app.install_failed");
  assert.equal(moneyOf(undefined), undefined);

  assert.equal(compareMoney("0.10", "0.1"), 0);
  assert.ok(compareMoney("0.3", "0.1") > 0);
  assert.ok(compareMoney("10.00", "9.99") > 0);
  assert.ok(compareMoney("-10", "-9.5") < 0);
  assert.ok(compareMoney("-0.00", "0") === 0);
  assert.ok(compareMoney("99999999999999999.01", "99999999999999999.02") < 0, "beyond a double's precision");
  assert.throws(() => compareMoney("1e3", "1"), RangeError);
});

test("the connection counts what storm control skipped, tells its listeners, and resumes after it", async () => {
  const conflated = (skipped: bigint, upToCursor: string): SubscribeResponse =>
    create(SubscribeResponseSchema, { kind: { case: "conflated", value: { skipped, upToCursor } } });
  const { client, calls } = scriptedClient([
    [caughtUp("c0"), conflated(3n, "c5"), event("e6", "c6"), new ConnectError("reset", Code.Unavailable)],
    [conflated(2n, "c9"), new ConnectError("stop", Code.PermissionDenied)],
  ]);
  const connection = new Notifications({
    client,
    getToken: () => "t",
    history: 0,
    selection: { conflate: true },
    feed: { sleep: async () => {} },
  });
  const told: string[] = [];
  connection.listen({ onConflated: (c) => told.push(`${c.skipped}@${c.upToCursor}`) });
  const done = new Promise<void>((resolve) => connection.listen({ onState: (s) => s.state === "error" && resolve() }));
  assert.equal(connection.skipped, 0);
  connection.start();
  await done;
  assert.deepEqual(told, ["3@c5", "2@c9"]);
  assert.equal(connection.skipped, 5, "a running total");
  assert.equal(calls[1]?.resumeAfter, "c6");
  assert.equal(connection.cursor, "c9");
});
