use std::time::Duration;

use super::*;

#[test]
fn defaults_are_the_documented_ones() {
    let config = ServeConfig::default();
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(config.subscriber_queue_len, 1024);
    assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(config.journal.commit_delay, Duration::from_millis(2));
    assert!(!config.strict_schema);
    assert_eq!(config.amqp.amqp_url, None);
    assert_eq!(config.amqp.exchange, "cloudphone.events");
    assert_eq!(
        config.amqp.bindings,
        ["quota.#", "billing.#", "app.#", "device.#"]
    );
    assert_eq!(config.amqp.prefetch, 256);
    assert!(!config.amqp.node_id().is_empty());
    // Written comma-separated (as `--help` shows them and the README writes them), they are
    // the policy's defaults.
    assert_eq!(config.auth.admin_roles, crate::auth::DEFAULT_ADMIN_ROLES);
    assert_eq!(
        config.auth.publish_roles,
        crate::auth::DEFAULT_PUBLISH_ROLES
    );
}
