// One stream per browser: tabs (connections of one process here) elect a holder with a fake
// `navigator.locks` and pass its messages on over Node's real BroadcastChannel; the holder going
// hands the stream to the next tab after the last cursor, nothing lost or repeated; each tab's
// calls keep its own token; without locks or channels, a stream per tab as before.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  InboxUpdateReason,
  Notifications,
  SubscribeResponseSchema,
  broadcastChannel,
  browserTabSharing,
  emptyCounts,
  sharedStreamName,
  type EventOrigin,
  type NotificationClient,
  type SubscribeResponse,
  type TabLocks,
  type TabSharing,
} from "@notify-backbone/client";

function response(kind: MessageInitShape<typeof SubscribeResponseSchema>["kind"]): SubscribeResponse {
  return create(SubscribeResponseSchema, { kind });
}
const event = (id: string, cursor: string) => response({ case: "event", value: { id, cursor, type: "device.error" } });
const caughtUp = (cursor: string) => response({ case: "caughtUp", value: { cursor } });
const heartbeat = (cursor: string) => response({ case: "heartbeat", value: { cursor } });
function unread(n: number): SubscribeResponse {
  const counts = emptyCounts();
  counts.unread = BigInt(n);
  counts.total = BigInt(n);
  return response({ case: "inbox", value: { reason: InboxUpdateReason.STATE, counts } });
}

function jwt(payload: object): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(payload)}.c2lnbmF0dXJl`;
}

/** `navigator.locks` in miniature: one holder per name, the others queued in order. */
class FakeLocks implements TabLocks {
  private readonly held = new Set<string>();
  private readonly queues = new Map<string, { grant: () => void; signal: AbortSignal }[]>();

  request(name: string, options: { signal: AbortSignal }, callback: () => Promise<void>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const entry = {
        signal: options.signal,
        grant: () => {
          this.held.add(name);
          void callback()
            .then(resolve, reject)
            .finally(() => {
              this.held.delete(name);
              this.next(name);
            });
        },
      };
      if (options.signal.aborted) return reject(new Error("aborted"));
      options.signal.addEventListener("abort", () => {
        const queue = this.queues.get(name) ?? [];
        const at = queue.indexOf(entry);
        if (at >= 0) {
          queue.splice(at, 1);
          reject(new Error("aborted"));
        }
      });
      if (this.held.has(name)) {
        this.queues.set(name, [...(this.queues.get(name) ?? []), entry]);
      } else {
        entry.grant();
      }
    });
  }

  private next(name: string): void {
    const queue = this.queues.get(name) ?? [];
    const entry = queue.shift();
    entry?.grant();
  }
}

/** A server stream the test feeds message by message, or ends with an error. */
class Stream {
  private readonly queue: (SubscribeResponse | ConnectError)[] = [];
  private wake: (() => void) | undefined;

  push(...steps: (SubscribeResponse | ConnectError)[]): void {
    this.queue.push(...steps);
    this.wake?.();
  }

  async *play(signal: AbortSignal | undefined): AsyncGenerator<SubscribeResponse> {
    for (;;) {
      while (this.queue.length === 0) {
        if (signal?.aborted) throw new ConnectError("aborted", Code.Canceled);
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          signal?.addEventListener("abort", () => resolve(), { once: true });
        });
      }
      const step = this.queue.shift();
      if (step instanceof ConnectError) throw step;
      if (step !== undefined) yield step;
    }
  }
}

/** One tab: its own client (what it subscribes with, which token its calls carry) and what it hears. */
function tab(token: string, sharing: TabSharing | false | undefined, history = 10) {
  const streams: Stream[] = [];
  const subscribes: { resumeAfter: string; authorization: string; inbox: boolean }[] = [];
  const calls: string[] = [];
  const client = {
    subscribe(
      request: { resumeAfter?: string; inbox?: boolean },
      options?: { signal?: AbortSignal; headers?: Record<string, string> },
    ) {
      subscribes.push({
        resumeAfter: request.resumeAfter ?? "",
        authorization: options?.headers?.authorization ?? "",
        inbox: request.inbox ?? false,
      });
      const stream = new Stream();
      streams.push(stream);
      return stream.play(options?.signal);
    },
    async listEvents() {
      return { events: [], headCursor: "h0" };
    },
    async getInboxCounts(_request: unknown, options?: { headers?: Record<string, string> }) {
      calls.push(`counts ${options?.headers?.authorization}`);
      return { counts: emptyCounts() };
    },
  };
  const connection = new Notifications({
    client: client as unknown as NotificationClient,
    getToken: () => token,
    server: "https://notify.example.com",
    history,
    ...(sharing === undefined ? {} : { tabs: sharing === false ? false : { sharing } }),
    // No watchdog timers: the test's streams are silent between steps.
    feed: { setTimer: () => () => {}, sleep: async () => {} },
  });
  const heard: string[] = [];
  connection.listen({
    onEvent: (e, origin: EventOrigin) => heard.push(`${e.id}${origin.history ? "(h)" : ""}`),
  });
  const stream = (n: number): Stream => {
    const s = streams[n];
    assert.ok(s, `stream ${n} is open`);
    return s;
  };
  return { connection, subscribes, calls, heard, stream };
}

/** Waits until `ready()` holds, turning the event loop (BroadcastChannel delivers in its own turns). */
async function until(ready: () => boolean, what: string): Promise<void> {
  for (let turn = 0; turn < 2000; turn++) {
    if (ready()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never: ${what}`);
}

const sharingOf = (): TabSharing => ({ locks: new FakeLocks(), channel: broadcastChannel });

test("one stream per browser: the holder passes it on, the next tab takes over after the last cursor", async () => {
  const sharing = sharingOf();
  const a = tab(jwt({ sub: "u1", tab: "a" }), sharing);
  const b = tab(jwt({ sub: "u1", tab: "b" }), sharing);
  a.connection.start();
  await until(() => a.subscribes.length === 1, "A subscribes");
  assert.equal(a.connection.sharedStream?.leading, true);
  a.stream(0).push(caughtUp("c0"), event("e1", "c1"));
  await until(() => a.heard.length === 1, "A hears e1");

  b.connection.start();
  await until(() => b.heard.length === 1, "B is welcomed");
  assert.deepEqual(b.heard, ["e1(h)"], "the holder's recent events, as history");
  assert.equal(b.connection.sharedStream?.leading, false);
  assert.equal(b.connection.state.state, "live");
  assert.equal(b.subscribes.length, 0, "no stream of its own");

  a.stream(0).push(event("e2", "c2"), unread(2), heartbeat("c3"));
  await until(() => b.connection.cursor === "c3", "B follows to the heartbeat");
  assert.deepEqual(b.heard, ["e1(h)", "e2"]);
  assert.equal(b.connection.inbox().counts?.unread, 2n, "inbox updates pass too");
  // Each tab's calls carry its own token.
  await b.connection.inbox().loadCounts();
  assert.deepEqual(b.calls, [`counts Bearer ${jwt({ sub: "u1", tab: "b" })}`]);

  // The holder's tab closes: B takes the lock and opens the stream after the last cursor.
  a.connection.stop();
  await until(() => b.subscribes.length === 1, "B subscribes");
  assert.deepEqual(b.subscribes[0], {
    resumeAfter: "c3",
    authorization: `Bearer ${jwt({ sub: "u1", tab: "b" })}`,
    inbox: true,
  });
  assert.equal(b.connection.sharedStream?.leading, true);
  b.stream(0).push(caughtUp("c3"), event("e3", "c4"));
  await until(() => b.heard.length === 3, "B hears e3");
  assert.deepEqual(b.heard, ["e1(h)", "e2", "e3"], "nothing lost, nothing twice");
  assert.deepEqual(a.heard, ["e1", "e2"]);

  // A tab that comes back follows the new holder.
  a.connection.start();
  await until(() => a.heard.length === 3, "A is welcomed again");
  assert.deepEqual(a.heard, ["e1", "e2", "e3(h)"], "what it had heard is not told again");
  assert.equal(a.subscribes.length, 1);
  b.stream(0).push(event("e4", "c5"));
  await until(() => a.heard.length === 4, "A follows B");
  a.connection.stop();
  b.connection.stop();
});

test("a follower hears once what a new holder's stream repeats", async () => {
  const sharing = sharingOf();
  const [a, b, c] = ["a", "b", "c"].map((name) => tab(jwt({ sub: "u1", tab: name }), sharing));
  assert.ok(a && b && c);
  a.connection.start();
  await until(() => a.subscribes.length === 1, "A subscribes");
  a.stream(0).push(caughtUp("c0"), event("e1", "c1"));
  await until(() => a.heard.length === 1, "A hears e1");
  b.connection.start();
  await until(() => b.heard.length === 1, "B is welcomed");
  c.connection.start();
  await until(() => c.heard.length === 1, "C is welcomed");
  a.stream(0).push(event("e2", "c2"));
  await until(() => b.heard.length === 2 && c.heard.length === 2, "B and C hear e2");
  a.connection.stop();
  await until(() => b.subscribes.length === 1, "B takes over (first in the lock's queue)");
  assert.equal(c.subscribes.length, 0);
  // B resumed from a cursor before one C had seen (a message still in flight when A went).
  b.stream(0).push(event("e2", "c2"), caughtUp("c2"), event("e3", "c3"));
  await until(() => c.heard.length === 3 && b.heard.length === 3, "both hear e3");
  assert.deepEqual(c.heard, ["e1(h)", "e2", "e3"]);
  assert.deepEqual(b.heard, ["e1(h)", "e2", "e3"]);
  b.connection.stop();
  c.connection.stop();
});

test("a holder whose stream is refused for good lets another tab try with its own token", async () => {
  const sharing = sharingOf();
  const a = tab(jwt({ sub: "u1", tab: "a" }), sharing);
  const b = tab(jwt({ sub: "u1", tab: "b" }), sharing);
  a.connection.start();
  await until(() => a.subscribes.length === 1, "A subscribes");
  a.stream(0).push(caughtUp("c0"), event("e1", "c1"));
  b.connection.start();
  await until(() => b.heard.length === 1, "B is welcomed");
  a.stream(0).push(new ConnectError("forbidden", Code.PermissionDenied));
  await until(() => b.subscribes.length === 1, "B subscribes");
  assert.equal(a.connection.state.state, "error");
  assert.notEqual(b.connection.state.state, "error", "the holder's error is not the follower's");
  assert.equal(b.subscribes[0]?.resumeAfter, "c1");
  b.connection.stop();
});

test("without Web Locks or BroadcastChannel (or with tabs: false, or no user in the token), a stream per tab", async () => {
  assert.equal(browserTabSharing(), undefined, "Node 20 has no navigator.locks");
  const g = globalThis as { navigator?: unknown };
  const had = Object.getOwnPropertyDescriptor(globalThis, "navigator");
  Object.defineProperty(globalThis, "navigator", { value: { locks: new FakeLocks() }, configurable: true });
  try {
    assert.notEqual(browserTabSharing(), undefined, "where both exist, tabs share");
  } finally {
    if (had === undefined) delete g.navigator;
    else Object.defineProperty(globalThis, "navigator", had);
  }

  const token = jwt({ sub: "u1" });
  for (const [what, sharing, tokens] of [
    ["no locks", undefined, [token, token]],
    ["tabs: false", false, [token, token]],
    ["tokens without a user", sharingOf(), ["opaque-a", "opaque-b"]],
  ] as const) {
    const [a, b] = tokens.map((t) => tab(t, sharing));
    assert.ok(a && b);
    a.connection.start();
    b.connection.start();
    await until(() => a.subscribes.length === 1 && b.subscribes.length === 1, `${what}: both subscribe`);
    assert.equal(a.connection.sharedStream, undefined, what);
    a.stream(0).push(caughtUp("c0"), event("e1", "c1"));
    b.stream(0).push(caughtUp("c0"), event("e1", "c1"));
    await until(() => a.heard.length === 1 && b.heard.length === 1, `${what}: each hears its own`);
    a.connection.stop();
    b.connection.stop();
  }
});

test("the shared stream's name: server, user and selection", () => {
  const all = { eventTypes: [], deviceId: "", userId: "", adminFeed: false };
  const name = sharedStreamName("https://a", "u1", all);
  assert.notEqual(name, sharedStreamName("https://b", "u1", all));
  assert.notEqual(name, sharedStreamName("https://a", "u2", all));
  assert.notEqual(name, sharedStreamName("https://a", "u1", { ...all, adminFeed: true }));
  assert.equal(
    sharedStreamName("https://a", "u1", { ...all, eventTypes: ["b.*", "a.*"] }),
    sharedStreamName("https://a", "u1", { ...all, eventTypes: ["a.*", "b.*"] }),
  );
  // A tab that wants every event never follows a stream that skips some, or one that is paced.
  assert.notEqual(name, sharedStreamName("https://a", "u1", { ...all, conflate: true }));
  assert.notEqual(name, sharedStreamName("https://a", "u1", { ...all, maxEventsPerSecond: 10 }));
  assert.equal(name, sharedStreamName("https://a", "u1", { ...all, conflate: false, maxEventsPerSecond: 0 }));
});

test("a Conflated passes to the tabs that follow: their cursor moves past the skipped events, their total counts them", async (t) => {
  const sharing = sharingOf();
  const a = tab(jwt({ sub: "u1", tab: "a" }), sharing);
  const b = tab(jwt({ sub: "u1", tab: "b" }), sharing);
  // Even when an assertion fails: open channels and streams would keep the test process alive.
  t.after(() => {
    a.connection.stop();
    b.connection.stop();
  });
  a.connection.start();
  await until(() => a.subscribes.length === 1, "A subscribes");
  a.stream(0).push(caughtUp("c0"), event("e1", "c1"));
  b.connection.start();
  await until(() => b.heard.length === 1, "B is welcomed");
  a.stream(0).push(response({ case: "conflated", value: { skipped: 7n, upToCursor: "c8" } }));
  await until(() => b.connection.cursor === "c8", "B follows to the Conflated's cursor");
  assert.equal(b.connection.skipped, 7);
  assert.equal(a.connection.skipped, 7);
  // B takes over after the skipped events, not before them.
  a.connection.stop();
  await until(() => b.subscribes.length === 1, "B subscribes");
  assert.equal(b.subscribes[0]?.resumeAfter, "c8");
});
