//! The audit trail of subscription changes: one JSON record per change that affects
//! where data goes or how it is signed (created, URL or internal flag changed, secrets
//! changed or rotated, paused, disconnected, disabled after a 410, deleted), whoever
//! made it (the partner API, `subscriptions apply`, the dispatcher itself), in the audit
//! topic with the subscription id as key.
//!
//! Every writer audits *before* it changes the subscription and makes no change whose
//! audit record was not acknowledged: the trail may name a change that then failed
//! (its writer says so in a `*-failed` record when it can), never miss one that
//! happened. Secrets are never written, only that they changed.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::subscriptions::Subscription;

/// The default audit topic.
pub const DEFAULT_TOPIC: &str = "subscription-audit";

/// Where audit records go.
#[derive(Clone)]
pub struct AuditTrail {
    pub producer: FutureProducer,
    pub topic: String,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl AuditTrail {
    /// Writes one record and waits for its acknowledgement.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        s: &Subscription,
        details: serde_json::Value,
    ) -> anyhow::Result<()> {
        self.record_id(actor, action, &s.id, Some(&s.partner_id), details)
            .await
    }

    /// [`AuditTrail::record`] for a subscription known by its id only (an invalid
    /// record being deleted).
    pub async fn record_id(
        &self,
        actor: &str,
        action: &str,
        id: &str,
        partner: Option<&str>,
        details: serde_json::Value,
    ) -> anyhow::Result<()> {
        let record = serde_json::json!({
            "at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "actor": actor,
            "action": action,
            "subscription": id,
            "partner": partner,
            "details": details,
        });
        tracing::info!(%actor, action, subscription = %id, %details, "subscription audit");
        let payload = record.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(id).payload(&payload),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(error, _)| anyhow::anyhow!("audit record not written: {error}"))?;
        Ok(())
    }
}

/// What changed from `before` to `after` among the fields that decide where data goes
/// and how it is signed, as audit details; `None` when none of them changed.
pub fn changes(before: &Subscription, after: &Subscription) -> Option<serde_json::Value> {
    use serde_json::json;
    let mut d = serde_json::Map::new();
    let mut moved = |name: &str, from: serde_json::Value, to: serde_json::Value| {
        if from != to {
            d.insert(name.into(), json!({ "from": from, "to": to }));
        }
    };
    moved("url", json!(before.url), json!(after.url));
    moved("internal", json!(before.internal), json!(after.internal));
    moved(
        "partner_id",
        json!(before.partner_id),
        json!(after.partner_id),
    );
    moved(
        "event_types",
        json!(before.event_types),
        json!(after.event_types),
    );
    // States: the new value only.
    let mut now = |name: &str, from: serde_json::Value, to: serde_json::Value| {
        if from != to {
            d.insert(name.into(), to);
        }
    };
    now("disabled", json!(before.disabled), json!(after.disabled));
    now("paused", json!(before.paused), json!(after.paused));
    now(
        "disconnected",
        json!(before.disconnected),
        json!(after.disconnected),
    );
    if before.secrets != after.secrets {
        d.insert("secrets_changed".into(), true.into());
    }
    if before.max_in_flight != after.max_in_flight
        || before.request_timeout_ms != after.request_timeout_ms
        || before.retry != after.retry
        || before.rate_limit_per_sec != after.rate_limit_per_sec
        || before.previous_secrets_until != after.previous_secrets_until
    {
        d.insert("settings_changed".into(), true.into());
    }
    (!d.is_empty()).then_some(serde_json::Value::Object(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::signing::Secret;

    fn sub() -> Subscription {
        serde_json::from_value(serde_json::json!({
            "id": "s", "partner_id": "p", "url": "https://a.example/h",
            "event_types": ["order.created"], "secrets": [Secret::generate()],
        }))
        .expect("subscription")
    }

    #[test]
    fn changes_name_what_moved_and_never_a_secret() {
        let before = sub();
        assert_eq!(changes(&before, &before.clone()), None);
        let mut after = before.clone();
        after.url = "https://b.example/h".into();
        after.internal = true;
        after.secrets = vec![Secret::generate()];
        let d = changes(&before, &after).expect("changed");
        assert_eq!(d["url"]["to"], "https://b.example/h");
        assert_eq!(d["internal"]["to"], true);
        assert_eq!(d["secrets_changed"], true);
        let text = d.to_string();
        for s in before.secrets.iter().chain(&after.secrets) {
            assert!(!text.contains(s.trim_start_matches("whsec_")), "{text}");
        }
    }
}
