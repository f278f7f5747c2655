// The live notification page: wires the DOM of index.html to a `Feed` over grpc-web.
//
// What this module owns: the DOM (the token form, the filters, the status line), rendering the
// list (one item per event or gap, newest first, capped, without duplicates) and deciding when to
// subscribe afresh. What it does not: the reconnect policy (backoff, resume by cursor, dead
// connection detection) lives in feed.ts, without DOM; authorization is the server's, which checks
// the token on every call. The page decodes the token (token.ts) only to decide which controls to
// show; a wrong guess costs a PermissionDenied, handled below by going back to "mine".
//
// The page is served by notify-backbone on the same origin as the API, and the client talks to
// `location.origin` only: a link that could point the page elsewhere would hand that server the
// token kept in sessionStorage. The token comes from `?token=` (then removed from the address
// bar) or the token field, and is kept in sessionStorage.

import { Code, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  Feed,
  GapReason,
  NotificationService,
  describeRefresh,
  type Event,
  type FeedState,
  type Gap,
  type Selection,
} from "@notify-backbone/client";
import { summarize } from "./summary";
import { isAdmin, readClaims, type TokenClaims } from "./token";

/** Most list items kept; older ones are dropped from the DOM. */
const MAX_ITEMS = 500;
/**
 * Event ids remembered to drop duplicates (a replay after a reconnect, a redelivery). 4 × MAX_ITEMS:
 * the ids must outlive the items, or an event already pushed out of the list would come back at
 * the top as new when delivered again; past that, memory stays bounded (a few tens of KB).
 */
const MAX_SEEN_IDS = 2_000;
const TOKEN_KEY = "notify-backbone.token";

function element<T extends HTMLElement>(id: string, type: { new (): T }): T {
  const found = document.getElementById(id);
  if (!(found instanceof type)) throw new Error(`index.html lacks #${id}`);
  return found;
}

const ui = {
  status: element("status", HTMLSpanElement),
  tokenForm: element("token-form", HTMLFormElement),
  token: element("token", HTMLInputElement),
  who: element("who", HTMLSpanElement),
  filters: element("filters", HTMLFormElement),
  family: element("family", HTMLSelectElement),
  device: element("device", HTMLInputElement),
  feedLabel: element("feed-label", HTMLLabelElement),
  feed: element("feed", HTMLSelectElement),
  events: element("events", HTMLUListElement),
  empty: element("empty", HTMLParagraphElement),
};

const params = new URLSearchParams(location.search);
const baseUrl = location.origin;
const client = createClient(NotificationService, createGrpcWebTransport({ baseUrl }));

let token = "";
let claims: TokenClaims | undefined;
const seen = new Set<string>();

/** Why the page last went back to its own feed, kept in the status line until the next choice. */
let notice = "";

// The newest 50 events of the selection are shown at once, then the stream continues from there.
const feed = new Feed(client, { onState: showState, onEvent: addEvent, onGap: addGap }, { history: 50 });

// ---- status ---------------------------------------------------------------------------------

function setStatus(state: FeedState["state"], text: string): void {
  ui.status.dataset["state"] = state;
  ui.status.textContent = notice === "" ? text : `${text} · ${notice}`;
}

function showState(state: FeedState): void {
  switch (state.state) {
    case "idle":
      setStatus("idle", "Not connected");
      break;
    case "connecting":
      // A retry stays "reconnecting" until CaughtUp: the outage is not over before that.
      if (state.attempt === 0) setStatus("connecting", "Connecting…");
      else setStatus("reconnecting", "Reconnecting now…");
      break;
    case "live":
      setStatus("live", "Live");
      break;
    case "reconnecting": {
      const seconds = (state.delayMs / 1000).toFixed(1);
      setStatus("reconnecting", `Reconnecting in ${seconds} s (${state.error.rawMessage})`);
      break;
    }
    case "error": {
      const { code, rawMessage } = state.error;
      if (code === Code.Unauthenticated) {
        // A token the server refuses is not retried: forget it entirely (stored copy, claims,
        // who it names, the admin selector) and ask for another.
        useToken("");
        notice = "";
        setStatus("error", `Token refused: ${rawMessage}. Paste a new token.`);
        ui.token.value = "";
        ui.token.focus();
      } else if (code === Code.PermissionDenied && ui.feed.value !== "mine") {
        // The admin feed or the firehose, offered from the token's roles, refused by the server
        // (whose --admin-role may differ from the default the page assumes): back to the user's
        // own events, saying why. Deferred so as not to restart the feed from inside its callback.
        const refused = ui.feed.selectedOptions[0]?.textContent ?? ui.feed.value;
        ui.feed.value = "mine";
        const why = `${refused}: not allowed (${rawMessage})`;
        notice = "";
        setStatus("error", why);
        queueMicrotask(() => subscribe(why));
      } else if (code === Code.PermissionDenied) {
        setStatus("error", `Not allowed: ${rawMessage}`);
      } else {
        setStatus("error", `Error: ${rawMessage}`);
      }
      break;
    }
  }
}

// ---- list -----------------------------------------------------------------------------------

function timestampDate(timestamp: Timestamp): Date {
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6));
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

function span(className: string, text: string): HTMLSpanElement {
  const node = document.createElement("span");
  node.className = className;
  node.textContent = text;
  return node;
}

function rememberId(id: string): void {
  seen.add(id);
  if (seen.size > MAX_SEEN_IDS) {
    const oldest = seen.values().next();
    if (oldest.done !== true) seen.delete(oldest.value);
  }
}

/** Shows "No events yet." exactly when the list shows nothing (every item is visible). */
function updateEmpty(): void {
  ui.empty.hidden = ui.events.childElementCount > 0;
}

function insert(item: HTMLLIElement): void {
  ui.events.prepend(item);
  while (ui.events.childElementCount > MAX_ITEMS) ui.events.lastElementChild?.remove();
  updateEmpty();
}

/** The event family of a type: `quota` for `quota.updated`. */
function familyOf(type: string): string {
  return type.split(".", 1)[0] ?? "";
}

/** The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), or "". */
function traceIdOf(traceparent: string): string {
  const traceId = traceparent.split("-")[1] ?? "";
  return /^[0-9a-f]{32}$/.test(traceId) && !/^0+$/.test(traceId) ? traceId : "";
}

function addEvent(event: Event): void {
  if (event.id !== "" && seen.has(event.id)) return;

  const item = document.createElement("li");
  item.className = "event";
  item.dataset["id"] = event.id;
  item.dataset["type"] = event.type;
  item.dataset["user"] = event.userId;
  item.dataset["device"] = event.deviceId;
  item.dataset["cursor"] = event.cursor;
  item.dataset["family"] = familyOf(event.type);
  // On hover: the trace to look up in the tracing backend when a user reports this event.
  const traceId = traceIdOf(event.traceparent);
  if (traceId !== "") {
    item.dataset["trace"] = traceId;
    item.title = `trace ${traceId}`;
  }

  const when = event.occurredAt ?? event.receivedAt;
  const time = document.createElement("time");
  time.className = "time";
  if (when !== undefined) {
    const date = timestampDate(when);
    if (Number.isNaN(date.getTime())) {
      // Seconds beyond what a JS Date holds (±8.64e12 s): toISOString and format would throw.
      time.textContent = "—";
      time.title = `${when.seconds} s since 1970`;
    } else {
      time.dateTime = date.toISOString();
      time.textContent = timeFormat.format(date);
    }
  }

  const head = document.createElement("div");
  head.className = "head";
  head.append(span("type", event.type), span("summary", summarize(event)));

  const meta = document.createElement("div");
  meta.className = "meta";
  meta.append(
    span("user", event.userId || "—"),
    span("device", event.deviceId || "—"),
    time,
  );
  const refresh = describeRefresh(event.type);
  if (refresh !== "") meta.append(span("refresh", `refresh: ${refresh}`));

  item.append(head, meta);
  // Only now that the item exists: had building it thrown, a later delivery could still show it.
  if (event.id !== "") rememberId(event.id);
  insert(item);
}

const GAP_REASONS: Record<GapReason, string> = {
  [GapReason.UNSPECIFIED]: "unknown reason",
  [GapReason.RETENTION]: "older than the server keeps",
  [GapReason.EPOCH_CHANGED]: "the server's storage was replaced",
};

function addGap(gap: Gap): void {
  const item = document.createElement("li");
  item.className = "gap";
  item.dataset["reason"] = GapReason[gap.reason]?.toLowerCase() ?? "unknown";
  item.dataset["from"] = gap.fromCursor;
  item.dataset["to"] = gap.toCursor;
  const reason = GAP_REASONS[gap.reason] ?? "unknown reason";
  const range = `from ${gap.fromCursor || "the start"} to ${gap.toCursor || "now"}`;
  item.textContent = `Some events were lost (${reason}): ${range}.`;
  insert(item);
}

function clearList(): void {
  ui.events.replaceChildren();
  seen.clear();
  updateEmpty();
}

// ---- subscription ---------------------------------------------------------------------------

function selection(): Selection {
  const family = ui.family.value;
  const admin = isAdmin(claims);
  const feedChoice = admin ? ui.feed.value : "mine";
  return {
    eventTypes: family === "" ? [] : [`${family}.*`],
    deviceId: ui.device.value.trim(),
    userId: feedChoice === "firehose" ? "*" : "",
    adminFeed: feedChoice === "admin",
  };
}

/**
 * Subscribes afresh (new token, feed or filters), from the head and with an empty list; `why`
 * becomes the status line's notice. Never resumes after the last cursor: that cursor only says
 * what the previous selection has seen, so widening a filter would silently skip the newly
 * matching events before it. Resuming is the feed's business, within one selection.
 */
function subscribe(why = ""): void {
  notice = why;
  if (token === "") {
    feed.stop();
    setStatus("idle", "Paste a token to connect");
    return;
  }
  clearList();
  void feed.start(token, selection(), false);
}

function useToken(next: string): void {
  token = next.trim();
  claims = readClaims(token);
  const admin = isAdmin(claims);
  ui.feed.hidden = !admin;
  ui.feedLabel.hidden = !admin;
  if (!admin) ui.feed.value = "mine";
  ui.who.textContent =
    claims === undefined || claims.sub === ""
      ? ""
      : `as ${claims.username || claims.sub}${admin ? " (admin)" : ""}`;
  if (token === "") sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

// ---- wiring ---------------------------------------------------------------------------------

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  useToken(ui.token.value);
  ui.token.value = "";
  subscribe();
});

ui.filters.addEventListener("submit", (event) => event.preventDefault());
ui.family.addEventListener("change", () => subscribe());
ui.feed.addEventListener("change", () => subscribe());

let lastDevice = "";
let deviceTimer: ReturnType<typeof setTimeout> | undefined;
function deviceChanged(): void {
  clearTimeout(deviceTimer);
  const device = ui.device.value.trim();
  if (device === lastDevice) return;
  lastDevice = device;
  subscribe();
}
ui.device.addEventListener("change", deviceChanged);
ui.device.addEventListener("input", () => {
  clearTimeout(deviceTimer);
  deviceTimer = setTimeout(deviceChanged, 400);
});

const fromUrl = params.get("token");
if (fromUrl !== null) {
  params.delete("token");
  const query = params.toString();
  history.replaceState(history.state, "", location.pathname + (query ? `?${query}` : "") + location.hash);
}
const initial = fromUrl || sessionStorage.getItem(TOKEN_KEY) || "";
if (initial !== "") useToken(initial);
subscribe();
