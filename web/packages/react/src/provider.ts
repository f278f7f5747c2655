// One connection per app: the provider creates a `Notifications` connection when it mounts,
// starts it, and stops it when it unmounts; every hook below it shares that one stream (which the
// app's tabs share in turn, where the browser lets them: see `NotificationsOptions.tabs`).

import {
  createElement,
  createContext,
  useContext,
  useEffect,
  useRef,
  useState,
  type ReactNode,
} from "react";
import {
  Notifications,
  createNotificationClient,
  type NotificationClient,
  type NotificationsOptions,
  type Selection,
} from "@notify-backbone/client";

const NotificationsContext = createContext<Notifications | null>(null);

/** The provider's props: where the server is and how to get a token. */
export interface NotificationsProviderProps {
  /**
   * The server's grpc-web address, e.g. `https://notify.example.com`. Ignored with `client`.
   * Read once, at mount (to point at another server, remount the provider with a new `key`).
   */
  baseUrl?: string;
  /** A client of your own (another transport, interceptors). Read once, at mount. */
  client?: NotificationClient;
  /**
   * Gives a valid token: at start and whenever the token expires mid-stream. The latest function
   * passed is used; changing it does not reconnect.
   */
  getToken: () => Promise<string> | string;
  /**
   * What the server sends (default: everything the token may see). Read once, at mount.
   *
   * `conflate` is on unless this says `conflate: false`: a console shows the latest state, so
   * after a reconnect or during a storm (a quota job updating every quota, a host failure
   * flipping hundreds of devices) the server skips the `quota.updated` and device status events a
   * later one of the same quota or device supersedes, and coalesces bursts of admin notices on
   * the admin feed. Change events (payments, errors, installs…) always come, and the default
   * `useQueryRefresh` table acts on the latest state of what was skipped, so the caches end up as
   * without it. Turn it off (`selection={{ conflate: false }}`) for a view that must list every
   * event, e.g. an audit log of status changes.
   */
  selection?: Partial<Selection>;
  /** Events of history shown on first paint (default 50). Read once, at mount. */
  history?: number;
  /**
   * Passed on to the connection: timers, how many recent events to keep, and `tabs` (one stream
   * per browser, shared by its tabs, is on by default where the browser can; `false` turns it off).
   */
  options?: Pick<NotificationsOptions, "keep" | "feed" | "tabs">;
  children?: ReactNode;
}

/** Holds one notification connection for everything below it. */
export function NotificationsProvider(props: NotificationsProviderProps): ReactNode {
  const getToken = useRef(props.getToken);
  const latestGetToken = props.getToken;
  useEffect(() => {
    getToken.current = latestGetToken;
  }, [latestGetToken]);
  const [connection] = useState(() => {
    const client = props.client ?? createNotificationClient(props.baseUrl ?? "");
    return new Notifications({
      client,
      getToken: () => getToken.current(),
      // Names the stream the tabs share (with the user and the selection).
      server: props.baseUrl ?? "",
      // A console wants the latest state, not every superseded step of a storm (see the prop).
      selection: { conflate: true, ...props.selection },
      ...(props.history === undefined ? {} : { history: props.history }),
      ...props.options,
    });
  });
  useEffect(() => {
    connection.start();
    return () => connection.stop();
  }, [connection]);
  return createElement(NotificationsContext.Provider, { value: connection }, props.children);
}

/** The provider's connection; throws outside a `NotificationsProvider`. */
export function useNotificationsConnection(): Notifications {
  const connection = useContext(NotificationsContext);
  if (connection === null) {
    throw new Error("notify-backbone: useNotifications* needs a <NotificationsProvider> above it");
  }
  return connection;
}
