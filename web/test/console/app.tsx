// A console in miniature, built from the packages as a console team would use them: React Query
// for server data, one NotificationsProvider, useQueryRefresh with the default table,
// useNotifications for an event list, and the inbox: a badge (useUnreadCount) and a list
// (useInbox) with read, mark-all-read and archive buttons. tests/browser.rs serves it (through the
// Chromium driver, which also plays the console's own HTTP API and counts its calls) against a
// real server, in one tab or several.
//
// Query string: `server` (the notify-backbone URL), `user` (whose balance and devices it shows,
// and whose token its token endpoint gives).
import { StrictMode, useEffect } from "react";
import { createRoot } from "react-dom/client";
import { QueryClient, QueryClientProvider, useInfiniteQuery, useQuery } from "@tanstack/react-query";
import type { Notifications } from "@notify-backbone/client";
import {
  NotificationsProvider,
  useInbox,
  useNotifications,
  useNotificationsConnection,
  useQueryRefresh,
  useUnreadCount,
} from "@notify-backbone/react";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "";
const user = params.get("user") ?? "";

const queryClient = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
// For the test's checks of the cache.
(window as unknown as { queryClient: QueryClient }).queryClient = queryClient;

async function getJson<T>(path: string): Promise<T> {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return (await response.json()) as T;
}

/** The console's own session: its token endpoint gives a fresh notify-backbone token. */
async function getToken(): Promise<string> {
  return (await getJson<{ token: string }>(`/api/token?user=${encodeURIComponent(user)}`)).token;
}

function Balance() {
  const balance = useQuery({
    queryKey: ["balance", user],
    queryFn: () => getJson<{ balance: string }>(`/api/balance/${user}`),
  });
  return <p id="balance">balance: {balance.data?.balance ?? "…"}</p>;
}

interface Device {
  id: string;
  name: string;
  status: string;
}

function Devices() {
  const devices = useInfiniteQuery({
    queryKey: ["devices", { user }],
    queryFn: ({ pageParam }) => getJson<{ items: Device[] }>(`/api/devices?page=${pageParam}`),
    initialPageParam: 0,
    getNextPageParam: () => undefined,
  });
  return (
    <ul id="devices">
      {devices.data?.pages.flatMap((page) =>
        page.items.map((device) => (
          <li key={device.id} className="device" data-device-id={device.id} data-status={device.status}>
            {device.name}: {device.status}
          </li>
        )),
      )}
    </ul>
  );
}

function Events() {
  const { events, state, gaps } = useNotifications();
  return (
    <section>
      <p id="state" data-state={state.state} data-gaps={gaps.length}>
        {state.state}
      </p>
      {events.length === 0 ? <p id="empty">No events yet</p> : null}
      <ul id="events">
        {events.map((event) => (
          <li key={event.id} className="event" data-id={event.id} data-type={event.type} data-user={event.userId}>
            {event.type}
          </li>
        ))}
      </ul>
    </section>
  );
}

function Refresher() {
  useQueryRefresh();
  // For the test's checks of the connection (which tab holds the shared stream).
  const connection = useNotificationsConnection();
  useEffect(() => {
    (window as unknown as { notifications: Notifications }).notifications = connection;
  }, [connection]);
  return null;
}

function Badge() {
  const { unread, counts } = useUnreadCount();
  return (
    <p id="badge" data-unread={counts === undefined ? "loading" : String(unread)}>
      unread: {unread}
    </p>
  );
}

function Inbox() {
  const { items, markRead, markAllRead, archive, markError, error } = useInbox();
  return (
    <section id="inbox" data-error={String(error?.message ?? markError?.message ?? "")}>
      <button id="mark-all-read" onClick={markAllRead}>
        Mark all read
      </button>
      <ul id="inbox-items">
        {items.map(({ event, read, seen }) => (
          <li
            key={event?.id}
            className="inbox-item"
            data-id={event?.id}
            data-read={String(read)}
            data-seen={String(seen)}
          >
            {event?.type}
            <button className="read" onClick={() => markRead([event?.id ?? ""])}>
              read
            </button>
            <button className="archive" onClick={() => archive([event?.id ?? ""])}>
              archive
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}

const root = document.getElementById("root");
if (root === null) throw new Error("no #root");
createRoot(root).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <NotificationsProvider baseUrl={server} getToken={getToken} history={20}>
        <Refresher />
        <Badge />
        <Inbox />
        <Balance />
        <Devices />
        <Events />
      </NotificationsProvider>
    </QueryClientProvider>
  </StrictMode>,
);
