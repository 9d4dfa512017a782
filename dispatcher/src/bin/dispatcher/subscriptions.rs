//! `dispatcher subscriptions apply` and `list`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dispatcher::app::Shared;
use dispatcher::subscriptions::table;
use dispatcher::subscriptions::{audit, delivery_topic};
use dispatcher::subscriptions::{Subscription, SubscriptionFile};

pub async fn apply(shared: &Shared, file: &Path, prune: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let subscriptions = SubscriptionFile::parse(&text, &shared.allowlist)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let kafka = &shared.kafka;
    shared.ensure_subscriptions_topic().await?;
    let mut partners: Vec<String> = subscriptions.iter().map(|s| s.partner_id.clone()).collect();
    partners.sort();
    partners.dedup();
    let topics: Vec<String> = partners.iter().map(|p| delivery_topic(p)).collect();
    kafka
        .ensure_topics(&topics, shared.partner_partitions, &[])
        .await?;
    let current = shared.table().await?;
    let remove: Vec<Arc<Subscription>> = if prune {
        current
            .all()
            .into_iter()
            .filter(|c| !subscriptions.iter().any(|s| s.id == c.id))
            .collect()
    } else {
        Vec::new()
    };
    // Every change is audited before it is written (docs/ARCHITECTURE.md, audit).
    let audit = shared.audit_trail().await?;
    let actor = format!(
        "operator {} (subscriptions apply {})",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        file.display()
    );
    for s in &subscriptions {
        let (action, details) = match current.get(&s.id) {
            None => (
                "apply-create",
                Some(serde_json::json!({ "url": s.url, "internal": s.internal })),
            ),
            Some(before) => ("apply-update", audit::changes(&before, s)),
        };
        if let Some(details) = details {
            audit.record(&actor, action, s, details).await?;
        }
    }
    for s in &remove {
        audit
            .record(
                &actor,
                "apply-delete",
                s,
                serde_json::json!({ "url": s.url }),
            )
            .await?;
    }
    let mut remove: Vec<String> = remove.iter().map(|s| s.id.clone()).collect();
    if prune {
        // Subscriptions invalid here (not in force) go too, unless the file has them.
        for (id, invalid) in current.all_invalid() {
            if subscriptions.iter().any(|s| s.id == id) {
                continue;
            }
            let partner = invalid.subscription.as_ref().map(|s| s.partner_id.as_str());
            let details = serde_json::json!({ "invalid": invalid.reason });
            audit
                .record_id(&actor, "apply-delete", &id, partner, details)
                .await?;
            remove.push(id);
        }
    }
    table::publish(kafka, &shared.subscriptions_topic, &subscriptions, &remove).await?;
    println!(
        "applied {} subscriptions for {} partners, deleted {}",
        subscriptions.len(),
        partners.len(),
        remove.len()
    );
    Ok(())
}

pub async fn list(shared: &Shared) -> anyhow::Result<()> {
    let table = shared.table().await?;
    let mut all = table.all();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    for s in all {
        let types: Vec<&str> = s.event_types.iter().map(String::as_str).collect();
        let state = if s.disabled { "DISABLED" } else { "active" };
        println!(
            "{} partner={} {} url={} types={} secrets={} internal={}",
            s.id,
            s.partner_id,
            state,
            s.url,
            types.join(","),
            s.secrets.len(),
            s.internal
        );
    }
    let mut invalid = table.all_invalid();
    invalid.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, i) in invalid {
        // Not in force here: its records are dead-lettered with this reason.
        let partner = i
            .subscription
            .as_ref()
            .map_or("?", |s| s.partner_id.as_str());
        println!("{id} partner={partner} INVALID reason={}", i.reason);
    }
    Ok(())
}
