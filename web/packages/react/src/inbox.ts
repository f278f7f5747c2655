// The inbox in React: `useInbox` (a list, page by page, marks shown at once and taken back when
// the server refuses them), `useUnreadCount` (the badge, in total and per family) and
// `usePreferences`. The pages, counts and preferences live in React Query's cache under
// `["notify-backbone", …]`, loaded with the provider's connection (its token) and kept fresh by
// the in-band `InboxUpdate`s of its stream, not by refetching on a timer; the marks in flight are
// the connection's `InboxState`'s, so every list and badge of the app shows them together.

import { useCallback, useEffect, useMemo, useRef, useSyncExternalStore } from "react";
import {
  useInfiniteQuery,
  useMutation,
  useQuery,
  useQueryClient,
  type InfiniteData,
  type QueryClient,
  type QueryKey,
} from "@tanstack/react-query";
import {
  InboxFamily,
  InboxFilter,
  InboxUpdateReason,
  inInboxList,
  inboxFamilyName,
  inboxMarks,
  markItems,
  markMayAddTo,
  preferencesFrom,
  sameCounts,
  type InboxChange,
  type InboxCounts,
  type InboxItem,
  type InboxState,
  type ListInboxResponse,
  type MarkInboxResponse,
  type MarkSpec,
  type Preferences,
  type PreferencesInit,
} from "@notify-backbone/client";
import { useNotificationsConnection } from "./provider.js";

/** The prefix of every inbox query key. */
export const INBOX_QUERY_KEY = ["notify-backbone", "inbox"] as const;
/** The query key of the preferences. */
export const PREFERENCES_QUERY_KEY = ["notify-backbone", "preferences"] as const;

const kind = (adminInbox: boolean | undefined) => (adminInbox === true ? "admin" : "user");

/** The query key of a list of an inbox. */
export function inboxListKey(options: InboxListKeyOptions = {}): QueryKey {
  return [
    ...INBOX_QUERY_KEY,
    kind(options.adminInbox),
    "list",
    {
      filter: options.filter ?? InboxFilter.UNSPECIFIED,
      families: [...(options.families ?? [])].sort((a, b) => a - b),
      pageSize: options.pageSize ?? 20,
    },
  ];
}

/** The query key of an inbox's counts. */
export function inboxCountsKey(adminInbox = false): QueryKey {
  return [...INBOX_QUERY_KEY, kind(adminInbox), "counts"];
}

/** What names a list. */
export interface InboxListKeyOptions {
  /** This admin's admin inbox (the admin feed's notices) instead of the user's own. */
  adminInbox?: boolean;
  /** Which items (default: every item not archived). */
  filter?: InboxFilter;
  /** Only these families (default: all). */
  families?: readonly InboxFamily[];
  /** Items per page (default 20, at most 100). */
  pageSize?: number;
}

/** Options of `useInbox`. */
export interface UseInboxOptions extends InboxListKeyOptions {
  /** False: load nothing (yet). */
  enabled?: boolean;
  /** Default: the one from `QueryClientProvider`. */
  queryClient?: QueryClient;
}

/** What `useInbox` returns. */
export interface InboxView {
  /** The items, newest first, with their state (marks in flight applied), in the list's filter. */
  items: readonly InboxItem[];
  /** The inbox's counts (marks in flight applied); undefined until loaded. */
  counts: InboxCounts | undefined;
  isLoading: boolean;
  /** The last failed read. */
  error: Error | null;
  hasNextPage: boolean;
  isFetchingNextPage: boolean;
  /** Loads the next, older page. */
  fetchNextPage(): void;
  /** Marks items read (and seen). */
  markRead(ids: readonly string[]): void;
  /** Marks every item read. */
  markAllRead(): void;
  /** Marks items seen. */
  markSeen(ids: readonly string[]): void;
  /** Marks every item at or before `cursor` (an item's `event.cursor`) seen. */
  markSeenUpTo(cursor: string): void;
  /** Marks every item seen. */
  markAllSeen(): void;
  /** Marks items not read again (they stay seen). */
  markUnread(ids: readonly string[]): void;
  /** Archives items: out of the inbox and its counts, kept in history. */
  archive(ids: readonly string[]): void;
  /** Brings archived items back. */
  unarchive(ids: readonly string[]): void;
  /** Any mark, for awaiting the server's answer; rejects (after taking the mark back) on failure. */
  mark(spec: MarkSpec): Promise<MarkInboxResponse>;
  /** The last mark the server refused (shown, then taken back); cleared by the next that works. */
  markError: Error | null;
}

/** The provider's inbox state (the user's, or with `adminInbox` the admin inbox). */
export function useInboxState(adminInbox = false): InboxState {
  return useNotificationsConnection().inbox({ adminInbox });
}

function useSnapshot(state: InboxState) {
  return useSyncExternalStore(
    state.subscribe,
    () => state.snapshot,
    () => state.snapshot,
  );
}

/**
 * Applies one inbox change to the cached list under `queryKey` (a list of `filter`): a mark
 * changes the items in place (or reads the list again when it may add items the list does not
 * hold, or names a cursor the list does not hold); new items and changed preferences read it
 * again, and so does a `STATE` with other counts than the ones known before (after a
 * reconnection). A list being read is read again rather than patched: its answer may predate
 * the change.
 */
export function applyInboxChange(
  queryClient: QueryClient,
  queryKey: QueryKey,
  filter: InboxFilter,
  change: InboxChange,
): void {
  const data = queryClient.getQueryData<InfiniteData<ListInboxResponse, string>>(queryKey);
  if (data === undefined) return;
  const reread = () => void queryClient.invalidateQueries({ queryKey, exact: true });
  const { update } = change;
  switch (update.reason) {
    case InboxUpdateReason.MARKED: {
      const query = queryClient.getQueryCache().find({ queryKey, exact: true });
      if (query?.state.fetchStatus === "fetching") return reread();
      const spec = { mark: update.mark, ids: update.ids, upToCursor: update.upToCursor, all: update.all };
      // One list across the pages: a mark up to a cursor covers the pages after the cursor's.
      const marked = markItems(
        data.pages.flatMap((page) => page.items),
        spec,
      );
      let at = 0;
      const pages = data.pages.map((page) => {
        const items = marked.items.slice(at, at + page.items.length);
        at += page.items.length;
        return items.every((item, n) => item === page.items[n]) ? page : { ...page, items };
      });
      if (pages.some((page, n) => page !== data.pages[n])) queryClient.setQueryData(queryKey, { ...data, pages });
      if (!marked.placed || (marked.missing.length > 0 && markMayAddTo(filter, update.mark))) reread();
      return;
    }
    case InboxUpdateReason.NEW_ITEMS:
    case InboxUpdateReason.PREFERENCES:
      return reread();
    case InboxUpdateReason.STATE:
      if (change.previous !== undefined && !sameCounts(change.previous, update.counts)) reread();
      return;
    default:
      return;
  }
}

/**
 * A list of the inbox, newest first, page by page (`fetchNextPage`), with each item's state.
 * Marks show at once, in this list, every other list and the badge, and are taken back when the
 * server refuses them (`markError`). Kept fresh by the stream: marks from other tabs and devices
 * change the items in place, new items read the list again.
 */
export function useInbox(options: UseInboxOptions = {}): InboxView {
  const state = useInboxState(options.adminInbox === true);
  const queryClient = useQueryClient(options.queryClient);
  const filter = options.filter ?? InboxFilter.UNSPECIFIED;
  const familiesKey = [...(options.families ?? [])].sort((a, b) => a - b).join(",");
  const pageSize = options.pageSize ?? 20;
  const families = useMemo(
    () => (familiesKey === "" ? [] : familiesKey.split(",").map((f) => Number(f) as InboxFamily)),
    [familiesKey],
  );
  const queryKey = useMemo(
    () => inboxListKey({ adminInbox: state.adminInbox, filter, families, pageSize }),
    [state, filter, families, pageSize],
  );
  const query = useInfiniteQuery(
    {
      queryKey,
      queryFn: async ({ pageParam, signal }) => {
        const sentAt = state.version;
        const page = await state.api.list(
          { adminInbox: state.adminInbox, filter, families, before: pageParam, limit: pageSize },
          signal,
        );
        state.offerCounts(page.counts, sentAt);
        return page;
      },
      initialPageParam: "",
      getNextPageParam: (last: ListInboxResponse) => (last.end ? undefined : last.nextBefore),
      // The stream keeps it fresh: no refetch on focus or remount.
      staleTime: Infinity,
      enabled: options.enabled ?? true,
    },
    queryClient,
  );
  useEffect(
    () => state.onChange((change) => applyInboxChange(queryClient, queryKey, filter, change)),
    [state, queryClient, queryKey, filter],
  );
  const snapshot = useSnapshot(state);
  const items = useMemo(() => {
    const seen = new Set<string>();
    const loaded = (query.data?.pages ?? []).flatMap((page) => page.items).filter((item) => {
      const id = item.event?.id ?? "";
      if (seen.has(id)) return false;
      seen.add(id);
      return true;
    });
    const shown = snapshot.marks.reduce<readonly InboxItem[]>((list, spec) => markItems(list, spec).items, loaded);
    return shown.filter((item) => inInboxList(item, filter, families));
  }, [query.data, snapshot.marks, filter, families]);
  // The items shown when a mark is made: its effect on the counts is estimated from them.
  const shown = useRef(items);
  useEffect(() => {
    shown.current = items;
  }, [items]);
  const mutation = useMutation(
    { mutationFn: (spec: MarkSpec) => state.mark(spec, shown.current) },
    queryClient,
  );
  const { mutate, mutateAsync } = mutation;
  const run = useCallback((spec: MarkSpec) => mutate(spec), [mutate]);
  const { fetchNextPage, hasNextPage } = query;
  return {
    items,
    counts: snapshot.counts,
    isLoading: query.isLoading,
    error: query.error,
    hasNextPage,
    isFetchingNextPage: query.isFetchingNextPage,
    fetchNextPage: useCallback(() => {
      if (hasNextPage) void fetchNextPage();
    }, [fetchNextPage, hasNextPage]),
    markRead: useCallback((ids: readonly string[]) => run(inboxMarks.read(ids)), [run]),
    markAllRead: useCallback(() => run(inboxMarks.allRead()), [run]),
    markSeen: useCallback((ids: readonly string[]) => run(inboxMarks.seen(ids)), [run]),
    markSeenUpTo: useCallback((cursor: string) => run(inboxMarks.seenUpTo(cursor)), [run]),
    markAllSeen: useCallback(() => run(inboxMarks.allSeen()), [run]),
    markUnread: useCallback((ids: readonly string[]) => run(inboxMarks.unread(ids)), [run]),
    archive: useCallback((ids: readonly string[]) => run(inboxMarks.archive(ids)), [run]),
    unarchive: useCallback((ids: readonly string[]) => run(inboxMarks.unarchive(ids)), [run]),
    mark: mutateAsync,
    markError: mutation.error,
  };
}

/** One family's counts, as numbers. */
export interface FamilyCount {
  total: number;
  unread: number;
  unseen: number;
}

/** What `useUnreadCount` returns. */
export interface UnreadCount extends FamilyCount {
  /** Per family, by name (`quota`, `billing`, `app`, `device`). */
  families: Readonly<Record<string, FamilyCount>>;
  /** The counts as the server sends them (marks in flight applied); undefined until loaded. */
  counts: InboxCounts | undefined;
  isLoading: boolean;
  error: Error | null;
}

/** Options of `useUnreadCount`. */
export interface UseUnreadCountOptions {
  /** This admin's admin inbox instead of the user's own. */
  adminInbox?: boolean;
  enabled?: boolean;
  queryClient?: QueryClient;
}

/**
 * The badge: the inbox's unread (and unseen, and total) count, in total and per family. Read once
 * (`GetInboxCounts`), then kept current by the stream's updates, this tab's marks included at
 * once.
 */
export function useUnreadCount(options: UseUnreadCountOptions = {}): UnreadCount {
  const state = useInboxState(options.adminInbox === true);
  const query = useQuery(
    {
      queryKey: inboxCountsKey(state.adminInbox),
      queryFn: ({ signal }) => state.loadCounts(signal),
      staleTime: Infinity,
      enabled: options.enabled ?? true,
    },
    options.queryClient,
  );
  const snapshot = useSnapshot(state);
  const counts = snapshot.counts ?? query.data;
  return useMemo(() => {
    const families: Record<string, FamilyCount> = {};
    for (const f of counts?.families ?? []) {
      families[inboxFamilyName(f.family)] = { total: Number(f.total), unread: Number(f.unread), unseen: Number(f.unseen) };
    }
    return {
      total: Number(counts?.total ?? 0n),
      unread: Number(counts?.unread ?? 0n),
      unseen: Number(counts?.unseen ?? 0n),
      families,
      counts,
      isLoading: counts === undefined && query.isLoading,
      error: query.error,
    };
  }, [counts, query.isLoading, query.error]);
}

/** What `usePreferences` returns. */
export interface PreferencesView {
  /** The user's preferences (defaults when never set); undefined until loaded. */
  preferences: Preferences | undefined;
  isLoading: boolean;
  error: Error | null;
  /** Replaces the preferences: shown at once, taken back if the server refuses (`updateError`). */
  update(preferences: PreferencesInit): void;
  /** The same, for awaiting the preferences as stored. */
  updateAsync(preferences: PreferencesInit): Promise<Preferences>;
  isUpdating: boolean;
  updateError: Error | null;
}

/** The user's preferences (per type or family, quiet hours), to read and to update. */
export function usePreferences(options: { queryClient?: QueryClient } = {}): PreferencesView {
  const connection = useNotificationsConnection();
  const queryClient = useQueryClient(options.queryClient);
  const api = connection.inboxApi;
  const query = useQuery(
    {
      queryKey: PREFERENCES_QUERY_KEY,
      queryFn: ({ signal }) => api.preferences({}, signal),
      staleTime: Infinity,
    },
    queryClient,
  );
  // Changed elsewhere (another tab, device, or this one): read them again.
  useEffect(
    () =>
      connection.listen({
        onInbox: (update) => {
          if (update.reason === InboxUpdateReason.PREFERENCES && !update.adminInbox) {
            void queryClient.invalidateQueries({ queryKey: PREFERENCES_QUERY_KEY, exact: true });
          }
        },
      }),
    [connection, queryClient],
  );
  const mutation = useMutation(
    {
      mutationFn: (preferences: PreferencesInit) => api.setPreferences(preferences),
      onMutate: async (preferences) => {
        await queryClient.cancelQueries({ queryKey: PREFERENCES_QUERY_KEY, exact: true });
        const previous = queryClient.getQueryData<Preferences>(PREFERENCES_QUERY_KEY);
        const shown = preferencesFrom(preferences);
        shown.criticalTypes = previous?.criticalTypes ?? [];
        queryClient.setQueryData(PREFERENCES_QUERY_KEY, shown);
        return { previous };
      },
      onError: (_error, _preferences, context) => {
        queryClient.setQueryData(PREFERENCES_QUERY_KEY, context?.previous);
      },
      onSuccess: (stored) => {
        queryClient.setQueryData(PREFERENCES_QUERY_KEY, stored);
      },
    },
    queryClient,
  );
  const { mutate, mutateAsync } = mutation;
  return {
    preferences: query.data,
    isLoading: query.isLoading,
    error: query.error,
    update: useCallback((preferences: PreferencesInit) => mutate(preferences), [mutate]),
    updateAsync: mutateAsync,
    isUpdating: mutation.isPending,
    updateError: mutation.error,
  };
}
