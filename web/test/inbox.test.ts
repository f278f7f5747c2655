// The inbox's state holders against an in-memory server: pages newest first, updates from the
// stream (new items, marks by ids, up to a cursor and all, STATE replacing the counts), optimistic
// marks shown at once and taken back when the server refuses them.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  InboxFamily,
  InboxFilter,
  InboxItemSchema,
  InboxList,
  InboxMark,
  InboxState,
  InboxUpdateReason,
  InboxUpdateSchema,
  InboxApi,
  TokenCache,
  countsAfterMark,
  emptyCounts,
  inInboxList,
  markItems,
  mergeNewestPage,
  type InboxCounts,
  type InboxItem,
  type InboxUpdate,
  type MarkSpec,
  type NotificationClient,
} from "@notify-backbone/client";

const FAMILY_OF: Record<string, InboxFamily> = {
  quota: InboxFamily.QUOTA,
  billing: InboxFamily.BILLING,
  app: InboxFamily.APP,
  device: InboxFamily.DEVICE,
};

/** An item `id` of type `type`, its cursor `c-<id>`. */
function item(id: string, type: string, state: Partial<Pick<InboxItem, "seen" | "read" | "archived">> = {}): InboxItem {
  return create(InboxItemSchema, {
    event: { id, cursor: `c-${id}`, type },
    family: FAMILY_OF[type.split(".")[0] ?? ""] ?? InboxFamily.UNSPECIFIED,
    ...state,
  });
}

function countsOf(items: readonly InboxItem[]): InboxCounts {
  const counts = emptyCounts();
  for (const i of items) {
    if (i.archived) continue;
    const f = counts.families.find((entry) => entry.family === i.family);
    counts.total += 1n;
    if (f) f.total += 1n;
    if (!i.read) {
      counts.unread += 1n;
      if (f) f.unread += 1n;
    }
    if (!i.seen) {
      counts.unseen += 1n;
      if (f) f.unseen += 1n;
    }
  }
  return counts;
}

/** A gate a test opens: a call waits at it until then. */
function gate() {
  let open = (): void => {};
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

/**
 * An inbox server in memory: its items newest first; pages continue before an item's cursor.
 * `holdMarks` makes each MarkInbox wait for the test; `refuseMarks` makes them fail.
 */
class FakeServer {
  items: InboxItem[];
  calls: string[] = [];
  holdMarks: ReturnType<typeof gate>[] | undefined;
  refuseMarks: ConnectError | undefined;

  constructor(items: InboxItem[]) {
    this.items = items;
  }

  get counts(): InboxCounts {
    return countsOf(this.items);
  }

  client(token = "t"): NotificationClient {
    const server = this;
    const client = {
      async listInbox(request: { filter: InboxFilter; families: InboxFamily[]; before: string; limit: number }) {
        server.calls.push(`list ${request.before}`);
        const matching = server.items.filter((i) => inInboxList(i, request.filter, request.families));
        const from = request.before === "" ? 0 : matching.findIndex((i) => i.event?.cursor === request.before) + 1;
        const limit = request.limit || 20;
        const items = matching.slice(from, from + limit);
        const end = from + limit >= matching.length;
        return { items, nextBefore: items.at(-1)?.event?.cursor ?? "", end, counts: server.counts, headCursor: "h" };
      },
      async getInboxCounts() {
        server.calls.push("counts");
        return { counts: server.counts };
      },
      async markInbox(
        request: { mark: InboxMark; ids: string[]; upToCursor: string; all: boolean },
        options?: { headers?: Record<string, string> },
      ) {
        server.calls.push(`mark ${InboxMark[request.mark]} ${request.ids.join(",")} ${options?.headers?.authorization}`);
        const held = server.holdMarks?.shift();
        if (held !== undefined) await held.opened;
        if (server.refuseMarks !== undefined) throw server.refuseMarks;
        const before = server.items;
        server.items = [...markItems(server.items, request).items];
        const changed = server.items.filter((i, n) => i !== before[n]).length;
        const known = new Set(before.map((i) => i.event?.id));
        return { counts: server.counts, changed, unknownIds: request.ids.filter((id) => !known.has(id)) };
      },
    };
    void token;
    return client as unknown as NotificationClient;
  }

  /** The update the server sends for `spec` (after applying it, as another tab's mark). */
  markElsewhere(spec: MarkSpec): InboxUpdate {
    this.items = [...markItems(this.items, spec).items];
    return update(InboxUpdateReason.MARKED, this.counts, spec);
  }
}

function update(reason: InboxUpdateReason, counts: InboxCounts, spec: Partial<MarkSpec> = {}): InboxUpdate {
  return create(InboxUpdateSchema, {
    reason,
    counts,
    mark: spec.mark ?? InboxMark.UNSPECIFIED,
    ids: [...(spec.ids ?? [])],
    upToCursor: spec.upToCursor ?? "",
    all: spec.all ?? false,
  });
}

function setUp(items: InboxItem[], options: { pageSize?: number; filter?: InboxFilter } = {}) {
  const server = new FakeServer(items);
  const state = new InboxState(new InboxApi(server.client(), new TokenCache(() => "t")));
  state.streamState({ state: "live" });
  const list = new InboxList(state, options);
  const ids = () => list.snapshot.items.map((i) => i.event?.id);
  const flags = (id: string) => {
    const i = list.snapshot.items.find((x) => x.event?.id === id);
    return i === undefined ? "absent" : `${i.seen ? "S" : "-"}${i.read ? "R" : "-"}${i.archived ? "A" : "-"}`;
  };
  const unread = () => list.snapshot.counts?.unread;
  return { server, state, list, ids, flags, unread };
}

/** Waits until `ready()` holds, turning the event loop (no clock involved). */
async function until(ready: () => boolean, what: string): Promise<void> {
  for (let turn = 0; turn < 1000; turn++) {
    if (ready()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never: ${what}`);
}

const five = () => [
  item("e5", "billing.payment_success"),
  item("e4", "device.error"),
  item("e3", "quota.alert", { seen: true }),
  item("e2", "app.installed", { seen: true, read: true }),
  item("e1", "billing.low_balance"),
];

test("a list reads page by page, newest first, with the inbox's counts", async () => {
  const { list, ids, server } = setUp(five(), { pageSize: 2 });
  await list.fetchNextPage();
  assert.deepEqual(ids(), ["e5", "e4"]);
  assert.equal(list.snapshot.end, false);
  assert.equal(list.snapshot.counts?.unread, 4n);
  assert.equal(list.snapshot.counts?.families.find((f) => f.family === InboxFamily.BILLING)?.unread, 2n);
  await list.fetchNextPage();
  await list.fetchNextPage();
  assert.deepEqual(ids(), ["e5", "e4", "e3", "e2", "e1"]);
  assert.equal(list.snapshot.end, true);
  await list.fetchNextPage();
  assert.deepEqual(server.calls, ["list ", "list c-e4", "list c-e2"], "nothing read past the end");
});

test("marks made elsewhere change the items in place: by ids, up to a cursor, all", async () => {
  const { list, state, server, flags, unread } = setUp(five());
  await list.load();
  state.receive(server.markElsewhere({ mark: InboxMark.READ, ids: ["e4"] }));
  assert.equal(flags("e4"), "SR-");
  assert.equal(unread(), 3n);
  state.receive(server.markElsewhere({ mark: InboxMark.SEEN, upToCursor: "c-e3" }));
  assert.equal(flags("e3"), "S--");
  assert.equal(flags("e1"), "S--", "older than the cursor");
  assert.equal(flags("e5"), "---", "newer than the cursor");
  state.receive(server.markElsewhere({ mark: InboxMark.UNREAD, ids: ["e2"] }));
  assert.equal(flags("e2"), "S--");
  state.receive(server.markElsewhere({ mark: InboxMark.READ, all: true }));
  for (const id of ["e1", "e2", "e3", "e4", "e5"]) assert.equal(flags(id), "SR-", id);
  assert.equal(unread(), 0n);
  state.receive(server.markElsewhere({ mark: InboxMark.ARCHIVED, ids: ["e3"] }));
  assert.equal(flags("e3"), "absent", "an archived item leaves the inbox");
  assert.equal(list.snapshot.counts?.total, 4n);
  assert.deepEqual(server.calls, ["list "], "nothing read again");
});

test("a mark whose place or items the list does not hold reads it again", async () => {
  const { list, state, server, ids } = setUp(five(), { pageSize: 2 });
  await list.fetchNextPage();
  // Up to a cursor this list does not hold (an older page's): where it falls is unknown.
  state.receive(server.markElsewhere({ mark: InboxMark.READ, upToCursor: "c-e1" }));
  await until(() => server.calls.length === 2, "read again");
  // Unarchived elsewhere: it comes back into a list of items not archived.
  server.items = [...markItems(server.items, { mark: InboxMark.ARCHIVED, ids: ["e5"] }).items];
  await list.load();
  assert.deepEqual(ids(), ["e4", "e3"]);
  state.receive(server.markElsewhere({ mark: InboxMark.UNARCHIVED, ids: ["e5"] }));
  await until(() => ids()[0] === "e5", "the unarchived item shown");
  assert.deepEqual(ids(), ["e5", "e4"]);
});

test("new items read the newest page again, in front of the pages loaded", async () => {
  const { list, state, server, ids } = setUp(five(), { pageSize: 2 });
  await list.fetchNextPage();
  await list.fetchNextPage();
  assert.deepEqual(ids(), ["e5", "e4", "e3", "e2"]);
  server.items = [item("e6", "device.error"), ...server.items];
  state.receive(update(InboxUpdateReason.NEW_ITEMS, server.counts, { ids: ["e6"] }));
  await until(() => ids()[0] === "e6", "the new item");
  assert.deepEqual(ids(), ["e6", "e5", "e4", "e3", "e2"]);
  assert.equal(list.snapshot.counts?.unread, 5n);
  // More new items than a page: only the newest page stays (the rest is read on scrolling).
  server.items = [item("e9", "app.updated"), item("e8", "app.updated"), item("e7", "app.updated"), ...server.items];
  state.receive(update(InboxUpdateReason.NEW_ITEMS, server.counts, { ids: ["e7", "e8", "e9"] }));
  await until(() => ids()[0] === "e9", "the newest items");
  assert.deepEqual(ids(), ["e9", "e8"]);
  await list.fetchNextPage();
  assert.deepEqual(ids(), ["e9", "e8", "e7", "e6"]);
});

test("STATE replaces the counts; other counts than known read the list again", async () => {
  const { list, state, server, unread } = setUp(five());
  await list.load();
  state.receive(update(InboxUpdateReason.STATE, server.counts));
  assert.equal(unread(), 4n);
  assert.deepEqual(server.calls, ["list "], "the same counts: nothing to read");
  // While this tab was away, another device read everything.
  server.items = [...markItems(server.items, { mark: InboxMark.READ, all: true }).items];
  state.receive(update(InboxUpdateReason.STATE, server.counts));
  assert.equal(unread(), 0n, "the counts at once");
  await until(() => server.calls.length === 2, "read again");
  await until(() => list.snapshot.items.every((i) => i.read), "the items read");
  // Counts are absolute: the latest wins, whatever it says.
  state.receive(update(InboxUpdateReason.STATE, countsOf([item("x", "app.updated")])));
  assert.equal(unread(), 1n);
});

test("a mark shows at once and is taken back when the server refuses it", async () => {
  const { list, server, flags, unread } = setUp(five());
  await list.load();
  const held = gate();
  server.holdMarks = [held];
  server.refuseMarks = new ConnectError("no", Code.PermissionDenied);
  const marking = list.markRead(["e5", "e4"]);
  assert.equal(flags("e5"), "SR-", "at once");
  assert.equal(flags("e4"), "SR-");
  assert.equal(unread(), 2n);
  assert.equal(list.snapshot.counts?.families.find((f) => f.family === InboxFamily.BILLING)?.unread, 1n);
  held.open();
  await assert.rejects(marking, /no/);
  assert.equal(flags("e5"), "---", "taken back");
  assert.equal(flags("e4"), "---");
  assert.equal(unread(), 4n);

  server.refuseMarks = undefined;
  const archived = list.archive(["e1"]);
  assert.equal(flags("e1"), "absent", "archived: out of the list at once");
  assert.equal(list.snapshot.counts?.total, 4n);
  const answer = await archived;
  assert.equal(answer.changed, 1);
  assert.equal(flags("e1"), "absent", "and stays out once stored");
  assert.equal(list.snapshot.counts?.total, 4n);
  assert.equal(list.snapshot.counts?.unread, 3n);
});

test("the answer's counts count when no update came meanwhile; otherwise the mark's own update does", async () => {
  const { list, state, server, flags, unread } = setUp(five());
  await list.load();
  // No update during the call: the answer's counts are the newest.
  await list.markRead(["e5"]);
  assert.equal(unread(), 3n);
  assert.equal(flags("e5"), "SR-");

  // An update arrives during the call (older than the mark): the mark stays shown on top of it
  // until its own update comes.
  const held = gate();
  server.holdMarks = [held];
  const marking = list.markRead(["e4"]);
  assert.equal(unread(), 2n);
  server.items = [item("e6", "device.error"), ...server.items];
  state.receive(update(InboxUpdateReason.NEW_ITEMS, server.counts, { ids: ["e6"] }));
  assert.equal(unread(), 3n, "e6 counted, e4 still shown read");
  held.open();
  await marking;
  assert.equal(unread(), 3n, "the answer's counts are not the newest: not taken");
  assert.equal(flags("e4"), "SR-");
  state.receive(update(InboxUpdateReason.MARKED, server.counts, { mark: InboxMark.READ, ids: ["e4"] }));
  assert.equal(unread(), 3n, "the mark's own update: the server's counts, nothing on top");
  assert.equal(state.snapshot.marks.length, 0);

  // Its update may even come before the answer.
  const early = gate();
  server.holdMarks = [early];
  const marking2 = list.markAllRead();
  assert.equal(unread(), 0n);
  await until(() => server.calls.some((c) => c.startsWith("mark READ  ")), "the call made");
  server.items = [...markItems(server.items, { mark: InboxMark.READ, all: true }).items];
  state.receive(update(InboxUpdateReason.MARKED, server.counts, { mark: InboxMark.READ, all: true }));
  assert.equal(state.snapshot.marks.length, 0, "its update came: nothing in flight to show");
  early.open();
  await marking2;
  assert.equal(unread(), 0n);
});

test("counts read while an update arrived are older than it and not taken", async () => {
  const server = new FakeServer(five());
  const state = new InboxState(new InboxApi(server.client(), new TokenCache(() => "t")));
  const loading = state.loadCounts();
  state.receive(update(InboxUpdateReason.STATE, countsOf([])));
  await loading;
  assert.equal(state.counts?.unread, 0n, "the update's counts stay");
  await state.loadCounts();
  assert.equal(state.counts?.unread, 4n);
  // The other inbox's updates are not this one's.
  const admin = create(InboxUpdateSchema, { adminInbox: true, reason: InboxUpdateReason.STATE, counts: countsOf([]) });
  state.receive(admin);
  assert.equal(state.counts?.unread, 4n);
});

test("the plain functions: marks, filters, counts after a mark, merging the newest page", () => {
  const items = five();
  const up = markItems(items, { mark: InboxMark.READ, upToCursor: "c-e4" });
  assert.ok(up.placed);
  assert.deepEqual(
    up.items.map((i) => i.read),
    [false, true, true, true, true],
  );
  assert.equal(up.items[0], items[0], "items the mark does not touch keep their identity");
  assert.equal(markItems(items, { mark: InboxMark.READ, upToCursor: "c-zz" }).placed, false);
  assert.deepEqual(markItems(items, { mark: InboxMark.READ, ids: ["e1", "nope"] }).missing, ["nope"]);
  assert.equal(markItems(items, { mark: InboxMark.SEEN, ids: ["e3"] }).items, items, "already seen: the same array");
  assert.deepEqual(
    items.filter((i) => inInboxList(i, InboxFilter.UNREAD, [InboxFamily.BILLING])).map((i) => i.event?.id),
    ["e5", "e1"],
  );
  const counts = countsOf(items);
  const after = countsAfterMark(counts, { mark: InboxMark.ARCHIVED, ids: ["e5", "e2"] }, items);
  assert.deepEqual([after.total, after.unread, after.unseen], [3n, 3n, 2n]);
  assert.equal(after.families.find((f) => f.family === InboxFamily.APP)?.total, 0n);
  const seen = countsAfterMark(counts, { mark: InboxMark.SEEN, all: true }, []);
  assert.deepEqual([seen.unread, seen.unseen], [4n, 0n]);

  const ours = { items: items.slice(0, 2), nextBefore: "c-e4", end: false };
  const page = { items: [item("e6", "app.updated"), ...items.slice(0, 1)], nextBefore: "c-e5", end: false, headCursor: "" };
  const merged = mergeNewestPage(ours, page as never);
  assert.deepEqual(
    merged.items.map((i) => i.event?.id),
    ["e6", "e5", "e4"],
  );
  assert.equal(merged.nextBefore, "c-e4");
});
