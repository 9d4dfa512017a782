//! The dispatcher's own changes of subscriptions (the disable after a 410 Gone, the
//! automatic disconnect): each is applied to the subscription as the table has it when
//! it is written, never to the copy the decision was made on, so it cannot undo a URL
//! change or secret rotation made meanwhile; each is audited before it is written; and
//! they are written one after another, so two changes of one subscription never read
//! the same version and overwrite each other.

use std::time::Duration;

use rdkafka::producer::FutureProducer;

use crate::subscriptions::audit::AuditTrail;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::Subscription;

/// Applies `change` to subscription `id` as the topic has it *now* and writes the
/// result, so a change decided on an older copy (a 410 answered to a request sent
/// before a URL change, a disconnect judged a moment ago) never writes that copy back
/// over a newer URL, secret or setting: under the table's write lock, the table first
/// catches up with the subscription's partition (`SubscriptionTable::catch_up`), then
/// `change` runs on that version. `change` returns false when, against the latest
/// version, it no longer applies; then nothing is written. Returns whether it wrote.
/// The change is audited (by `dispatcher`, as `what`) before it is written; no audit
/// record, no write.
async fn update_latest(
    producer: &FutureProducer,
    topic: &str,
    table: &SubscriptionTable,
    audit: &AuditTrail,
    id: &str,
    what: &str,
    change: impl FnOnce(&mut Subscription) -> bool,
) -> anyhow::Result<bool> {
    let lock = table.write_lock(Duration::from_secs(60)).await?;
    let Some(latest) = lock.catch_up(id).await? else {
        return Ok(false);
    };
    let mut updated = (*latest).clone();
    if !change(&mut updated) || updated == *latest {
        return Ok(false);
    }
    let details = crate::subscriptions::audit::changes(&latest, &updated).unwrap_or_default();
    audit.record("dispatcher", what, &updated, details).await?;
    lock.write(producer, topic, id, Some(&updated)).await?;
    Ok(true)
}

/// A change of one subscription the dispatcher makes itself.
type Change = Box<dyn FnOnce(&mut Subscription) -> bool + Send>;

/// Writes the dispatcher's own changes of subscriptions (410 disable, automatic
/// disconnect) onto their latest versions, one after another in one task: two changes
/// of the same subscription never read the same version and overwrite each other.
#[derive(Clone)]
pub struct Updater(tokio::sync::mpsc::UnboundedSender<(String, &'static str, Change)>);

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Updater")
    }
}

impl Updater {
    pub fn start(
        producer: FutureProducer,
        topic: String,
        table: SubscriptionTable,
        audit: AuditTrail,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, &'static str, Change)>();
        tokio::spawn(async move {
            while let Some((id, what, change)) = rx.recv().await {
                match update_latest(&producer, &topic, &table, &audit, &id, what, change).await {
                    Ok(true) => tracing::info!(subscription = %id, what, "subscription updated"),
                    Ok(false) => {
                        tracing::info!(subscription = %id, what, "not applied: the subscription changed or is gone since")
                    }
                    Err(error) => {
                        tracing::error!(subscription = %id, what, %error, "cannot write the subscription")
                    }
                }
            }
        });
        Self(tx)
    }

    pub fn update(
        &self,
        id: String,
        what: &'static str,
        change: impl FnOnce(&mut Subscription) -> bool + Send + 'static,
    ) {
        let _ = self.0.send((id, what, Box::new(change)));
    }
}
