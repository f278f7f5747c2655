// The reconnect loop against a scripted fake client: backoff, resume by cursor, no retry of a
// refused token.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  SubscribeResponseSchema,
  type NotificationService,
  type SubscribeRequest,
  type SubscribeResponse,
} from "../src/gen/cloudphone/notify/v1/service_pb";
import { BACKOFF, Feed, backoffDelay, isTransient, type FeedState } from "../src/feed";

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

type Step = SubscribeResponse | ConnectError;

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
 * the script has no error); calls beyond the scripts fail with `Unauthenticated`. */
function fakeClient(scripts: Step[][]) {
  const requests: Partial<SubscribeRequest>[] = [];
  const client = {
    subscribe(request: Partial<SubscribeRequest>) {
      requests.push(request);
      const script = scripts[requests.length - 1] ?? [new ConnectError("stop", Code.Unauthenticated)];
      return (async function* () {
        for (const step of script) {
          if (step instanceof ConnectError) throw step;
          yield step;
        }
      })();
    },
  };
  return { client: client as unknown as Client<typeof NotificationService>, requests };
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
