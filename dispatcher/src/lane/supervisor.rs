//! The lanes' supervisor: one lane per partner that has a subscription, started when the
//! partner appears (its topics made first), restarted when it ends before shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use super::{restart, run, LaneConfig};
use crate::delivery::{GoneHook, JobContext, LaneMetrics};
use crate::kafka::KafkaSettings;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::{dead_letter_topic, delivery_topic};
use crate::webhook::client::WebhookClient;
use crate::webhook::flow::PartnerFlow;

/// Creates the partner's retry topic with as many partitions as its delivery topic, and
/// checks that they have: a lane owns partition `p` of both (range assignment).
async fn retry_topic_like_deliveries(
    settings: &KafkaSettings,
    partner: &str,
) -> anyhow::Result<()> {
    let (deliveries, retries) = (
        delivery_topic(partner),
        crate::subscriptions::retry_topic(partner),
    );
    let s = settings.clone();
    let d = deliveries.clone();
    let n = tokio::task::spawn_blocking(move || s.partition_count(&d)).await??;
    settings
        .ensure_topics(std::slice::from_ref(&retries), n as i32, &[])
        .await?;
    let s = settings.clone();
    let r = retries.clone();
    let m = tokio::task::spawn_blocking(move || s.partition_count(&r)).await??;
    anyhow::ensure!(
        m == n,
        "`{retries}` has {m} partitions and `{deliveries}` {n}: they must be equal"
    );
    Ok(())
}

/// Starts a lane for every partner that has a subscription, now and whenever one
/// appears, creating its delivery and dead-letter topics first; a lane that ends before
/// shutdown is started again ([`restart::keep_running`]). Returns at shutdown once every
/// lane has stopped.
pub async fn supervise(
    settings: KafkaSettings,
    config: LaneConfig,
    table: SubscriptionTable,
    client: WebhookClient,
    on_gone: GoneHook,
    watched: Arc<Mutex<HashMap<String, crate::health::Watched>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = settings.producer().create()?;
    let mut lanes: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut flows: HashMap<String, Arc<PartnerFlow>> = HashMap::new();
    let mut changes = table.watch();
    loop {
        // Per partner: the largest in-flight cap and the smallest rate limit of its
        // subscriptions.
        let mut partners: HashMap<String, (usize, Option<f64>)> = HashMap::new();
        // A partner whose only subscription is invalid here still gets a lane: it
        // dead-letters the records with why instead of leaving them unseen.
        for p in table.invalid_partners() {
            partners.entry(p).or_insert((1, None));
        }
        for s in table.all() {
            let (cap, rate) = partners.entry(s.partner_id.clone()).or_default();
            *cap = (*cap).max(s.max_in_flight);
            *rate = match (*rate, s.rate_limit_per_sec) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for (partner, (cap, rate)) in partners {
            if let Some(flow) = flows.get(&partner) {
                flow.configure(cap, rate);
                continue;
            }
            let topics = [delivery_topic(&partner), dead_letter_topic(&partner)];
            if let Err(error) = settings
                .ensure_topics(&topics, config.partitions, &[])
                .await
            {
                tracing::warn!(partner = %partner, %error, "cannot create the partner's topics yet");
                continue;
            }
            let park_after = match config.park_after {
                Some(n) => match retry_topic_like_deliveries(&settings, &partner).await {
                    Ok(()) => Some(n),
                    Err(error) => {
                        tracing::error!(partner = %partner, %error, "parking keys is off for this partner");
                        None
                    }
                },
                None => None,
            };
            let flow = PartnerFlow::new(&partner, cap, rate, config.flow.clone());
            flows.insert(partner.clone(), Arc::clone(&flow));
            let health = Arc::new(crate::health::PartnerHealth::default());
            watched.lock().unwrap_or_else(|p| p.into_inner()).insert(
                partner.clone(),
                crate::health::Watched {
                    health: Arc::clone(&health),
                    flow: Arc::clone(&flow),
                },
            );
            let ctx = JobContext {
                partner: partner.clone(),
                client: client.clone(),
                table: table.clone(),
                producer: producer.clone(),
                flow,
                on_gone: on_gone.clone(),
                metrics: LaneMetrics::new(&partner),
                health,
                park_after,
                shutdown: shutdown.clone(),
            };
            let (name, lane_settings, lane_config) =
                (partner.clone(), settings.clone(), config.clone());
            let restarts =
                metrics::counter!(crate::metrics::LANE_RESTARTS, "partner" => partner.clone());
            let (who, health) = (partner.clone(), Arc::clone(&ctx.health));
            let handle = tokio::spawn(restart::keep_running(
                move || {
                    // A lane that ended left its jobs' permits taken (restart.rs).
                    ctx.flow.forget_permits();
                    run(
                        name.clone(),
                        lane_settings.clone(),
                        lane_config.clone(),
                        ctx.clone(),
                    )
                },
                move |why| {
                    tracing::error!(partner = %who, %why, "delivery lane ended; restarting it");
                    restarts.increment(1);
                    health.lane_ended(why);
                },
                shutdown.clone(),
            ));
            lanes.insert(partner, handle);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    for (partner, handle) in lanes {
        if let Err(error) = handle.await {
            tracing::error!(partner = %partner, %error, "lane supervisor failed");
        }
    }
    Ok(())
}
