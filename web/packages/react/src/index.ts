// @notify-backbone/react: one connection per app (`NotificationsProvider`), views of its stream
// (`useNotifications`), and React Query caches kept fresh by its events (`useQueryRefresh`).

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
