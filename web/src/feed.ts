// The subscription loop, without any DOM: subscribe, remember the last cursor, and on any end or
// transient error reconnect with exponential backoff and `resumeAfter` set to that cursor, so
// nothing is lost across a dropped connection. A bad token (or any other permanent error) stops
// the loop instead of retrying it forever.

import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Event } from "./gen/cloudphone/notify/v1/events_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type {
  Gap,
  NotificationService,
  SubscribeRequestSchema,
} from "./gen/cloudphone/notify/v1/service_pb";

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
}

/** The states the page shows. */
export type FeedState =
  | { state: "idle" }
  | { state: "connecting"; attempt: number }
  | { state: "live" }
  | { state: "reconnecting"; delayMs: number; error: ConnectError }
  | { state: "error"; error: ConnectError };

/** What the loop reports. */
export interface FeedCallbacks {
  onState(state: FeedState): void;
  onEvent(event: Event): void;
  onGap(gap: Gap): void;
}

/** Injectable for tests: timers and randomness. */
export interface FeedOptions {
  random?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

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

  constructor(
    private readonly client: Client<typeof NotificationService>,
    private readonly callbacks: FeedCallbacks,
    options: FeedOptions = {},
  ) {
    this.random = options.random ?? Math.random;
    this.sleep = options.sleep ?? abortableSleep;
  }

  /**
   * (Re)starts the loop with `token` and `selection`. With `resume`, continues after the last
   * cursor (a filter change); without, starts a fresh stream at the head (another feed).
   * Returns a promise that settles when this run ends (after `stop()` or a permanent error).
   */
  start(token: string, selection: Selection, resume: boolean): Promise<void> {
    this.stop();
    if (!resume) this.cursor = "";
    const run = new AbortController();
    this.run = run;
    return this.loop(token, selection, run.signal);
  }

  /** Stops the current run, if any, and reports `idle`. */
  stop(): void {
    if (this.run === undefined) return;
    this.run.abort();
    this.run = undefined;
    this.callbacks.onState({ state: "idle" });
  }

  private async loop(token: string, selection: Selection, signal: AbortSignal): Promise<void> {
    const headers = { authorization: `Bearer ${token}` };
    let attempt = 0;
    while (!signal.aborted) {
      this.callbacks.onState({ state: "connecting", attempt });
      let failure: ConnectError;
      try {
        const request: MessageInitShape<typeof SubscribeRequestSchema> = { ...selection, resumeAfter: this.cursor };
        for await (const response of this.client.subscribe(request, { signal, headers })) {
          const kind = response.kind;
          switch (kind.case) {
            case "event":
              if (kind.value.cursor !== "") this.cursor = kind.value.cursor;
              this.callbacks.onEvent(kind.value);
              break;
            case "caughtUp":
              if (kind.value.cursor !== "") this.cursor = kind.value.cursor;
              attempt = 0;
              this.callbacks.onState({ state: "live" });
              break;
            case "gap":
              if (kind.value.toCursor !== "") this.cursor = kind.value.toCursor;
              this.callbacks.onGap(kind.value);
              break;
            case "heartbeat":
              if (kind.value.cursor !== "") this.cursor = kind.value.cursor;
              break;
            default:
              break;
          }
        }
        failure = new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (error) {
        if (signal.aborted) return;
        failure = ConnectError.from(error);
      }
      if (signal.aborted) return;
      if (!isTransient(failure)) {
        this.callbacks.onState({ state: "error", error: failure });
        if (this.run?.signal === signal) this.run = undefined;
        return;
      }
      const delayMs = backoffDelay(attempt, this.random);
      attempt += 1;
      this.callbacks.onState({ state: "reconnecting", delayMs, error: failure });
      await this.sleep(delayMs, signal);
    }
  }
}
