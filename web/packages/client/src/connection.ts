// One subscription shared by many listeners: what an app holds once (a console's React provider,
// a page) while its parts come and go. The feed underneath resumes by cursor, backs off, watches
// for silence and refreshes the token; this adds the listeners, each removed on its own (removing
// one never removes another's), the state, recent events and storm-control skips a view starts
// from, the tab's token (shared by its stream and its calls), its inboxes' state, and one stream
// per browser rather than per tab where the browser can elect a tab to hold it (`tabs.ts`).

import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Event } from "./gen/cloudphone/notify/v1/events_pb.js";
import { InboxMark, InboxUpdateReason, type InboxUpdate } from "./gen/cloudphone/notify/v1/inbox_pb.js";
import { NotificationService, type Conflated, type Gap } from "./gen/cloudphone/notify/v1/service_pb.js";
import {
  Feed,
  type EventOrigin,
  type FeedCallbacks,
  type FeedOptions,
  type FeedState,
  type Selection,
} from "./feed.js";
import { InboxApi, InboxState } from "./inbox.js";
import { browserTabSharing, sharedStreamName, TabShare, type TabSharing, type TabSnapshot } from "./tabs.js";
import { subjectOf, TokenCache } from "./tokens.js";

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
  /** An inbox of this connection's user (or admin) changed; `InboxState` applies these already. */
  onInbox?(update: InboxUpdate): void;
  /**
   * With `selection.conflate` or `maxEventsPerSecond`: the server skipped superseded state events
   * (see `FeedCallbacks.onConflated`); `skipped` already counts them.
   */
  onConflated?(conflated: Conflated): void;
}

/** How tabs share one stream (`NotificationsOptions.tabs`). */
export interface TabsOptions {
  /** Where the lock and the channel come from (default: the browser's; for tests). */
  sharing?: TabSharing;
  /** The name of the lock and channel (default: from `server`, the token's user and the selection). */
  name?: string;
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
  /**
   * What the server sends: by default every event the token may see (its user's, or the admin
   * feed), and the inbox's updates for `inbox()` (`inbox: false` turns them off). `conflate` and
   * `maxEventsPerSecond` are off unless given (`@notify-backbone/react` turns `conflate` on).
   */
  selection?: Partial<Selection>;
  /** Events of history reported on a fresh start, oldest first, before the live ones (default 50). */
  history?: number;
  /** How many recent events `recent` keeps (default 200). */
  keep?: number;
  /** Passed on to the feed (timers, idle timeout; for tests). */
  feed?: Omit<FeedOptions, "history" | "refreshToken">;
  /**
   * The server's address (what `createNotificationClient` was given): with the token's user and
   * the selection, it names the stream the tabs of a browser share.
   */
  server?: string;
  /**
   * One stream per browser, not per tab: one tab (elected by a Web Lock named after the server,
   * the user and the selection) opens the stream and passes every message on to the others on a
   * BroadcastChannel; when it goes, another takes over after the last cursor. Every tab keeps its
   * own token for its own calls. On by default where `navigator.locks` and `BroadcastChannel`
   * exist and the token is a JWT with a `sub` (or `name` is given); `false`: a stream per tab.
   */
  tabs?: false | TabsOptions;
}

/** Gaps kept for views that open later: the latest ones only. */
const KEEP_GAPS = 20;

/** Event ids remembered in a shared stream, to drop one that a new holder's stream repeats. */
const KEEP_IDS = 1000;

const HISTORY: EventOrigin = { history: true };

/** `update` as the state it leaves (what a newcomer tab is told). */
function asState(update: InboxUpdate): InboxUpdate {
  return {
    ...update,
    reason: InboxUpdateReason.STATE,
    mark: InboxMark.UNSPECIFIED,
    ids: [],
    upToCursor: "",
    all: false,
    quiet: false,
  };
}

/** One shared subscription with any number of listeners. */
export class Notifications {
  /** The feed's latest state. */
  state: FeedState = { state: "idle" };
  /** The latest events, oldest first (at most `keep`); replaced, never mutated, on each event. */
  recent: readonly Event[] = [];
  /** The latest gaps reported (at most 20); replaced on each gap. */
  gaps: readonly Gap[] = [];
  /**
   * How many superseded state events the server left out of this tab's stream (the sum of the
   * `Conflated.skipped` it heard, from its own stream or the one it follows), since this
   * connection was made; 0 without `conflate` or `maxEventsPerSecond`. Each skipped event's
   * latest state did arrive: this says how much a storm was thinned out, not what is missing.
   */
  skipped = 0;
  /** This tab's token, for its stream and its calls. */
  readonly tokens: TokenCache;
  /** The inbox's calls with this tab's token. */
  readonly inboxApi: InboxApi;
  private readonly listeners = new Set<NotificationListener>();
  private readonly feed: Feed;
  private readonly keep: number;
  private readonly history: number;
  private readonly selection: Selection;
  private readonly inboxes: readonly [InboxState, InboxState];
  /** The latest inbox update of each inbox, for tabs that join. */
  private readonly lastInbox = new Map<boolean, InboxUpdate>();
  private started = false;
  /** Counts starts, so a run that ends late does not mark a newer one as stopped. */
  private runs = 0;
  /** The token the stream runs with. */
  private streamToken: string | undefined;
  /** This tab's part in a stream shared by tabs, while it takes part. */
  private share: TabShare | undefined;
  private readonly seenIds = new Set<string>();
  private seenOrder: string[] = [];

  constructor(private readonly options: NotificationsOptions) {
    this.keep = options.keep ?? 200;
    this.history = options.history ?? 50;
    this.selection = {
      eventTypes: [],
      deviceId: "",
      userId: "",
      adminFeed: false,
      inbox: true,
      ...options.selection,
    };
    this.tokens = new TokenCache(options.getToken);
    this.inboxApi = new InboxApi(options.client, this.tokens);
    this.inboxes = [new InboxState(this.inboxApi, false), new InboxState(this.inboxApi, true)];
    const callbacks: FeedCallbacks = {
      onState: (state) => {
        this.setState(state);
        this.share?.broadcastState(state);
      },
      onEvent: (event, origin) => this.addEvent(event, origin),
      onGap: (gap) => {
        this.gaps = [...this.gaps, gap].slice(-KEEP_GAPS);
        this.tell((listener) => listener.onGap?.(gap));
      },
      onInbox: (update) => this.addInbox(update),
      onConflated: (conflated) => {
        // A number, not the message's uint64: a tab would need 2^53 skips to lose precision.
        this.skipped += Number(conflated.skipped);
        this.tell((listener) => listener.onConflated?.(conflated));
      },
      // Every kind of message, `Conflated` included, goes to the tabs that follow this one: their
      // feeds move their cursors past it and count its skips exactly as this one did.
      onResponse: (response) => {
        this.share?.broadcast(response);
        this.share?.answer();
      },
    };
    const refreshToken = async (): Promise<string> => {
      this.streamToken = await this.tokens.fresh(this.streamToken);
      return this.streamToken;
    };
    this.feed = new Feed(options.client, callbacks, { ...options.feed, history: this.history, refreshToken });
  }

  /** The cursor after the last event processed (`""` before the first): a valid `resumeAfter`. */
  get cursor(): string {
    return this.feed.cursor;
  }

  /** The user's inbox (or, with `adminInbox`, this admin's admin inbox): counts, optimistic marks. */
  inbox(options: { adminInbox?: boolean } = {}): InboxState {
    return this.inboxes[options.adminInbox === true ? 1 : 0];
  }

  /**
   * The stream shared with other tabs, while this tab takes part in one: its name, and whether
   * this tab holds it. Undefined for a stream of this tab's own.
   */
  get sharedStream(): { name: string; leading: boolean } | undefined {
    const share = this.share;
    return share === undefined ? undefined : { name: share.name, leading: share.leading };
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
      onInbox: (update) => listener.onInbox?.(update),
      onConflated: (conflated) => listener.onConflated?.(conflated),
    };
    this.listeners.add(own);
    return () => {
      this.listeners.delete(own);
    };
  }

  /**
   * Starts the subscription (a no-op when running). The first start reports history and then
   * goes live; a start after `stop()` resumes after the last cursor. Where tabs share a stream,
   * this tab joins them: it follows the tab holding the stream (history first: that tab's recent
   * events), and holds it itself when that tab goes.
   */
  start(): void {
    if (this.started) return;
    this.started = true;
    const run = ++this.runs;
    const resume = this.feed.cursor !== "";
    void (async () => {
      // The tab's token, shared with its calls: a start right after a stop (React's StrictMode
      // mounts, unmounts and mounts again) reuses the one being fetched rather than asking the
      // app's session for another; one that expired meanwhile is replaced when the server says so.
      let token: string;
      try {
        token = await this.tokens.current();
      } catch (error) {
        console.error("notify-backbone: no token to connect with", error);
        if (run === this.runs) this.started = false;
        return;
      }
      if (run !== this.runs || !this.started) return;
      const share = this.shareFor(token, run);
      if (share !== undefined) {
        this.share = share;
        this.setState({ state: "connecting", attempt: 0 });
        share.start();
        return;
      }
      this.streamToken = token;
      await this.feed.start(token, this.selection, resume);
      if (run === this.runs) this.started = false;
    })();
  }

  /** Stops the subscription; listeners stay (a later `start()` resumes). */
  stop(): void {
    this.started = false;
    const share = this.share;
    this.share = undefined;
    share?.stop();
    this.feed.stop();
    // A tab that followed another's stream had no feed of its own to report this.
    if (share !== undefined && this.state.state !== "idle" && this.state.state !== "error") {
      this.setState({ state: "idle" });
    }
  }

  /** This tab's part in a shared stream, or undefined for a stream of its own. */
  private shareFor(token: string, run: number): TabShare | undefined {
    const tabs = this.options.tabs;
    if (tabs === false) return undefined;
    const sharing = tabs?.sharing ?? browserTabSharing();
    if (sharing === undefined) return undefined;
    let name = tabs?.name;
    if (name === undefined) {
      const user = subjectOf(token);
      if (user === undefined) return undefined;
      name = sharedStreamName(this.options.server ?? "", user, this.selection);
    }
    const current = () => run === this.runs && this.started;
    return new TabShare(
      name,
      sharing,
      {
        lead: async () => {
          if (!current()) return;
          // After the last cursor this tab saw (the previous holder's), or fresh when it saw none.
          const resume = this.feed.cursor !== "";
          let token: string;
          try {
            token = await this.tokens.current();
          } catch (error) {
            // No stream without a token: the lock goes to the next tab.
            console.error("notify-backbone: no token to connect with", error);
            if (run === this.runs) this.started = false;
            return;
          }
          if (!current()) return;
          this.streamToken = token;
          await this.feed.start(token, this.selection, resume);
          if (run === this.runs) this.started = false;
        },
        snapshot: (history) => this.snapshot(history),
        welcome: (snapshot) => {
          if (!current()) return;
          this.feed.cursor = snapshot.cursor;
          for (const event of snapshot.events) this.addEvent(event, HISTORY);
          for (const update of snapshot.inbox) this.addInbox(update);
          this.mirror(snapshot.state);
        },
        accept: (response) => {
          if (current()) this.feed.accept(response);
        },
        mirror: (state) => {
          if (current()) this.mirror(state);
        },
      },
      this.history,
    );
  }

  private snapshot(history: number): TabSnapshot | undefined {
    if (this.feed.cursor === "") return undefined;
    return {
      cursor: this.feed.cursor,
      events: history > 0 ? this.recent.slice(-history) : [],
      inbox: [...this.lastInbox.values()].map(asState),
      state: this.state,
    };
  }

  /** The holder's state, shown by a tab that follows it (its errors are not this tab's). */
  private mirror(state: FeedState): void {
    if (state.state === "idle" || state.state === "error") return;
    this.setState(state);
  }

  private setState(state: FeedState): void {
    this.state = state;
    for (const inbox of this.inboxes) inbox.streamState(state);
    this.tell((listener) => listener.onState?.(state));
  }

  private addEvent(event: Event, origin: EventOrigin): void {
    if (this.share !== undefined && event.id !== "") {
      // A tab that takes over resumes after the last cursor it saw, which may be before the last
      // one another follower saw: that follower drops what it hears twice.
      if (this.seenIds.has(event.id)) return;
      this.seenIds.add(event.id);
      this.seenOrder.push(event.id);
      if (this.seenOrder.length > KEEP_IDS) {
        for (const old of this.seenOrder.splice(0, this.seenOrder.length - KEEP_IDS)) this.seenIds.delete(old);
      }
    }
    const recent = [...this.recent, event];
    this.recent = recent.length > this.keep ? recent.slice(recent.length - this.keep) : recent;
    this.tell((listener) => listener.onEvent?.(event, origin));
  }

  private addInbox(update: InboxUpdate): void {
    this.lastInbox.set(update.adminInbox, update);
    this.inboxes[update.adminInbox ? 1 : 0].receive(update);
    this.tell((listener) => listener.onInbox?.(update));
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
