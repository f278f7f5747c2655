// @notify-backbone/client: the generated messages and service, the reconnecting feed, a shared
// connection with listeners, the event union narrowed by type, the refresh table, and each
// event's title and summary in Chinese or English.

export * from "./gen/cloudphone/notify/v1/events_pb.js";
export * from "./gen/cloudphone/notify/v1/service_pb.js";
export {
  BACKOFF,
  Feed,
  IDLE_TIMEOUT_MS,
  backoffDelay,
  isTransient,
  type EventOrigin,
  type FeedCallbacks,
  type FeedOptions,
  type FeedState,
  type Selection,
  type SetTimer,
} from "./feed.js";
export {
  Notifications,
  createNotificationClient,
  type NotificationClient,
  type NotificationListener,
  type NotificationsOptions,
} from "./connection.js";
export {
  PAYLOAD_CASE_BY_TYPE,
  asTyped,
  compareMoney,
  isEventOf,
  moneyOf,
  type EventOf,
  type KnownEventType,
  type TypedEvent,
} from "./events.js";
export * from "./refresh.js";
export { CURRENCY, LOCALES, describe, type EventDescription, type Locale } from "./describe.js";
