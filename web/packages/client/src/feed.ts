// The subscription loop, without any DOM: subscribe, remember the last cursor, and on any end or
// transient error reconnect with exponential backoff and `resumeAfter` set to that cursor, so
// nothing is lost across a dropped connection. A stream that ends UNAUTHENTICATED (the token
// expired) continues at once with a token from `refreshToken`, when one is given; a bad token (or
// any other permanent error) stops the loop instead of retrying it forever. A connection that goes
// silent for longer than IDLE_TIMEOUT_MS counts as dropped (see there). The callbacks are the
// caller's business: one that throws is logged and the loop carries on, so only transport errors
// ever cause a reconnect. Inbox updates (`SubscribeResponse.inbox`) are passed on as they come:
// they carry no cursor and do not move the stream's position. A `Conflated` (with `conflate` or
// `maxEventsPerSecond`) moves the cursor to its `upToCursor`: the events it stands for were
// superseded, so resuming after it loses nothing the stream would still have sent.

import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Event } from "./gen/cloudphone/notify/v1/events_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { InboxUpdate } from "./gen/cloudphone/notify/v1/inbox_pb.js";
import type {
  Conflated,
  Gap,
  NotificationService,
  SubscribeRequestSchema,
  SubscribeResponse,
} from "./gen/cloudphone/notify/v1/service_pb.js";

/** Backoff parameters: the first delay, the factor per failed attempt, the cap, the jitter. */
export const BACKOFF = { initialMs: 500, factor: 2, maxMs: 10_000, jitter: 0.2 } as const;

/**
 * The delay before reconnection attempt `attempt` (0 for the first retry): 500 ms × 2^attempt,
 * at most 10 s, then ±20% jitter (`random` returns [0, 1)), never above the cap.
 */
export function backoffDelay(attempt: number, random: () => number = Math.random): number {
  const base = Math.min(BACKOFF.initialMs * BACKOFF.factor ** Math.max(0, attempt), BACKOFF.maxMs);
  const jittered = base * (1 - BACKOFF.jitter + 2 * BACKOFF.jitter * random());
  return Math.round(Math.min(jittered, BACKOFF.maxMs));
}

/**
 * How long a stream may stay silent before it is taken for dead: 3 × the server's default
 * heartbeat interval (`--heartbeat-interval`, 15 s), so that two lost or late heartbeats are
 * tolerated. A connection that died without a FIN or RST (a NAT or proxy dropping it, a laptop
 * waking from sleep) yields no error at all: without this watchdog the page would stay "live"
 * while receiving nothing. A server configured with a heartbeat interval above 15 s needs a
 * matching `idleTimeoutMs`.
 */
export const IDLE_TIMEOUT_MS = 45_000;

/** Status codes worth retrying: the server or the network may recover by itself. */
const TRANSIENT: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.Internal,
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.ResourceExhausted,
  Code.Aborted,
]);

/** Whether a subscription that failed with `error` should be retried. */
export function isTransient(error: ConnectError): boolean {
  return TRANSIENT.has(error.code);
}

/** What the user asked to see; everything but the cursor of a `SubscribeRequest`. */
export interface Selection {
  eventTypes: string[];
  deviceId: string;
  userId: string;
  adminFeed: boolean;
  /** Also the inbox's updates (`SubscribeRequest.inbox`; default false: none). */
  inbox?: boolean;
  /**
   * Storm control (`SubscribeRequest.conflate`; default false: every event). While the stream is
   * behind (catching up after a reconnect, or events waiting for a slow reader), the server skips
   * a state event that a later one of the same key supersedes (`quota.updated` by quota;
   * `device.started`, `device.stopped`, `device.status.changed` by device) and says so with a
   * `Conflated` message (`FeedCallbacks.onConflated`); change events (payments, errors,
   * installs…) always come. On an admin-feed stream, a burst of admin notices of one source type
   * and cause comes as one notice (`AdminNotice.count` ≥ 2, `sampleEventIds`). For views that
   * show the latest state (a browser console, a dashboard); not for a service that must see
   * every event.
   */
  conflate?: boolean;
  /**
   * At most this many events a second (`SubscribeRequest.max_events_per_second`; default 0: as
   * fast as they come), a whole number. Events over the rate wait; while they wait, superseded
   * state events are skipped (reported by `Conflated`, as with `conflate`); others are only
   * delayed, never dropped. For a view that cannot usefully render faster (a wallboard).
   */
  maxEventsPerSecond?: number;
}

/**
 * Why `selection` cannot be sent, or undefined when it can. A `maxEventsPerSecond` that is not a
 * uint32 would fail to encode on every attempt, which the loop would take for a transient error
 * and retry forever: it is refused up front instead.
 */
function invalidSelection(selection: Selection): string | undefined {
  const rate = selection.maxEventsPerSecond;
  if (rate === undefined || (Number.isInteger(rate) && rate >= 0 && rate <= 0xffff_ffff)) return undefined;
  return `maxEventsPerSecond must be a whole number from 0 to 4294967295, not ${rate}`;
}

/** The states the page shows. */
export type FeedState =
  | { state: "idle" }
  | { state: "connecting"; attempt: number }
  | { state: "live" }
  | { state: "reconnecting"; delayMs: number; error: ConnectError }
  | { state: "error"; error: ConnectError };

/** Where a reported event comes from. */
export interface EventOrigin {
  /**
   * True for the first paint's history (`FeedOptions.history`): events from before the feed
   * started, which caches loaded after them already reflect. False for everything the stream
   * sends, replayed after a reconnect included.
   */
  history: boolean;
}

/** What the loop reports. */
export interface FeedCallbacks {
  onState(state: FeedState): void;
  onEvent(event: Event, origin: EventOrigin): void;
  onGap(gap: Gap): void;
  /** An inbox changed (on streams of the caller's own events, or an admin's admin feed). */
  onInbox?(update: InboxUpdate): void;
  /**
   * With `conflate` or `maxEventsPerSecond`: the server left `skipped` superseded state events
   * out, all at or before `upToCursor` (a later event of the same key came or will come instead).
   * The cursor has moved to `upToCursor` already. For showing that a view was thinned out, or
   * counting it; nothing needs to be fetched again.
   */
  onConflated?(conflated: Conflated): void;
  /**
   * Every message of the stream, once the callbacks above had it and the cursor moved past it:
   * for passing the stream on (the tab holding a stream shared by several tabs re-broadcasts
   * them). Not called for messages given to `accept`.
   */
  onResponse?(response: SubscribeResponse): void;
}

/** Arms a one-shot timer calling `onTimeout` after `ms`; returns the function that disarms it. */
export type SetTimer = (ms: number, onTimeout: () => void) => () => void;

/** Injectable for tests: timers and randomness. */
export interface FeedOptions {
  random?: () => number;
  /** The wait between reconnection attempts; must resolve early when `signal` aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** The dead-connection watchdog's timer (default: setTimeout). */
  setTimer?: SetTimer;
  /** Silence after which the current attempt is abandoned (default: IDLE_TIMEOUT_MS). */
  idleTimeoutMs?: number;
  /**
   * Events of history to show on a fresh start (default 0: none). The newest ones are read
   * with `ListEvents { newestFirst }` and reported through `onEvent`, oldest first, then the
   * stream starts at the page's `headCursor`: nothing between the two is missed or repeated.
   * Not for the admin feed, which `ListEvents` does not serve.
   */
  history?: number;
  /**
   * Called when the server ends the stream with UNAUTHENTICATED (at the token's expiry): the
   * feed resumes at once after its cursor with the token this resolves to, so nothing is lost.
   * A fresh token refused before the server sent anything, or a rejected promise, stops the feed
   * with the `error` state. Without it, UNAUTHENTICATED stops the feed.
   */
  refreshToken?: () => Promise<string>;
}

const STREAM: EventOrigin = { history: false };
const HISTORY: EventOrigin = { history: true };

const realTimer: SetTimer = (ms, onTimeout) => {
  const timer = setTimeout(onTimeout, ms);
  return () => clearTimeout(timer);
};

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

/** A live subscription that keeps itself connected until `stop()`. */
export class Feed {
  /** The last position processed: a valid `resumeAfter`, `""` before the first. */
  cursor = "";
  private run: AbortController | undefined;
  private readonly random: () => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly setTimer: SetTimer;
  private readonly idleTimeoutMs: number;
  private readonly history: number;
  private readonly refreshToken: (() => Promise<string>) | undefined;

  constructor(
    private readonly client: Client<typeof NotificationService>,
    private readonly callbacks: FeedCallbacks,
    options: FeedOptions = {},
  ) {
    this.random = options.random ?? Math.random;
    this.sleep = options.sleep ?? abortableSleep;
    this.setTimer = options.setTimer ?? realTimer;
    this.idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    this.history = options.history ?? 0;
    this.refreshToken = options.refreshToken;
  }

  /**
   * (Re)starts the loop with `token` and `selection`. With `resume`, continues after the last
   * cursor (only right for the same selection: a different one would skip whatever it matches
   * before that cursor); without, starts a fresh stream at the head.
   * Returns a promise that settles when this run ends (after `stop()` or a permanent error).
   */
  start(token: string, selection: Selection, resume: boolean): Promise<void> {
    this.stop();
    if (!resume) this.cursor = "";
    const invalid = invalidSelection(selection);
    if (invalid !== undefined) {
      this.report("onState", { state: "error", error: new ConnectError(invalid, Code.InvalidArgument) });
      return Promise.resolve();
    }
    const run = new AbortController();
    this.run = run;
    return this.loop(token, selection, run.signal);
  }

  /** Stops the current run, if any, and reports `idle`. */
  stop(): void {
    if (this.run === undefined) return;
    this.run.abort();
    this.run = undefined;
    this.report("onState", { state: "idle" });
  }

  /**
   * Calls a callback, logging what it throws: a rendering bug must neither stop the loop nor pass
   * for a transport error (which would reconnect, and replay the same event into the same bug).
   */
  private report<K extends keyof FeedCallbacks>(
    name: K,
    value: Parameters<NonNullable<FeedCallbacks[K]>>[0],
    origin: EventOrigin = STREAM,
  ): void {
    try {
      const callback = this.callbacks[name] as
        | ((value: Parameters<NonNullable<FeedCallbacks[K]>>[0], origin: EventOrigin) => void)
        | undefined;
      callback?.call(this.callbacks, value, origin);
    } catch (error) {
      console.error(`notify-backbone: the feed's ${name} callback threw`, error);
    }
  }

  /**
   * Reports the newest `history` events, oldest first, and moves the cursor to the head they
   * were read at. On failure the stream simply starts at the head, as without history: the
   * history is a first paint, never a reason not to go live.
   */
  private async paintHistory(
    selection: Selection,
    headers: { authorization: string },
    signal: AbortSignal,
  ): Promise<void> {
    this.report("onState", { state: "connecting", attempt: 0 });
    const request = {
      userId: selection.userId,
      eventTypes: selection.eventTypes,
      deviceId: selection.deviceId,
      newestFirst: true,
      limit: this.history,
    };
    // A token that expired before the feed started gets one refresh, as on the stream.
    for (let tries = 0; ; tries++) {
      try {
        const page = await this.client.listEvents(request, { signal, headers });
        if (signal.aborted) return;
        for (const event of [...page.events].reverse()) this.report("onEvent", event, HISTORY);
        if (page.headCursor !== "") this.cursor = page.headCursor;
        return;
      } catch (error) {
        if (signal.aborted) return;
        const failure = ConnectError.from(error);
        if (failure.code === Code.Unauthenticated && this.refreshToken !== undefined && tries === 0) {
          if ((await this.refresh(headers)) === undefined && !signal.aborted) continue;
        }
        if (!signal.aborted) console.warn("notify-backbone: no history for the first paint", error);
        return;
      }
    }
  }

  /**
   * Puts a fresh token from `refreshToken` into `headers`; the error to stop with when there is
   * none, `undefined` when it worked.
   */
  private async refresh(headers: { authorization: string }): Promise<ConnectError | undefined> {
    if (this.refreshToken === undefined) return new ConnectError("the token expired", Code.Unauthenticated);
    try {
      headers.authorization = `Bearer ${await this.refreshToken()}`;
      return undefined;
    } catch (error) {
      return new ConnectError(`the token could not be refreshed: ${String(error)}`, Code.Unauthenticated);
    }
  }

  /**
   * Processes a message of this feed's stream that arrived some other way (from the tab that
   * holds a stream shared by several tabs): the cursor moves past it and the callbacks hear of
   * it exactly as if this feed had received it, `CaughtUp` reporting `live`.
   */
  accept(response: SubscribeResponse): void {
    this.handle(response);
  }

  /** Moves the cursor past `response` and reports it; true for `CaughtUp`. */
  private handle(response: SubscribeResponse): boolean {
    const kind = response.kind;
    switch (kind.case) {
      case "event":
        if (kind.value.cursor !== "") this.cursor = kind.value.cursor;
        this.report("onEvent", kind.value);
        return false;
      case "caughtUp":
        if (kind.value.cursor !== "") this.cursor = kind.value.cursor;
        this.report("onState", { state: "live" });
        return true;
      case "gap":
        if (kind.value.toCursor !== "") this.cursor = kind.value.toCursor;
        this.report("onGap", kind.value);
        return false;
      case "heartbeat":
        if (kind.value.cursor !== "") this.cursor = kind.value.cursor;
        return false;
      case "inbox":
        this.report("onInbox", kind.value);
        return false;
      case "conflated":
        // Everything up to it was delivered or superseded: a valid resume point, so a reconnect
        // does not ask for the skipped events (or the ones before them) again.
        if (kind.value.upToCursor !== "") this.cursor = kind.value.upToCursor;
        this.report("onConflated", kind.value);
        return false;
      default:
        return false;
    }
  }

  private async loop(token: string, selection: Selection, signal: AbortSignal): Promise<void> {
    const headers = { authorization: `Bearer ${token}` };
    if (this.cursor === "" && this.history > 0 && !selection.adminFeed) {
      await this.paintHistory(selection, headers, signal);
    }
    let attempt = 0;
    // Whether the token was just refreshed and the server has not answered with it yet: a fresh
    // token refused at once is not refreshed again (that would loop on a broken token source).
    let refreshed = false;
    while (!signal.aborted) {
      this.report("onState", { state: "connecting", attempt });
      let failure: ConnectError;
      // This attempt's own signal: aborted by the run's (stop, restart) or by the watchdog.
      const current = new AbortController();
      const abortCurrent = (): void => current.abort();
      signal.addEventListener("abort", abortCurrent);
      // The watchdog: re-armed on every message (CaughtUp comes first and heartbeats follow on an
      // idle stream), it fires only after IDLE_TIMEOUT_MS of silence.
      let silent = false;
      let disarm = (): void => {};
      const rearm = (): void => {
        disarm();
        disarm = this.setTimer(this.idleTimeoutMs, () => {
          silent = true;
          current.abort();
        });
      };
      rearm();
      try {
        const request: MessageInitShape<typeof SubscribeRequestSchema> = { ...selection, resumeAfter: this.cursor };
        const options = { signal: current.signal, headers };
        for await (const response of this.client.subscribe(request, options)) {
          rearm();
          refreshed = false;
          if (this.handle(response)) attempt = 0;
          this.report("onResponse", response);
        }
        failure = new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (error) {
        if (signal.aborted) return;
        failure = ConnectError.from(error);
      } finally {
        disarm();
        signal.removeEventListener("abort", abortCurrent);
      }
      if (signal.aborted) return;
      if (silent) {
        // Whatever the aborted call threw (Canceled, usually), this is a dead connection: retry
        // it like a dropped one, resuming after the last cursor.
        const seconds = Math.round(this.idleTimeoutMs / 1000);
        failure = new ConnectError(`no message from the server for ${seconds} s`, Code.DeadlineExceeded);
      }
      if (failure.code === Code.Unauthenticated && this.refreshToken !== undefined && !refreshed) {
        // The token expired (the server ends a stream at its `exp`): continue at once with a
        // fresh one, after the same cursor. No backoff: nothing is wrong with the server.
        this.report("onState", { state: "connecting", attempt });
        const refused = await this.refresh(headers);
        if (signal.aborted) return;
        if (refused === undefined) {
          refreshed = true;
          continue;
        }
        failure = refused;
      }
      if (failure.code !== Code.Unauthenticated) {
        // Only a fresh token refused at once stops the feed: after any other failure, the next
        // expiry (a later token's, maybe during an outage) is refreshed again.
        refreshed = false;
      }
      if (!isTransient(failure)) {
        this.report("onState", { state: "error", error: failure });
        if (this.run?.signal === signal) this.run = undefined;
        return;
      }
      const delayMs = backoffDelay(attempt, this.random);
      attempt += 1;
      this.report("onState", { state: "reconnecting", delayMs, error: failure });
      await this.sleep(delayMs, signal);
    }
  }
}
