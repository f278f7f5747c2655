// The reconnect loop against a scripted fake client: backoff, resume by cursor, no retry of a
// refused token, the dead-connection watchdog, callbacks that throw, storm control's `Conflated`
// and options (these last through a real in-process transport, so they are encoded as sent).
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import {
  ListEventsResponseSchema,
  NotificationService,
  SubscribeResponseSchema,
  type Conflated,
  type ListEventsRequest,
  type SubscribeRequest,
  type SubscribeResponse,
} from "@notify-backbone/client";
import {
  BACKOFF,
  Feed,
  IDLE_TIMEOUT_MS,
  backoffDelay,
  isTransient,
  type FeedState,
  type SetTimer,
} from "@notify-backbone/client";

test("backoff doubles from 500 ms, caps at 10 s, jitters by ±20%", () => {
  const mid = () => 0.5;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 10].map((attempt) => backoffDelay(attempt, mid)),
    [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000],
  );
  assert.equal(backoffDelay(0, () => 0), 400);
  assert.equal(backoffDelay(0, () => 0.999999), 600);
  assert.equal(backoffDelay(3, () => 0), 3200);
  for (let i = 0; i < 200; i++) {
    const delay = backoffDelay(20);
    assert.ok(delay >= BACKOFF.maxMs * 0.8 && delay <= BACKOFF.maxMs, String(delay));
  }
});

test("transient codes are retried, a refused token is not", () => {
  for (const code of [Code.Unavailable, Code.Internal, Code.Unknown, Code.DeadlineExceeded, Code.ResourceExhausted]) {
    assert.ok(isTransient(new ConnectError("x", code)), Code[code]);
  }
  for (const code of [Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument]) {
    assert.ok(!isTransient(new ConnectError("x", code)), Code[code]);
  }
});

/** A message, an error ending the stream, or `ms` of silence from the server. */
type Step = SubscribeResponse | ConnectError | { silence: number };

function response(kind: MessageInitShape<typeof SubscribeResponseSchema>["kind"]): SubscribeResponse {
  return create(SubscribeResponseSchema, { kind });
}

function eventResponse(id: string, cursor: string): SubscribeResponse {
  return response({
    case: "event",
    value: { id, cursor, type: "app.installed" },
  });
}

/** A client whose n-th `subscribe` call plays `scripts[n]` (a stream ending without error when
 * the script has no error); calls beyond the scripts fail with `Unauthenticated`. A silence
 * advances `clock`; if that aborted the call, it fails the way connect does (`Canceled`). */
function fakeClient(scripts: Step[][], clock?: VirtualClock) {
  const requests: Partial<SubscribeRequest>[] = [];
  const client = {
    subscribe(request: Partial<SubscribeRequest>, options?: { signal?: AbortSignal }) {
      requests.push(request);
      const script = scripts[requests.length - 1] ?? [new ConnectError("stop", Code.Unauthenticated)];
      return (async function* () {
        for (const step of script) {
          if (step instanceof ConnectError) throw step;
          if ("silence" in step) {
            assert.ok(clock, "a script with silences needs a clock");
            clock.advance(step.silence);
            if (options?.signal?.aborted) throw new ConnectError("the operation was aborted", Code.Canceled);
            continue;
          }
          yield step;
        }
      })();
    },
  };
  return { client: client as unknown as Client<typeof NotificationService>, requests };
}

/** Timers on a virtual clock that only moves when a script's silence says so. */
class VirtualClock {
  now = 0;
  armed: number[] = [];
  private timers = new Set<{ at: number; fire: () => void }>();
  setTimer: SetTimer = (ms, fire) => {
    const timer = { at: this.now + ms, fire };
    this.timers.add(timer);
    this.armed.push(ms);
    return () => void this.timers.delete(timer);
  };
  advance(ms: number): void {
    this.now += ms;
    for (const timer of [...this.timers]) {
      if (timer.at > this.now) continue;
      this.timers.delete(timer);
      timer.fire();
    }
  }
  get pending(): number {
    return this.timers.size;
  }
}

test("reconnects with backoff and resumes after the last cursor", async () => {
  const { client, requests } = fakeClient([
    [
      response({ case: "caughtUp", value: { cursor: "c0" } }),
      eventResponse("e1", "c1"),
      response({ case: "heartbeat", value: { cursor: "c2" } }),
      new ConnectError("connection reset", Code.Unavailable),
    ],
    [new ConnectError("refused", Code.Unavailable)],
    [new ConnectError("refused", Code.Unknown)],
    [
      eventResponse("e3", "c3"),
      response({ case: "gap", value: { fromCursor: "c3", toCursor: "c9", reason: 1 } }),
      response({ case: "caughtUp", value: { cursor: "c9" } }),
    ],
    [new ConnectError("token expired", Code.Unauthenticated)],
  ]);
  const states: FeedState[] = [];
  const events: string[] = [];
  const gaps: string[] = [];
  const delays: number[] = [];
  const feed = new Feed(
    client,
    {
      onState: (state) => states.push(state),
      onEvent: (event) => events.push(event.id),
      onGap: (gap) => gaps.push(`${gap.fromCursor}-${gap.toCursor}`),
    },
    { random: () => 0.5, sleep: async (ms) => void delays.push(ms) },
  );
  await feed.start("t0k3n", { eventTypes: ["app.*"], deviceId: "", userId: "", adminFeed: false }, true);

  assert.deepEqual(
    requests.map((request) => request.resumeAfter),
    ["", "c2", "c2", "c2", "c9"],
  );
  assert.deepEqual(requests[0]?.eventTypes, ["app.*"]);
  assert.deepEqual(events, ["e1", "e3"]);
  assert.deepEqual(gaps, ["c3-c9"]);
  // 500 after the first drop (reset by CaughtUp), then 1000, 2000; reset again by CaughtUp, and the
  // clean end of the fourth stream waits 500 ms.
  assert.deepEqual(delays, [500, 1000, 2000, 500]);
  assert.equal(feed.cursor, "c9");
  const last = states.at(-1);
  assert.equal(last?.state, "error");
  assert.equal(last?.state === "error" ? last.error.code : undefined, Code.Unauthenticated);
  assert.ok(states.some((state) => state.state === "live"));
  assert.ok(states.some((state) => state.state === "reconnecting" && state.delayMs === 1000));
});

test("a fresh start forgets the cursor; stop ends the loop", async () => {
  const { client, requests } = fakeClient([
    [response({ case: "caughtUp", value: { cursor: "c5" } }), new ConnectError("x", Code.PermissionDenied)],
    [],
  ]);
  const states: FeedState[] = [];
  const feed = new Feed(
    client,
    { onState: (state) => states.push(state), onEvent: () => {}, onGap: () => {} },
    {
      sleep: async () => {
        feed.stop();
      },
    },
  );
  const selection = { eventTypes: [], deviceId: "", userId: "*", adminFeed: false };
  await feed.start("t", selection, false);
  assert.equal(feed.cursor, "c5");
  assert.equal(states.at(-1)?.state, "error");
  await feed.start("t", selection, false);
  assert.equal(requests[1]?.resumeAfter, "");
  assert.equal(requests[1]?.userId, "*");
  assert.equal(states.at(-1)?.state, "idle");
  assert.equal(requests.length, 2);
});

test("a silent connection is dropped after 45 s and resumed from the last cursor", async () => {
  assert.equal(IDLE_TIMEOUT_MS, 45_000);
  const clock = new VirtualClock();
  const { client, requests } = fakeClient(
    [
      [
        // Every message re-arms the watchdog: 30 s + 30 s + 44.999 s of silence are fine.
        response({ case: "caughtUp", value: { cursor: "c0" } }),
        { silence: 30_000 },
        eventResponse("e1", "c1"),
        { silence: 30_000 },
        response({ case: "heartbeat", value: { cursor: "c2" } }),
        { silence: IDLE_TIMEOUT_MS - 1 },
        eventResponse("e2", "c3"),
        { silence: IDLE_TIMEOUT_MS },
        eventResponse("never", "c4"),
      ],
      // A connection that never even says CaughtUp is given up on too.
      [{ silence: IDLE_TIMEOUT_MS }],
      [response({ case: "caughtUp", value: { cursor: "c3" } }), new ConnectError("bye", Code.Unauthenticated)],
    ],
    clock,
  );
  const states: FeedState[] = [];
  const events: string[] = [];
  const delays: number[] = [];
  const feed = new Feed(
    client,
    { onState: (state) => states.push(state), onEvent: (event) => events.push(event.id), onGap: () => {} },
    { random: () => 0.5, sleep: async (ms) => void delays.push(ms), setTimer: clock.setTimer },
  );
  await feed.start("t", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);

  assert.deepEqual(events, ["e1", "e2"]);
  assert.deepEqual(
    requests.map((request) => request.resumeAfter),
    ["", "c3", "c3"],
  );
  // A transient failure: the usual backoff, reset by the first stream's CaughtUp only.
  assert.deepEqual(delays, [500, 1000]);
  const dropped = states.filter((state) => state.state === "reconnecting");
  assert.deepEqual(
    dropped.map((state) => [state.error.code, state.error.rawMessage]),
    [
      [Code.DeadlineExceeded, "no message from the server for 45 s"],
      [Code.DeadlineExceeded, "no message from the server for 45 s"],
    ],
  );
  assert.ok(clock.armed.every((ms) => ms === IDLE_TIMEOUT_MS), String(clock.armed));
  assert.equal(clock.pending, 0, "no watchdog left armed once the loop ended");
  assert.equal(states.at(-1)?.state, "error");
});

test("a callback that throws is logged; the loop neither drops the next events nor reconnects", async (t) => {
  const logged = t.mock.method(console, "error", () => {});
  const { client, requests } = fakeClient([
    [
      response({ case: "caughtUp", value: { cursor: "c0" } }),
      eventResponse("e1", "c1"),
      eventResponse("e2", "c2"),
      response({ case: "gap", value: { fromCursor: "c2", toCursor: "c8", reason: 1 } }),
      eventResponse("e3", "c9"),
      new ConnectError("token expired", Code.Unauthenticated),
    ],
  ]);
  const states: FeedState[] = [];
  const events: string[] = [];
  let gaps = 0;
  const feed = new Feed(
    client,
    {
      onState: (state) => {
        states.push(state);
        if (state.state === "live") throw new Error("status rendering failed");
      },
      onEvent: (event) => {
        events.push(event.id);
        if (event.id === "e1") throw new RangeError("Invalid time value");
      },
      onGap: () => {
        gaps += 1;
        throw new Error("gap rendering failed");
      },
    },
    { sleep: async () => assert.fail("no reconnect expected") },
  );
  await feed.start("t", { eventTypes: [], deviceId: "", userId: "", adminFeed: false }, false);

  assert.deepEqual(events, ["e1", "e2", "e3"]);
  assert.equal(gaps, 1);
  assert.equal(requests.length, 1, "one subscription only");
  assert.equal(feed.cursor, "c9");
  assert.ok(!states.some((state) => state.state === "reconnecting"));
  const last = states.at(-1);
  assert.equal(last?.state === "error" ? last.error.code : undefined, Code.Unauthenticated);
  assert.equal(logged.mock.callCount(), 3);
});

test("a fresh start paints the newest history oldest first, then streams from its head", async () => {
  const { client: scripted, requests } = fakeClient([[response({ case: "caughtUp", value: { cursor: "c9" } })]]);
  const listed: Partial<ListEventsRequest>[] = [];
  let listFails = false;
  const client = Object.assign(Object.create(scripted) as object, {
    async listEvents(request: Partial<ListEventsRequest>) {
      listed.push(request);
      if (listFails) throw new ConnectError("down", Code.Unavailable);
      return create(ListEventsResponseSchema, {
        events: [
          { id: "e3", cursor: "c3", type: "app.installed" },
          { id: "e2", cursor: "c2", type: "app.installed" },
        ],
        headCursor: "c7",
      });
    },
  }) as unknown as Client<typeof NotificationService>;
  const shown: string[] = [];
  const feed = new Feed(client, { onState: () => {}, onEvent: (e) => shown.push(e.id), onGap: () => {} }, { history: 20 });
  const selection = { eventTypes: ["app.*"], deviceId: "d1", userId: "u1", adminFeed: false };
  await feed.start("t", selection, false);
  assert.deepEqual(shown, ["e2", "e3"]);
  assert.equal(listed[0]?.newestFirst, true);
  assert.equal(listed[0]?.limit, 20);
  assert.deepEqual([listed[0]?.userId, listed[0]?.deviceId, listed[0]?.eventTypes], ["u1", "d1", ["app.*"]]);
  assert.equal(requests[0]?.resumeAfter, "c7");
  // Resuming does not paint again; the admin feed has no history; a failed read starts at the head.
  await feed.start("t", selection, true);
  await feed.start("t", { ...selection, adminFeed: true }, false);
  assert.equal(listed.length, 1);
  listFails = true;
  await feed.start("t", selection, false);
  assert.equal(listed.length, 2);
  assert.equal(requests.at(-1)?.resumeAfter, "");
});

test("a Conflated moves the cursor to its upToCursor: the next attempt resumes after the skipped events", async () => {
  const { client, requests } = fakeClient([
    [
      response({ case: "caughtUp", value: { cursor: "c0" } }),
      eventResponse("e1", "c1"),
      // c2..c41 were superseded (by events at or after c42, which come after this).
      response({ case: "conflated", value: { skipped: 40n, upToCursor: "c41" } }),
      new ConnectError("connection reset", Code.Unavailable),
    ],
    [
      eventResponse("e42", "c42"),
      response({ case: "conflated", value: { skipped: 3n, upToCursor: "c45" } }),
      new ConnectError("bye", Code.PermissionDenied),
    ],
  ]);
  const conflated: { skipped: bigint; upToCursor: string; cursorThen: string }[] = [];
  const passedOn: string[] = [];
  const feed = new Feed(
    client,
    {
      onState: () => {},
      onEvent: () => {},
      onGap: () => assert.fail("a Conflated is no gap"),
      onConflated: (c: Conflated) => conflated.push({ skipped: c.skipped, upToCursor: c.upToCursor, cursorThen: feed.cursor }),
      onResponse: (r) => void passedOn.push(r.kind.case ?? "none"),
    },
    { sleep: async () => {} },
  );
  await feed.start("t", { eventTypes: [], deviceId: "", userId: "", adminFeed: false, conflate: true }, false);

  assert.deepEqual(
    requests.map((request) => request.resumeAfter),
    ["", "c41"],
    "resumed after the Conflated's cursor, not the last event's",
  );
  assert.deepEqual(conflated, [
    { skipped: 40n, upToCursor: "c41", cursorThen: "c41" },
    { skipped: 3n, upToCursor: "c45", cursorThen: "c45" },
  ]);
  assert.equal(feed.cursor, "c45");
  // Passed on like every other message (a tab holding a shared stream re-broadcasts it).
  assert.deepEqual(passedOn, ["caughtUp", "event", "conflated", "event", "conflated"]);
});

/**
 * A real client over an in-process transport: each Subscribe request is encoded and decoded as
 * over the wire and kept in `received`; the stream says CaughtUp, then refuses (ending the feed).
 */
function routedClient() {
  const received: { conflate: boolean; maxEventsPerSecond: number; eventTypes: string[] }[] = [];
  const transport = createRouterTransport(({ service }) => {
    service(NotificationService, {
      async *subscribe(request) {
        received.push({
          conflate: request.conflate,
          maxEventsPerSecond: request.maxEventsPerSecond,
          eventTypes: request.eventTypes,
        });
        yield { kind: { case: "caughtUp", value: { cursor: "c0" } } };
        throw new ConnectError("enough", Code.PermissionDenied);
      },
    });
  });
  return { client: createClient(NotificationService, transport), received };
}

test("the selection's conflate and maxEventsPerSecond reach the server's SubscribeRequest", async () => {
  const { client, received } = routedClient();
  const states: FeedState[] = [];
  const feed = new Feed(client, { onState: (s) => states.push(s), onEvent: () => {}, onGap: () => {} });
  const all = { eventTypes: ["quota.*"], deviceId: "", userId: "", adminFeed: false };
  await feed.start("t", { ...all, conflate: true, maxEventsPerSecond: 25 }, false);
  await feed.start("t", all, false);
  assert.deepEqual(received, [
    { conflate: true, maxEventsPerSecond: 25, eventTypes: ["quota.*"] },
    // Without them: every event, as fast as it comes.
    { conflate: false, maxEventsPerSecond: 0, eventTypes: ["quota.*"] },
  ]);
  assert.ok(states.some((s) => s.state === "live"));
});

test("a maxEventsPerSecond that is not a uint32 stops the feed at once instead of retrying forever", async () => {
  const { client, received } = routedClient();
  for (const rate of [2.5, -1, 2 ** 32, Number.NaN]) {
    const states: FeedState[] = [];
    const feed = new Feed(
      client,
      { onState: (s) => states.push(s), onEvent: () => {}, onGap: () => {} },
      { sleep: async () => assert.fail("no retry expected") },
    );
    await feed.start("t", { eventTypes: [], deviceId: "", userId: "", adminFeed: false, maxEventsPerSecond: rate }, false);
    const last = states.at(-1);
    assert.equal(last?.state === "error" ? last.error.code : undefined, Code.InvalidArgument, String(rate));
  }
  assert.equal(received.length, 0, "nothing sent");
});
