// @notify-backbone/react: one connection per app (`NotificationsProvider`), views of its stream
// (`useNotifications`), React Query caches kept fresh by its events (`useQueryRefresh`), and the
// inbox (`useInbox`, `useUnreadCount`, `usePreferences`).

export {
  NotificationsProvider,
  useNotificationsConnection,
  type NotificationsProviderProps,
} from "./provider.js";
export { useNotifications, type NotificationFilter, type NotificationsView } from "./use-notifications.js";
export {
  DEFAULT_QUERY_MAPPING,
  HISTORY_GRACE_MS,
  applyDeviceStatus,
  applyEventToQueries,
  deviceStatusOf,
  patchDeviceStatus,
  queryActionFor,
  shouldApply,
  useQueryRefresh,
  type DeviceStatusChange,
  type QueryAction,
  type QueryMapping,
  type QueryRefreshOptions,
} from "./queries.js";
export {
  INBOX_QUERY_KEY,
  PREFERENCES_QUERY_KEY,
  applyInboxChange,
  inboxCountsKey,
  inboxListKey,
  useInbox,
  useInboxState,
  usePreferences,
  useUnreadCount,
  type FamilyCount,
  type InboxListKeyOptions,
  type InboxView,
  type PreferencesView,
  type UnreadCount,
  type UseInboxOptions,
  type UseUnreadCountOptions,
} from "./inbox.js";
