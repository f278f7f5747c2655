// A view of the provider's stream: its events (optionally narrowed), the connection state, the
// gaps and how many superseded events storm control skipped. Filtering happens here, on the one
// shared stream: a second hook never opens a second connection.

import { useCallback, useMemo, useRef, useSyncExternalStore } from "react";
import { canonicalEventType, type Event, type FeedState, type Gap } from "@notify-backbone/client";
import { useNotificationsConnection } from "./provider.js";

/** Which of the stream's events a view wants; an empty or missing field matches everything. */
export interface NotificationFilter {
  eventTypes?: readonly string[];
  deviceId?: string;
  userId?: string;
}

/** What `useNotifications` returns. */
export interface NotificationsView {
  /** The recent matching events, oldest first (history on first paint, then live). */
  events: readonly Event[];
  /** The connection's state: `live` once caught up. */
  state: FeedState;
  /** Gaps the server reported (events the journal no longer held). */
  gaps: readonly Gap[];
  /**
   * Superseded state events the server skipped (the provider's `conflate`, on by default), in
   * total since the provider mounted: their latest state arrived, so nothing is missing; a view
   * may say that a storm was thinned out. Not narrowed by the filter (the server does not say
   * which events it skipped).
   */
  skipped: number;
}

interface Snapshot {
  recent: readonly Event[];
  state: FeedState;
  gaps: readonly Gap[];
  skipped: number;
}

/**
 * The matching events, the state, the gaps and the skip count of the provider's connection;
 * re-renders on each change.
 */
export function useNotifications(filter: NotificationFilter = {}): NotificationsView {
  const connection = useNotificationsConnection();
  const snapshot = useRef<Snapshot | null>(null);
  const subscribe = useCallback(
    (changed: () => void) =>
      connection.listen({ onEvent: changed, onState: changed, onGap: changed, onConflated: changed }),
    [connection],
  );
  const getSnapshot = useCallback((): Snapshot => {
    const last = snapshot.current;
    if (
      last !== null &&
      last.recent === connection.recent &&
      last.state === connection.state &&
      last.gaps === connection.gaps &&
      last.skipped === connection.skipped
    ) {
      return last;
    }
    snapshot.current = {
      recent: connection.recent,
      state: connection.state,
      gaps: connection.gaps,
      skipped: connection.skipped,
    };
    return snapshot.current;
  }, [connection]);
  const { recent, state, gaps, skipped } = useSyncExternalStore(subscribe, getSnapshot, getSnapshot);
  const types = (filter.eventTypes ?? []).join("\n");
  const deviceId = filter.deviceId ?? "";
  const userId = filter.userId ?? "";
  const events = useMemo(() => {
    const wanted = new Set(types === "" ? [] : types.split("\n").map(canonicalEventType));
    return recent.filter(
      (event) =>
        (wanted.size === 0 || wanted.has(canonicalEventType(event.type))) &&
        (deviceId === "" || event.deviceId === deviceId) &&
        (userId === "" || event.userId === userId),
    );
  }, [recent, types, deviceId, userId]);
  return { events, state, gaps, skipped };
}
