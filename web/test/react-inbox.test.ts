// The inbox's React Query cache without React: what each in-band change does to a cached list
// (items changed in place across pages, lists read again when the change may add items they do
// not hold), and the query keys.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { QueryClient, type InfiniteData } from "@tanstack/react-query";
import {
  InboxFamily,
  InboxFilter,
  InboxItemSchema,
  InboxMark,
  InboxUpdateReason,
  InboxUpdateSchema,
  ListInboxResponseSchema,
  emptyCounts,
  type InboxChange,
  type InboxItem,
  type ListInboxResponse,
} from "@notify-backbone/client";
import { applyInboxChange, inboxCountsKey, inboxListKey } from "@notify-backbone/react";

const item = (id: string): InboxItem =>
  create(InboxItemSchema, { event: { id, cursor: `c-${id}`, type: "device.error" }, family: InboxFamily.DEVICE });

function cached(filter = InboxFilter.UNSPECIFIED) {
  const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
  const key = inboxListKey({ filter });
  const pages = [
    create(ListInboxResponseSchema, { items: [item("e4"), item("e3")], nextBefore: "c-e3" }),
    create(ListInboxResponseSchema, { items: [item("e2"), item("e1")], end: true }),
  ];
  client.setQueryData<InfiniteData<ListInboxResponse, string>>(key, { pages, pageParams: ["", "c-e3"] });
  const data = () => client.getQueryData<InfiniteData<ListInboxResponse, string>>(key);
  const flags = () =>
    data()
      ?.pages.flatMap((page) => page.items)
      .map((i) => `${i.event?.id}:${i.read ? "R" : "-"}${i.archived ? "A" : "-"}`)
      .join(" ");
  const invalidated = () => client.getQueryCache().find({ queryKey: key, exact: true })?.state.isInvalidated ?? false;
  return { client, key, pages, data, flags, invalidated };
}

function change(reason: InboxUpdateReason, spec: { mark?: InboxMark; ids?: string[]; upToCursor?: string; all?: boolean } = {}, previous = emptyCounts()): InboxChange {
  return {
    update: create(InboxUpdateSchema, { reason, counts: emptyCounts(), ...spec }),
    previous,
    local: false,
  };
}

test("a mark changes the cached pages in place; up to a cursor, across pages", () => {
  const { client, key, pages, data, flags, invalidated } = cached();
  applyInboxChange(client, key, InboxFilter.UNSPECIFIED, change(InboxUpdateReason.MARKED, { mark: InboxMark.READ, ids: ["e3"] }));
  assert.equal(flags(), "e4:-- e3:R- e2:-- e1:--");
  assert.equal(data()?.pages[1], pages[1], "an untouched page keeps its identity");
  applyInboxChange(
    client,
    key,
    InboxFilter.UNSPECIFIED,
    change(InboxUpdateReason.MARKED, { mark: InboxMark.READ, upToCursor: "c-e3" }),
  );
  assert.equal(flags(), "e4:-- e3:R- e2:R- e1:R-");
  applyInboxChange(client, key, InboxFilter.UNSPECIFIED, change(InboxUpdateReason.MARKED, { mark: InboxMark.ARCHIVED, ids: ["e4"] }));
  assert.equal(flags(), "e4:-A e3:R- e2:R- e1:R-", "kept in the cache; the hook filters it out");
  assert.equal(invalidated(), false, "nothing read again");
  applyInboxChange(client, key, InboxFilter.UNSPECIFIED, change(InboxUpdateReason.MARKED, { mark: InboxMark.READ, all: true }));
  assert.equal(flags(), "e4:RA e3:R- e2:R- e1:R-");
});

test("what the list may not hold reads it again: new items, an unknown cursor, an unarchived item, preferences, other counts", () => {
  const cases: [string, InboxFilter, InboxChange, boolean][] = [
    ["new items", InboxFilter.UNSPECIFIED, change(InboxUpdateReason.NEW_ITEMS, { ids: ["e5"] }), true],
    ["an unknown cursor", InboxFilter.UNSPECIFIED, change(InboxUpdateReason.MARKED, { mark: InboxMark.SEEN, upToCursor: "c-x" }), true],
    ["unarchived elsewhere", InboxFilter.UNSPECIFIED, change(InboxUpdateReason.MARKED, { mark: InboxMark.UNARCHIVED, ids: ["e9"] }), true],
    ["archived elsewhere, into the archive list", InboxFilter.ARCHIVED, change(InboxUpdateReason.MARKED, { mark: InboxMark.ARCHIVED, ids: ["e9"] }), true],
    ["read elsewhere: nothing to add to the unread list", InboxFilter.UNREAD, change(InboxUpdateReason.MARKED, { mark: InboxMark.READ, ids: ["e9"] }), false],
    ["preferences", InboxFilter.UNSPECIFIED, change(InboxUpdateReason.PREFERENCES), true],
    ["the same counts as known", InboxFilter.UNSPECIFIED, change(InboxUpdateReason.STATE), false],
    ["other counts than known", InboxFilter.UNSPECIFIED, change(InboxUpdateReason.STATE, {}, { ...emptyCounts(), unread: 3n }), true],
  ];
  for (const [what, filter, c, reread] of cases) {
    const { client, key, invalidated } = cached(filter);
    applyInboxChange(client, key, filter, c);
    assert.equal(invalidated(), reread, what);
  }
});

test("keys: per inbox, filter, families (in any order) and page size", () => {
  assert.deepEqual(inboxCountsKey(), ["notify-backbone", "inbox", "user", "counts"]);
  assert.deepEqual(inboxCountsKey(true), ["notify-backbone", "inbox", "admin", "counts"]);
  assert.deepEqual(
    inboxListKey({ families: [InboxFamily.DEVICE, InboxFamily.BILLING] }),
    inboxListKey({ families: [InboxFamily.BILLING, InboxFamily.DEVICE], pageSize: 20 }),
  );
  assert.notDeepEqual(inboxListKey({ filter: InboxFilter.UNREAD }), inboxListKey());
});
