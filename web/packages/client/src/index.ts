// @notify-backbone/client: the generated messages and service, the reconnecting feed, a shared
// connection with listeners (one stream per browser where tabs can share it), the inbox's calls
// and state, the event union narrowed by type, the refresh table, and each event's title and
// summary in Chinese or English.

export * from "./gen/cloudphone/notify/v1/events_pb.js";
export * from "./gen/cloudphone/notify/v1/inbox_pb.js";
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
  type TabsOptions,
} from "./connection.js";
export {
  InboxApi,
  InboxList,
  InboxState,
  countsAfterMark,
  emptyCounts,
  inInboxList,
  inboxFamilyName,
  inboxMarks,
  markItem,
  markItems,
  markMayAddTo,
  mergeNewestPage,
  preferencesFrom,
  sameCounts,
  type InboxChange,
  type InboxListOptions,
  type InboxListSnapshot,
  type InboxPageRequest,
  type InboxSnapshot,
  type MarkSpec,
  type MarkedItems,
  type PreferencesInit,
} from "./inbox.js";
export {
  TabShare,
  broadcastChannel,
  browserTabSharing,
  sharedStreamName,
  type TabChannel,
  type TabLocks,
  type TabPeer,
  type TabSharing,
  type TabSnapshot,
} from "./tabs.js";
export { TokenCache, subjectOf, withToken, type AuthHeaders } from "./tokens.js";
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
