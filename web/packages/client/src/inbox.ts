// The inbox on the client: its calls (pages newest first, counts, marks, preferences), what a mark
// does to items and counts (plain functions, for any cache: React Query's, or `InboxList`'s), and
// the state holders kept current by the in-band `InboxUpdate`s of the stream.
//
// `InboxState` is one inbox of one tab (the user's, or an admin's admin inbox): the counts the
// server last gave and the marks in flight, applied optimistically on top until the server has
// them (or taken back when it refuses). `InboxList` is one list of that inbox's items (a filter,
// some families), page by page, on top of an `InboxState`, so every list and badge of the tab
// shows a mark at once. Neither opens a stream: `Notifications` passes them the stream's updates.
//
// Counts carry no version: the latest update wins. A call's answer (a page's counts, `MarkInbox`'s)
// was read at some moment during the call, and may be older than an update received meanwhile, or
// than another call's answer, or hold a mark still shown as in flight (and so count it twice):
// an answer is taken only when the counts did not change while it was under way and no other mark
// is in flight. The stream's updates are in the order the server stored things, so they always are.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import {
  InboxCountsSchema,
  InboxFamily,
  InboxFilter,
  InboxMark,
  InboxUpdateReason,
  InboxUpdateSchema,
  type InboxCounts,
  type InboxItem,
  type InboxUpdate,
  type ListInboxResponse,
  type MarkInboxResponse,
  PreferencesSchema,
  type Preferences,
} from "./gen/cloudphone/notify/v1/inbox_pb.js";
import type { NotificationService } from "./gen/cloudphone/notify/v1/service_pb.js";
import type { FeedState } from "./feed.js";
import { withToken, type TokenCache } from "./tokens.js";

/** Which items a mark changes: `ids`, or (`SEEN` and `READ` only) `upToCursor` or `all`. */
export interface MarkSpec {
  mark: InboxMark;
  /** Event ids (`Event.id`), at most 100. */
  ids?: readonly string[];
  /** Every item at or before this cursor (an item's `event.cursor`). */
  upToCursor?: string;
  /** Every item. */
  all?: boolean;
}

/** The marks a console uses, as `MarkSpec`s. */
export const inboxMarks = {
  read: (ids: readonly string[]): MarkSpec => ({ mark: InboxMark.READ, ids }),
  allRead: (): MarkSpec => ({ mark: InboxMark.READ, all: true }),
  readUpTo: (cursor: string): MarkSpec => ({ mark: InboxMark.READ, upToCursor: cursor }),
  seen: (ids: readonly string[]): MarkSpec => ({ mark: InboxMark.SEEN, ids }),
  allSeen: (): MarkSpec => ({ mark: InboxMark.SEEN, all: true }),
  seenUpTo: (cursor: string): MarkSpec => ({ mark: InboxMark.SEEN, upToCursor: cursor }),
  unread: (ids: readonly string[]): MarkSpec => ({ mark: InboxMark.UNREAD, ids }),
  archive: (ids: readonly string[]): MarkSpec => ({ mark: InboxMark.ARCHIVED, ids }),
  unarchive: (ids: readonly string[]): MarkSpec => ({ mark: InboxMark.UNARCHIVED, ids }),
} as const;

/** A page request; every field is optional. */
export interface InboxPageRequest {
  /** The admin inbox (the admin feed's notices) instead of the user's events: admin tokens only. */
  adminInbox?: boolean;
  /** Another user's inbox, read only: admin tokens only. */
  userId?: string;
  /** Which items (default: every item not archived). */
  filter?: InboxFilter;
  /** Only these families (default: all). */
  families?: readonly InboxFamily[];
  /** The previous page's `nextBefore`: continue with older items. */
  before?: string;
  /** At most this many items (server default 20, at most 100). */
  limit?: number;
}

type ServiceClient = Client<typeof NotificationService>;

/** Preferences as an app writes them (plain objects; `criticalTypes` is the server's). */
export type PreferencesInit = MessageInitShape<typeof PreferencesSchema>;

/** `init` as a `Preferences` message (defaults filled in), e.g. to show it before it is stored. */
export function preferencesFrom(init: PreferencesInit): Preferences {
  return create(PreferencesSchema, init);
}

/** The inbox's calls, each with the tab's token (replaced once when the server says it expired). */
export class InboxApi {
  constructor(
    readonly client: ServiceClient,
    readonly tokens: TokenCache,
  ) {}

  /** A page of an inbox, newest first, with the inbox's counts. */
  list(request: InboxPageRequest = {}, signal?: AbortSignal): Promise<ListInboxResponse> {
    const message = {
      adminInbox: request.adminInbox ?? false,
      userId: request.userId ?? "",
      filter: request.filter ?? InboxFilter.UNSPECIFIED,
      families: [...(request.families ?? [])],
      before: request.before ?? "",
      limit: request.limit ?? 0,
    };
    return withToken(this.tokens, (headers) => this.client.listInbox(message, { headers, signal }));
  }

  /** The exact counts of an inbox, in total and per family. */
  async counts(request: { adminInbox?: boolean; userId?: string } = {}, signal?: AbortSignal): Promise<InboxCounts> {
    const message = { adminInbox: request.adminInbox ?? false, userId: request.userId ?? "" };
    const response = await withToken(this.tokens, (headers) => this.client.getInboxCounts(message, { headers, signal }));
    return response.counts ?? emptyCounts();
  }

  /** Marks items of the caller's own inbox (or admin inbox); returns the counts right after. */
  mark(spec: MarkSpec, options: { adminInbox?: boolean } = {}): Promise<MarkInboxResponse> {
    const message = {
      adminInbox: options.adminInbox ?? false,
      mark: spec.mark,
      ids: [...(spec.ids ?? [])],
      upToCursor: spec.upToCursor ?? "",
      all: spec.all ?? false,
    };
    return withToken(this.tokens, (headers) => this.client.markInbox(message, { headers }));
  }

  /** The caller's preferences (or another user's, with an admin token); defaults when never set. */
  async preferences(request: { userId?: string } = {}, signal?: AbortSignal): Promise<Preferences> {
    const message = { userId: request.userId ?? "" };
    const response = await withToken(this.tokens, (headers) => this.client.getPreferences(message, { headers, signal }));
    return response.preferences ?? emptyPreferences();
  }

  /** Replaces the caller's preferences (`criticalTypes` is ignored); returns them as stored. */
  async setPreferences(preferences: PreferencesInit): Promise<Preferences> {
    const response = await withToken(this.tokens, (headers) =>
      this.client.setPreferences({ preferences }, { headers }),
    );
    return response.preferences ?? emptyPreferences();
  }
}

function emptyPreferences(): Preferences {
  return create(PreferencesSchema);
}

/** Counts of an empty inbox, with the per-family entries the server sends. */
export function emptyCounts(): InboxCounts {
  return create(InboxCountsSchema, {
    families: [InboxFamily.QUOTA, InboxFamily.BILLING, InboxFamily.APP, InboxFamily.DEVICE].map((family) => ({ family })),
  });
}

/** A family's name as in event types (`InboxFamily.BILLING` → `"billing"`); `""` for none. */
export function inboxFamilyName(family: InboxFamily): string {
  return family === InboxFamily.UNSPECIFIED ? "" : (InboxFamily[family]?.toLowerCase() ?? "");
}

/** Whether two counts are the same, families included. */
export function sameCounts(a: InboxCounts | undefined, b: InboxCounts | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (a.total !== b.total || a.unread !== b.unread || a.unseen !== b.unseen) return false;
  if (a.families.length !== b.families.length) return false;
  return a.families.every((f, n) => {
    const g = b.families[n];
    return g !== undefined && f.family === g.family && f.total === g.total && f.unread === g.unread && f.unseen === g.unseen;
  });
}

/** `item` after `mark`: the same object when the mark changes nothing. */
export function markItem(item: InboxItem, mark: InboxMark): InboxItem {
  switch (mark) {
    case InboxMark.SEEN:
      return item.seen ? item : { ...item, seen: true };
    case InboxMark.READ:
      return item.read && item.seen ? item : { ...item, read: true, seen: true };
    case InboxMark.UNREAD:
      return item.read ? { ...item, read: false } : item;
    case InboxMark.ARCHIVED:
      return item.archived ? item : { ...item, archived: true };
    case InboxMark.UNARCHIVED:
      return item.archived ? { ...item, archived: false } : item;
    default:
      return item;
  }
}

/** What `markItems` did. */
export interface MarkedItems {
  /** The items after the mark; the same array when nothing changed. */
  items: readonly InboxItem[];
  /**
   * False when the mark's position among these items is unknown: `upToCursor` is no item's
   * cursor here (cursors are opaque: they are never compared, only found).
   */
  placed: boolean;
  /** The ids of a mark by ids that are not among these items. */
  missing: readonly string[];
}

/**
 * `items` (newest first, as lists hold them) after a mark. By `upToCursor`: the item with that
 * cursor and every item after it in the list.
 */
export function markItems(items: readonly InboxItem[], spec: MarkSpec): MarkedItems {
  const ids = spec.ids ?? [];
  let from = items.length;
  let placed = true;
  let missing: readonly string[] = [];
  let covered: (item: InboxItem, index: number) => boolean;
  if (spec.all === true) {
    from = 0;
    covered = () => true;
  } else if (spec.upToCursor !== undefined && spec.upToCursor !== "") {
    from = items.findIndex((item) => item.event?.cursor === spec.upToCursor);
    placed = from >= 0;
    if (!placed) from = items.length;
    covered = (_item, index) => index >= from;
  } else {
    const wanted = new Set(ids);
    const present = new Set(items.map((item) => item.event?.id ?? ""));
    missing = ids.filter((id) => !present.has(id));
    covered = (item) => wanted.has(item.event?.id ?? "");
  }
  let changed = false;
  const marked = items.map((item, index) => {
    if (!covered(item, index)) return item;
    const after = markItem(item, spec.mark);
    if (after !== item) changed = true;
    return after;
  });
  return { items: changed ? marked : items, placed, missing };
}

/** Whether `item` belongs in a list of `filter` and `families` (empty: every family). */
export function inInboxList(item: InboxItem, filter: InboxFilter, families: readonly InboxFamily[] = []): boolean {
  if (families.length > 0 && !families.includes(item.family)) return false;
  switch (filter) {
    case InboxFilter.UNREAD:
      return !item.archived && !item.read;
    case InboxFilter.UNSEEN:
      return !item.archived && !item.seen;
    case InboxFilter.READ:
      return !item.archived && item.read;
    case InboxFilter.ARCHIVED:
      return item.archived;
    case InboxFilter.ALL:
      return true;
    default:
      return !item.archived;
  }
}

/**
 * Whether a mark made elsewhere may bring items that a list of `filter` does not hold into it
 * (so the list must be read again to show them): an unarchived item comes back into every list
 * of items not archived, an item marked unread into the unread list, and so on.
 */
export function markMayAddTo(filter: InboxFilter, mark: InboxMark): boolean {
  switch (filter) {
    case InboxFilter.UNSPECIFIED:
    case InboxFilter.UNSEEN:
      return mark === InboxMark.UNARCHIVED;
    case InboxFilter.UNREAD:
      return mark === InboxMark.UNARCHIVED || mark === InboxMark.UNREAD;
    case InboxFilter.READ:
      return mark === InboxMark.UNARCHIVED || mark === InboxMark.READ;
    case InboxFilter.ARCHIVED:
      return mark === InboxMark.ARCHIVED;
    default:
      return false;
  }
}

type Tally = { total: bigint; unread: bigint; unseen: bigint };

function tally(item: InboxItem): Tally {
  if (item.archived) return { total: 0n, unread: 0n, unseen: 0n };
  return { total: 1n, unread: item.read ? 0n : 1n, unseen: item.seen ? 0n : 1n };
}

const clamp = (n: bigint): bigint => (n < 0n ? 0n : n);

/**
 * What the counts become after a mark, as far as `known` items (the ones a list shows, in its
 * order) tell: exact for marks by ids of known items and for `all`; by `upToCursor`, only the
 * known items are counted. An estimate for showing a mark at once; the server's counts replace it.
 */
export function countsAfterMark(counts: InboxCounts, spec: MarkSpec, known: readonly InboxItem[]): InboxCounts {
  if (spec.all === true) {
    const zeroUnread = spec.mark === InboxMark.READ;
    return {
      ...counts,
      unread: zeroUnread ? 0n : counts.unread,
      unseen: 0n,
      families: counts.families.map((f) => ({ ...f, unread: zeroUnread ? 0n : f.unread, unseen: 0n })),
    };
  }
  // Each known item once (a list may hold an item twice while pages shift).
  const unique = new Map<string, InboxItem>();
  for (const item of known) unique.set(item.event?.id ?? "", item);
  unique.delete("");
  const marked = markItems([...unique.values()], spec).items;
  const delta = new Map<InboxFamily, Tally>();
  let total = 0n;
  let unread = 0n;
  let unseen = 0n;
  [...unique.values()].forEach((before, n) => {
    const after = marked[n];
    if (after === undefined || after === before) return;
    const a = tally(after);
    const b = tally(before);
    const d = { total: a.total - b.total, unread: a.unread - b.unread, unseen: a.unseen - b.unseen };
    total += d.total;
    unread += d.unread;
    unseen += d.unseen;
    const f = delta.get(before.family) ?? { total: 0n, unread: 0n, unseen: 0n };
    delta.set(before.family, { total: f.total + d.total, unread: f.unread + d.unread, unseen: f.unseen + d.unseen });
  });
  if (total === 0n && unread === 0n && unseen === 0n && delta.size === 0) return counts;
  return {
    ...counts,
    total: clamp(counts.total + total),
    unread: clamp(counts.unread + unread),
    unseen: clamp(counts.unseen + unseen),
    families: counts.families.map((f) => {
      const d = delta.get(f.family);
      return d === undefined
        ? f
        : { ...f, total: clamp(f.total + d.total), unread: clamp(f.unread + d.unread), unseen: clamp(f.unseen + d.unseen) };
    }),
  };
}

/** A mark in flight, shown before the server has it. */
interface Pending {
  readonly spec: Required<MarkSpec>;
  readonly counts: (counts: InboxCounts) => InboxCounts;
  /**
   * `sent`: the call is under way. `stored`: the server answered, but an update arrived during
   * the call (so the answer's counts may be older than it) while the stream stayed live: the
   * mark's own update is on its way (the stream is in the writer's order, so every update before
   * it is older than the mark), and the mark stays shown until it comes.
   */
  stage: "sent" | "stored";
}

function normalized(spec: MarkSpec): Required<MarkSpec> {
  return { mark: spec.mark, ids: [...(spec.ids ?? [])], upToCursor: spec.upToCursor ?? "", all: spec.all ?? false };
}

/** Whether `update` is what the server sends for the mark `spec` (by ids: some or all of them). */
function echoes(update: InboxUpdate, spec: Required<MarkSpec>): boolean {
  if (update.reason !== InboxUpdateReason.MARKED || update.mark !== spec.mark) return false;
  if (update.all !== spec.all || update.upToCursor !== spec.upToCursor) return false;
  if (spec.ids.length === 0) return update.ids.length === 0;
  const ids = new Set(spec.ids);
  return update.ids.length > 0 && update.ids.every((id) => ids.has(id));
}

/** What `InboxState` tells lists: an in-band update, or one of this tab's marks as stored. */
export interface InboxChange {
  /** The update (for a stored mark of this tab: a `MARKED` update made from its answer). */
  update: InboxUpdate;
  /** The server's counts before it (undefined when none were known yet). */
  previous: InboxCounts | undefined;
  /** True for this tab's own mark, which the server has stored; its in-band update follows. */
  local: boolean;
}

/** What `InboxState` shows; a new object on every change, the same one between changes. */
export interface InboxSnapshot {
  /** The counts with the marks in flight applied; undefined until the server gave some. */
  counts: InboxCounts | undefined;
  /** The marks in flight, oldest first. */
  marks: readonly MarkSpec[];
}

/** One inbox of a tab: the server's latest counts, marks in flight on top, and its updates. */
export class InboxState {
  private base: InboxCounts | undefined;
  private pending: readonly Pending[] = [];
  /** Counts the changes of `base`: an answer read before one of them may be older than it. */
  private updates = 0;
  private live = false;
  /** How often the stream stopped being live: a mark's update may have been lost in between. */
  private drops = 0;
  private current: InboxSnapshot = { counts: undefined, marks: [] };
  private readonly listeners = new Set<() => void>();
  private readonly changeListeners = new Set<(change: InboxChange) => void>();

  constructor(
    readonly api: InboxApi,
    readonly adminInbox = false,
  ) {}

  /** The counts and marks in flight. */
  get snapshot(): InboxSnapshot {
    return this.current;
  }

  /** The counts with the marks in flight applied. */
  get counts(): InboxCounts | undefined {
    return this.current.counts;
  }

  /** How often the server's counts changed so far (pass it to `offerCounts`). */
  get version(): number {
    return this.updates;
  }

  /** Calls `listener` after every change of `snapshot`; returns the function that removes it. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  /** Calls `listener` with every update and every mark of this tab stored; returns its remover. */
  onChange(listener: (change: InboxChange) => void): () => void {
    this.changeListeners.add(listener);
    return () => {
      this.changeListeners.delete(listener);
    };
  }

  /**
   * Counts read by a call that started when `version` was `sentAt`: taken unless the counts
   * changed since (an update, another answer: either may be newer) or a mark is in flight (they
   * may hold it already, and it is shown on top).
   */
  offerCounts(counts: InboxCounts | undefined, sentAt: number): void {
    if (counts === undefined || sentAt !== this.updates || this.pending.length > 0) return;
    this.setBase(counts);
    this.changed();
  }

  /** Reads the counts from the server (`GetInboxCounts`); returns the counts shown after. */
  async loadCounts(signal?: AbortSignal): Promise<InboxCounts> {
    const sentAt = this.updates;
    this.offerCounts(await this.api.counts({ adminInbox: this.adminInbox }, signal), sentAt);
    return this.counts ?? emptyCounts();
  }

  /** `items` with the marks in flight applied. */
  overlay(items: readonly InboxItem[]): readonly InboxItem[] {
    return this.pending.reduce((shown, pending) => markItems(shown, pending.spec).items, items);
  }

  /**
   * Marks items: shown at once (on the counts as far as `known`, the items the caller shows, tell,
   * and on every list's items), sent with `MarkInbox`, taken back if the call fails. Resolves with
   * the server's answer; rejects with the call's error after taking the mark back.
   */
  async mark(spec: MarkSpec, known: readonly InboxItem[] = []): Promise<MarkInboxResponse> {
    const full = normalized(spec);
    const snapshot = [...known];
    const pending: Pending = { spec: full, counts: (c) => countsAfterMark(c, full, snapshot), stage: "sent" };
    this.pending = [...this.pending, pending];
    this.changed();
    const sentAt = this.updates;
    const drops = this.drops;
    let response: MarkInboxResponse;
    try {
      response = await this.api.mark(full, { adminInbox: this.adminInbox });
    } catch (error) {
      // Rolled back, unless the stream already said it happened (then the server has it).
      if (this.drop(pending)) this.changed();
      throw error;
    }
    if (this.pending.includes(pending)) {
      if (sentAt === this.updates && this.pending.length === 1) {
        if (response.counts !== undefined) this.setBase(response.counts);
        this.drop(pending);
      } else if (response.changed === 0 || !this.live || drops !== this.drops) {
        // Nothing changed (no update follows), or no stream (or not the same one) to bring it:
        // the counts the server sends next (a reconnection's `STATE`) are right either way.
        this.drop(pending);
        // Without a stream, nothing would correct them: read them once every mark is answered.
        if (!this.live && this.pending.length === 0) void this.loadCounts().catch(() => {});
      } else {
        pending.stage = "stored";
      }
    }
    this.tell({
      update: create(InboxUpdateSchema, {
        adminInbox: this.adminInbox,
        reason: InboxUpdateReason.MARKED,
        counts: response.counts,
        mark: full.mark,
        ids: [...full.ids],
        upToCursor: full.upToCursor,
        all: full.all,
      }),
      previous: this.base,
      local: true,
    });
    this.changed();
    return response;
  }

  /** An in-band update of the stream (others', of the other inbox, are ignored). */
  receive(update: InboxUpdate): void {
    if (update.adminInbox !== this.adminInbox) return;
    const previous = this.base;
    this.updates += 1;
    if (update.counts !== undefined) this.base = update.counts;
    if (update.reason === InboxUpdateReason.STATE) {
      // The state as of now: every mark the server answered is in it.
      this.pending = this.pending.filter((p) => p.stage === "sent");
    } else {
      const echoed = this.pending.find((p) => echoes(update, p.spec));
      if (echoed !== undefined) this.drop(echoed);
    }
    this.tell({ update, previous, local: false });
    this.changed();
  }

  /** The stream's state: without a live stream, no mark's update is awaited. */
  streamState(state: FeedState): void {
    const live = state.state === "live";
    if (this.live && !live) this.drops += 1;
    this.live = live;
    if (!live && this.pending.some((p) => p.stage === "stored")) {
      this.pending = this.pending.filter((p) => p.stage === "sent");
      this.changed();
    }
  }

  private setBase(counts: InboxCounts): void {
    this.base = counts;
    this.updates += 1;
  }

  private drop(pending: Pending): boolean {
    if (!this.pending.includes(pending)) return false;
    this.pending = this.pending.filter((p) => p !== pending);
    return true;
  }

  private tell(change: InboxChange): void {
    for (const listener of [...this.changeListeners]) {
      try {
        listener(change);
      } catch (error) {
        console.error("notify-backbone: an inbox listener threw", error);
      }
    }
  }

  private changed(): void {
    const base = this.base;
    const counts = base === undefined ? undefined : this.pending.reduce((c, p) => p.counts(c), base);
    this.current = { counts, marks: this.pending.map((p) => p.spec) };
    for (const listener of [...this.listeners]) {
      try {
        listener();
      } catch (error) {
        console.error("notify-backbone: an inbox listener threw", error);
      }
    }
  }
}

/** Which items an `InboxList` holds. */
export interface InboxListOptions {
  /** Default: every item not archived. */
  filter?: InboxFilter;
  /** Default: every family. */
  families?: readonly InboxFamily[];
  /** Items per page (default 20, at most 100). */
  pageSize?: number;
}

/**
 * `ours` (newest first) after reading the newest page again: the page is the truth for the items
 * it covers, and the older ones loaded before stay, when the page reaches them (its oldest item is
 * one of ours). Otherwise (more new items than a page) only the page is kept.
 */
export function mergeNewestPage(
  ours: { items: readonly InboxItem[]; nextBefore: string; end: boolean },
  page: ListInboxResponse,
): { items: readonly InboxItem[]; nextBefore: string; end: boolean } {
  const whole = { items: page.items, nextBefore: page.nextBefore, end: page.end };
  const oldest = page.items.at(-1)?.event?.id;
  if (page.end || oldest === undefined) return whole;
  const at = ours.items.findIndex((item) => item.event?.id === oldest);
  if (at < 0) return whole;
  return { items: [...page.items, ...ours.items.slice(at + 1)], nextBefore: ours.nextBefore, end: ours.end };
}

/** What an `InboxList` shows; a new object on every change. */
export interface InboxListSnapshot {
  /** The items, newest first, with their state (marks in flight applied), in the list's filter. */
  items: readonly InboxItem[];
  /** The inbox's counts (marks in flight applied). */
  counts: InboxCounts | undefined;
  /** True once the oldest item is loaded. */
  end: boolean;
  /** True while a page is being read. */
  loading: boolean;
  /** The last failed read, until a read succeeds. */
  error: unknown;
}

/**
 * One list of an inbox, page by page, newest first, kept current: marks (this tab's, other tabs'
 * and devices') change its items in place, new items and preference changes read the newest page
 * again, and a `STATE` with other counts than the last known (after a reconnection) reads what is
 * loaded again. The marks go through its `InboxState`, so every list and badge shows them at once.
 */
export class InboxList {
  private base: { items: readonly InboxItem[]; nextBefore: string; end: boolean } = {
    items: [],
    nextBefore: "",
    end: false,
  };
  private pages = 0;
  private loading = false;
  private error: unknown = undefined;
  private current: InboxListSnapshot;
  private readonly listeners = new Set<() => void>();
  private readonly detach: (() => void)[];
  /** Reads run one at a time, in order. */
  private queue: Promise<void> = Promise.resolve();
  private readonly filter: InboxFilter;
  private readonly families: readonly InboxFamily[];
  private readonly pageSize: number;

  constructor(
    readonly state: InboxState,
    options: InboxListOptions = {},
  ) {
    this.filter = options.filter ?? InboxFilter.UNSPECIFIED;
    this.families = [...(options.families ?? [])];
    this.pageSize = options.pageSize ?? 20;
    this.current = this.compute();
    this.detach = [state.subscribe(() => this.changed()), state.onChange((change) => this.apply(change))];
  }

  /** The items, counts and loading state. */
  get snapshot(): InboxListSnapshot {
    return this.current;
  }

  /** Calls `listener` after every change of `snapshot`; returns the function that removes it. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  /** Reads the newest page (again), dropping older pages. */
  load(): Promise<void> {
    return this.enqueue(async () => {
      const page = await this.read("");
      this.base = { items: page.items, nextBefore: page.nextBefore, end: page.end };
      this.pages = 1;
    });
  }

  /** Reads the next older page (the first one when none is loaded); a no-op at the end. */
  fetchNextPage(): Promise<void> {
    return this.enqueue(async () => {
      if (this.pages > 0 && this.base.end) return;
      const page = await this.read(this.pages === 0 ? "" : this.base.nextBefore);
      const items = this.pages === 0 ? page.items : [...this.base.items, ...page.items];
      this.base = { items, nextBefore: page.nextBefore, end: page.end };
      this.pages += 1;
    });
  }

  /** Marks items read (and seen). */
  markRead(ids: readonly string[]): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.read(ids));
  }
  /** Marks every item read. */
  markAllRead(): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.allRead());
  }
  /** Marks items seen. */
  markSeen(ids: readonly string[]): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.seen(ids));
  }
  /** Marks every item at or before `cursor` (an item's `event.cursor`) seen. */
  markSeenUpTo(cursor: string): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.seenUpTo(cursor));
  }
  /** Marks items not read again (they stay seen). */
  markUnread(ids: readonly string[]): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.unread(ids));
  }
  /** Archives items: out of the inbox and its counts, kept in history. */
  archive(ids: readonly string[]): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.archive(ids));
  }
  /** Brings archived items back into the inbox. */
  unarchive(ids: readonly string[]): Promise<MarkInboxResponse> {
    return this.mark(inboxMarks.unarchive(ids));
  }

  /** Any mark, optimistic like the ones above. */
  mark(spec: MarkSpec): Promise<MarkInboxResponse> {
    return this.state.mark(spec, this.current.items);
  }

  /** Stops following the inbox's changes. */
  close(): void {
    for (const detach of this.detach) detach();
  }

  private apply(change: InboxChange): void {
    const { update } = change;
    if (this.pages === 0) return;
    switch (update.reason) {
      case InboxUpdateReason.MARKED: {
        const spec = { mark: update.mark, ids: update.ids, upToCursor: update.upToCursor, all: update.all };
        const marked = markItems(this.base.items, spec);
        this.base = { ...this.base, items: marked.items };
        this.changed();
        if (!marked.placed || (marked.missing.length > 0 && markMayAddTo(this.filter, update.mark))) {
          void this.reload().catch(() => {});
        }
        return;
      }
      case InboxUpdateReason.NEW_ITEMS:
        void this.refreshNewest().catch(() => {});
        return;
      case InboxUpdateReason.PREFERENCES:
        void this.reload().catch(() => {});
        return;
      case InboxUpdateReason.STATE:
        if (change.previous !== undefined && !sameCounts(change.previous, update.counts)) {
          void this.reload().catch(() => {});
        }
        return;
      default:
        return;
    }
  }

  /** Reads the newest page again and merges it in front. */
  private refreshNewest(): Promise<void> {
    return this.enqueue(async () => {
      this.base = mergeNewestPage(this.base, await this.read(""));
    });
  }

  /** Reads as many pages as are loaded again, from the newest. */
  private reload(): Promise<void> {
    return this.enqueue(async () => {
      const wanted = Math.max(1, this.pages);
      let items: InboxItem[] = [];
      let page: ListInboxResponse | undefined;
      let read = 0;
      do {
        page = await this.read(page === undefined ? "" : page.nextBefore);
        items = [...items, ...page.items];
        read += 1;
      } while (read < wanted && !page.end);
      this.base = { items, nextBefore: page.nextBefore, end: page.end };
      this.pages = read;
    });
  }

  private async read(before: string): Promise<ListInboxResponse> {
    const sentAt = this.state.version;
    const page = await this.state.api.list({
      adminInbox: this.state.adminInbox,
      filter: this.filter,
      families: this.families,
      before,
      limit: this.pageSize,
    });
    this.state.offerCounts(page.counts, sentAt);
    return page;
  }

  private enqueue(read: () => Promise<void>): Promise<void> {
    const run = this.queue.then(async () => {
      this.loading = true;
      this.changed();
      try {
        await read();
        this.error = undefined;
      } catch (error) {
        this.error = error;
        throw error;
      } finally {
        this.loading = false;
        this.changed();
      }
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private compute(): InboxListSnapshot {
    const items = this.state.overlay(this.base.items).filter((item) => inInboxList(item, this.filter, this.families));
    return { items, counts: this.state.counts, end: this.base.end, loading: this.loading, error: this.error };
  }

  private changed(): void {
    this.current = this.compute();
    for (const listener of [...this.listeners]) {
      try {
        listener();
      } catch (error) {
        console.error("notify-backbone: an inbox listener threw", error);
      }
    }
  }
}
