// One subscription shared by many listeners: what an app holds once (a console's React provider,
// a page) while its parts come and go. The feed underneath resumes by cursor, backs off, watches
// for silence and refreshes the token; this adds the listeners, each removed on its own (removing
// one never removes another's), and the state and recent events a view starts from.

import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Event } from "./gen/cloudphone/notify/v1/events_pb.js";
import { NotificationService, type Gap } from "./gen/cloudphone/notify/v1/service_pb.js";
import { Feed, type EventOrigin, type FeedOptions, type FeedState, type Selection } from "./feed.js";

/** A client of the notification service (any transport). */
export type NotificationClient = Client<typeof NotificationService>;

/** A client for the notification service over grpc-web (browsers) at `baseUrl`. */
export function createNotificationClient(baseUrl: string): NotificationClient {
  return createClient(NotificationService, createGrpcWebTransport({ baseUrl }));
}

/** What a listener is told; every callback is optional. */
export interface NotificationListener {
  /** `origin.history`: from the first paint's history, not the stream (see `EventOrigin`). */
  onEvent?(event: Event, origin: EventOrigin): void;
  onState?(state: FeedState): void;
  onGap?(gap: Gap): void;
}

/** How a `Notifications` connection is made. */
export interface NotificationsOptions {
  /** The service client, e.g. `createNotificationClient("https://notify.example.com")`. */
  client: NotificationClient;
  /**
   * Gives a valid token: called when the connection starts and whenever the server ends the
   * stream UNAUTHENTICATED (the token expired), so the stream continues after its cursor with
   * the new token and nothing is lost. Typically your app's own session refresh.
   */
  getToken: () => Promise<string> | string;
  /** What the server sends: by default every event the token may see (its user's, or the admin feed). */
  selection?: Partial<Selection>;
  /** Events of history reported on a fresh start, oldest first, before the live ones (default 50). */
  history?: number;
  /** How many recent events `recent` keeps (default 200). */
  keep?: number;
  /** Passed on to the feed (timers, idle timeout; for tests). */
  feed?: Omit<FeedOptions, "history" | "refreshToken">;
}

/** Gaps kept for views that open later: the latest ones only. */
const KEEP_GAPS = 20;

/** One shared subscription with any number of listeners. */
export class Notifications {
  /** The feed's latest state. */
  state: FeedState = { state: "idle" };
  /** The latest events, oldest first (at most `keep`); replaced, never mutated, on each event. */
  recent: readonly Event[] = [];
  /** The latest gaps reported (at most 20); replaced on each gap. */
  gaps: readonly Gap[] = [];
  private readonly listeners = new Set<NotificationListener>();
  private readonly feed: Feed;
  private readonly keep: number;
  private readonly selection: Selection;
  private started = false;
  /** Counts starts, so a run that ends late does not mark a newer one as stopped. */
  private runs = 0;
  /** The token `start` is waiting for, if any. */
  private pendingToken: Promise<string> | undefined;

  constructor(private readonly options: NotificationsOptions) {
    this.keep = options.keep ?? 200;
    this.selection = {
      eventTypes: [],
      deviceId: "",
      userId: "",
      adminFeed: false,
      ...options.selection,
    };
    const token = async (): Promise<string> => await options.getToken();
    this.feed = new Feed(
      options.client,
      {
        onState: (state) => {
          this.state = state;
          this.tell((listener) => listener.onState?.(state));
        },
        onEvent: (event, origin) => {
          const recent = [...this.recent, event];
          this.recent = recent.length > this.keep ? recent.slice(recent.length - this.keep) : recent;
          this.tell((listener) => listener.onEvent?.(event, origin));
        },
        onGap: (gap) => {
          this.gaps = [...this.gaps, gap].slice(-KEEP_GAPS);
          this.tell((listener) => listener.onGap?.(gap));
        },
      },
      { ...options.feed, history: options.history ?? 50, refreshToken: token },
    );
  }

  /** The cursor after the last event processed (`""` before the first): a valid `resumeAfter`. */
  get cursor(): string {
    return this.feed.cursor;
  }

  /**
   * Adds a listener; returns the function that removes this listener (and only it). A listener
   * added late hears what happens from then on: `recent`, `state` and `gaps` hold the past.
   */
  listen(listener: NotificationListener): () => void {
    // A wrapper per call, so the same object added twice is removed once per call.
    const own: NotificationListener = {
      onEvent: (event, origin) => listener.onEvent?.(event, origin),
      onState: (state) => listener.onState?.(state),
      onGap: (gap) => listener.onGap?.(gap),
    };
    this.listeners.add(own);
    return () => {
      this.listeners.delete(own);
    };
  }

  /**
   * Starts the subscription (a no-op when running). The first start reports history and then
   * goes live; a start after `stop()` resumes after the last cursor.
   */
  start(): void {
    if (this.started) return;
    this.started = true;
    const run = ++this.runs;
    const resume = this.feed.cursor !== "";
    // A start right after a stop (React's StrictMode mounts, unmounts and mounts again) reuses
    // the token being fetched rather than asking the app's session for another.
    const token = (this.pendingToken ??= (async () => {
      try {
        return await this.options.getToken();
      } finally {
        this.pendingToken = undefined;
      }
    })());
    void (async () => {
      let value: string;
      try {
        value = await token;
      } catch (error) {
        console.error("notify-backbone: no token to connect with", error);
        if (run === this.runs) this.started = false;
        return;
      }
      if (run !== this.runs || !this.started) return;
      await this.feed.start(value, this.selection, resume);
      if (run === this.runs) this.started = false;
    })();
  }

  /** Stops the subscription; listeners stay (a later `start()` resumes). */
  stop(): void {
    this.started = false;
    this.feed.stop();
  }

  private tell(each: (listener: NotificationListener) => void): void {
    // A copy: a listener may remove itself (or another) while being told.
    for (const listener of [...this.listeners]) {
      try {
        each(listener);
      } catch (error) {
        console.error("notify-backbone: a listener threw", error);
      }
    }
  }
}
