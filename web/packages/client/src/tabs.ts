// One stream per browser, not per tab: the tabs of one server, user and selection elect a holder
// with a Web Lock; the holder opens the Subscribe stream and re-broadcasts every message, encoded,
// on a BroadcastChannel of the same name; the others listen. When the holder goes (its tab closes:
// the browser releases the lock; or its connection stops), the next tab in the lock's queue opens
// the stream, resuming after the last cursor it saw, so nothing is lost or repeated.
//
// A tab that joins asks for the state so far (`hello`); the holder answers (`welcome`) with its
// recent events, its cursor and the latest inbox counts, and everything it broadcasts after that
// answer is newer than it (one sender's messages arrive in order): the newcomer drops whatever came
// before its welcome. Cursors are never compared here, only passed on.
//
// This owns the election and the channel's messages; what a tab does with them (its feed, its
// listeners, its token: each tab keeps its own for its calls) is `Notifications`' business.

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { EventSchema, type Event } from "./gen/cloudphone/notify/v1/events_pb.js";
import { InboxUpdateSchema, type InboxUpdate } from "./gen/cloudphone/notify/v1/inbox_pb.js";
import { SubscribeResponseSchema, type SubscribeResponse } from "./gen/cloudphone/notify/v1/service_pb.js";
import type { FeedState, Selection } from "./feed.js";

/** The part of `navigator.locks` used here. */
export interface TabLocks {
  /** Calls `callback` once the lock `name` is held; it is held until the callback's promise settles. */
  request(name: string, options: { signal: AbortSignal }, callback: () => Promise<void>): Promise<unknown>;
}

/** A channel to every other tab (a `BroadcastChannel`): never delivers a tab's own messages to it. */
export interface TabChannel {
  post(message: unknown): void;
  listen(receive: (message: unknown) => void): void;
  close(): void;
}

/** What tabs share a stream with: a lock manager and channels by name. */
export interface TabSharing {
  locks: TabLocks;
  channel(name: string): TabChannel;
}

/** A `BroadcastChannel` as a `TabChannel`. */
export function broadcastChannel(name: string): TabChannel {
  const channel = new BroadcastChannel(name);
  return {
    post: (message) => channel.postMessage(message),
    listen: (receive) => {
      channel.onmessage = (event: MessageEvent) => receive(event.data);
    },
    close: () => channel.close(),
  };
}

/** The browser's Web Locks and BroadcastChannel, or `undefined` where either is missing. */
export function browserTabSharing(): TabSharing | undefined {
  const locks = (globalThis as { navigator?: { locks?: unknown } }).navigator?.locks;
  if (typeof locks !== "object" || locks === null || typeof BroadcastChannel !== "function") return undefined;
  const manager = locks as { request(name: string, options: object, callback: () => Promise<void>): Promise<unknown> };
  return {
    locks: { request: (name, options, callback) => manager.request(name, options, callback) },
    channel: broadcastChannel,
  };
}

/**
 * The name of the lock and channel of a stream: server, user and selection. Storm control is part
 * of it: a tab that asked for every event must not follow a stream that skips some.
 */
export function sharedStreamName(server: string, user: string, selection: Selection): string {
  const key = JSON.stringify([
    server,
    user,
    [...selection.eventTypes].sort(),
    selection.deviceId,
    selection.userId,
    selection.adminFeed,
    selection.inbox ?? false,
    selection.conflate ?? false,
    selection.maxEventsPerSecond ?? 0,
  ]);
  return `notify-backbone ${key}`;
}

/** What the holder tells a newcomer. */
export interface TabSnapshot {
  /** The holder's cursor: a valid `resumeAfter`. */
  cursor: string;
  /** Its recent events, oldest first. */
  events: Event[];
  /** The latest update of each inbox (user, admin) it has seen. */
  inbox: InboxUpdate[];
  state: FeedState;
}

/** What a tab does in the shared stream. */
export interface TabPeer {
  /** This tab holds the lock: open the stream. Resolves when it stops (the lock is released then). */
  lead(): Promise<void>;
  /** What to tell a newcomer that wants `history` events, or undefined until there is a cursor. */
  snapshot(history: number): TabSnapshot | undefined;
  /** The holder's answer to this tab's `hello`. */
  welcome(snapshot: TabSnapshot): void;
  /** A message of the shared stream. */
  accept(response: SubscribeResponse): void;
  /** The holder's stream changed state. */
  mirror(state: FeedState): void;
}

type WireState =
  | { state: "idle" | "live" }
  | { state: "connecting"; attempt: number }
  | { state: "reconnecting" | "error"; delayMs: number; code: number; message: string };

type TabMessage =
  | { kind: "hello"; from: string; history: number }
  | { kind: "leader" }
  | {
      kind: "welcome";
      to: string;
      cursor: string;
      events: Uint8Array[];
      inbox: Uint8Array[];
      state: WireState;
    }
  | { kind: "response"; bytes: Uint8Array }
  | { kind: "state"; state: WireState };

function toWire(state: FeedState): WireState {
  switch (state.state) {
    case "connecting":
      return { state: "connecting", attempt: state.attempt };
    case "reconnecting":
      return { state: "reconnecting", delayMs: state.delayMs, code: state.error.code, message: state.error.rawMessage };
    case "error":
      return { state: "error", delayMs: 0, code: state.error.code, message: state.error.rawMessage };
    default:
      return { state: state.state };
  }
}

function fromWire(state: WireState): FeedState {
  switch (state.state) {
    case "connecting":
      return { state: "connecting", attempt: state.attempt };
    case "reconnecting":
      return { state: "reconnecting", delayMs: state.delayMs, error: new ConnectError(state.message, state.code as Code) };
    case "error":
      return { state: "error", error: new ConnectError(state.message, state.code as Code) };
    default:
      return { state: state.state };
  }
}

function isMessage(data: unknown): data is TabMessage {
  return typeof data === "object" && data !== null && typeof (data as { kind?: unknown }).kind === "string";
}

/** One tab's part in a shared stream, from `start()` to `stop()`. */
export class TabShare {
  /** Whether this tab holds the lock (and the stream). */
  leading = false;
  private readonly id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  private readonly abort = new AbortController();
  private channel: TabChannel | undefined;
  private release: (() => void) | undefined;
  private welcomed = false;
  private stopped = false;
  /** Newcomers waiting for the holder's first cursor. */
  private waiting: { from: string; history: number }[] = [];

  constructor(
    readonly name: string,
    private readonly sharing: TabSharing,
    private readonly peer: TabPeer,
    private readonly history: number,
  ) {}

  /** Joins: listens, asks the holder for the state so far, and queues for the lock. */
  start(): void {
    const channel = this.sharing.channel(this.name);
    this.channel = channel;
    channel.listen((message) => this.receive(message));
    this.hello();
    this.sharing.locks
      .request(this.name, { signal: this.abort.signal }, () => this.hold())
      .catch((error: unknown) => {
        // Aborted by `stop()` before the lock came: nothing to do.
        if (!this.stopped) console.error("notify-backbone: the shared stream's lock failed", error);
      });
  }

  /** Leaves: gives the lock (and the stream) up, or leaves the queue for it. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.leading = false;
    this.abort.abort();
    this.release?.();
    this.channel?.close();
  }

  /** The holder passes a message of its stream on. */
  broadcast(response: SubscribeResponse): void {
    if (!this.leading) return;
    this.post({ kind: "response", bytes: toBinary(SubscribeResponseSchema, response) });
  }

  /** The holder's stream changed state; also answers newcomers once there is a cursor. */
  broadcastState(state: FeedState): void {
    if (!this.leading) return;
    // Not `idle` or `error`: those end this tab's stream, and another tab takes over.
    if (state.state !== "idle" && state.state !== "error") this.post({ kind: "state", state: toWire(state) });
    this.answer();
  }

  /** Answers the newcomers that are waiting, if there is a cursor by now. */
  answer(): void {
    if (!this.leading) return;
    const still: { from: string; history: number }[] = [];
    for (const hello of this.waiting) {
      const snapshot = this.peer.snapshot(hello.history);
      if (snapshot === undefined) {
        still.push(hello);
        continue;
      }
      this.post({
        kind: "welcome",
        to: hello.from,
        cursor: snapshot.cursor,
        events: snapshot.events.map((event) => toBinary(EventSchema, event)),
        inbox: snapshot.inbox.map((update) => toBinary(InboxUpdateSchema, update)),
        state: toWire(snapshot.state),
      });
    }
    this.waiting = still;
  }

  private hello(): void {
    this.post({ kind: "hello", from: this.id, history: this.history });
  }

  private post(message: TabMessage): void {
    if (this.stopped) return;
    try {
      this.channel?.post(message);
    } catch (error) {
      console.error("notify-backbone: could not pass a message to the other tabs", error);
    }
  }

  private async hold(): Promise<void> {
    if (this.stopped) return;
    const released = new Promise<void>((resolve) => (this.release = resolve));
    this.leading = true;
    this.post({ kind: "leader" });
    // Ends when the stream stops for good (a refused token: let another tab try with its own)
    // or when this tab stops; either way the lock goes to the next tab.
    const led = this.peer.lead().catch((error: unknown) => {
      console.error("notify-backbone: the shared stream failed", error);
    });
    await Promise.race([led, released]);
    this.stop();
  }

  private receive(data: unknown): void {
    if (this.stopped || !isMessage(data)) return;
    switch (data.kind) {
      case "hello":
        // Only the holder answers; a tab that takes over later says so, and is asked again.
        if (!this.leading) return;
        this.waiting.push({ from: data.from, history: data.history });
        this.answer();
        return;
      case "leader":
        // A new holder that may not have heard this tab's hello (it was listening, not holding).
        if (!this.welcomed && !this.leading) this.hello();
        return;
      case "welcome":
        if (data.to !== this.id || this.welcomed || this.leading) return;
        this.welcomed = true;
        this.peer.welcome({
          cursor: data.cursor,
          events: data.events.map((bytes) => fromBinary(EventSchema, bytes)),
          inbox: data.inbox.map((bytes) => fromBinary(InboxUpdateSchema, bytes)),
          state: fromWire(data.state),
        });
        return;
      case "response":
        // The holder's own stream is the only one it follows; a newcomer waits for its welcome.
        if (this.leading || !this.welcomed) return;
        this.peer.accept(fromBinary(SubscribeResponseSchema, data.bytes));
        return;
      case "state":
        if (this.leading || !this.welcomed) return;
        this.peer.mirror(fromWire(data.state));
        return;
      default:
        return;
    }
  }
}
