//! The lanes' supervisor: one lane per partner that has a subscription, started when the
//! partner appears (its topics made first), restarted when it ends before shutdown. All
//! lanes share one [`Intake`]; partners that appear together (every partner at start-up)
//! get their topics in one request and join the intake together, so start-up does not
//! set partners up one after another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use super::{restart, run_linked, Intake, LaneConfig};
use crate::delivery::{GoneHook, JobContext, LaneMetrics};
use crate::kafka::KafkaSettings;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::{dead_letter_topic, delivery_topic, retry_topic};
use crate::webhook::client::WebhookClient;
use crate::webhook::flow::PartnerFlow;

/// Creates the new partners' delivery topics in one request (a retry topic is made on
/// the partner's first parked record, a dead-letter topic on its first dead letter),
/// then reads every topic's partition count in one metadata request. Returns, per
/// partner that may park, its delivery topic's partition count: the retry topic must
/// have as many (the instance that owns delivery partition `p` reads retry partition
/// `p`); a partner whose existing retry topic differs does not park.
async fn make_topics(
    settings: &KafkaSettings,
    partners: &[String],
    partitions: i32,
    parking: bool,
) -> anyhow::Result<HashMap<String, i32>> {
    let names: Vec<String> = partners.iter().map(|p| delivery_topic(p)).collect();
    settings.ensure_topics(&names, partitions, &[]).await?;
    if !parking {
        return Ok(Default::default());
    }
    let s = settings.clone();
    let counts = tokio::task::spawn_blocking(move || s.all_partition_counts()).await??;
    let mut may_park = HashMap::new();
    for p in partners {
        let (d, r) = (delivery_topic(p), retry_topic(p));
        match (counts.get(&d), counts.get(&r)) {
            (Some(n), None) => {
                may_park.insert(p.clone(), *n as i32);
            }
            (Some(n), Some(m)) if n == m => {
                may_park.insert(p.clone(), *n as i32);
            }
            (n, m) => tracing::error!(
                partner = %p,
                "parking keys is off for this partner: `{r}` has {m:?} partitions and `{d}` {n:?}; they must be equal"
            ),
        }
    }
    Ok(may_park)
}

/// What every lane shares: the webhook client, the producer (retries, dead letters,
/// the log), what a 410 calls, and the partners' health as the supervisor watches it.
#[derive(Clone)]
pub struct LaneShared {
    pub client: WebhookClient,
    pub producer: FutureProducer,
    pub on_gone: GoneHook,
    pub watched: Arc<Mutex<HashMap<String, crate::health::Watched>>>,
}

impl std::fmt::Debug for LaneShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneShared").finish_non_exhaustive()
    }
}

/// Starts a lane for every partner that has a subscription, now and whenever one
/// appears, creating its delivery and dead-letter topics first; a lane that ends before
/// shutdown is started again ([`restart::keep_running`]). Returns at shutdown once every
/// lane has stopped.
pub async fn supervise(
    settings: KafkaSettings,
    config: LaneConfig,
    table: SubscriptionTable,
    shared: LaneShared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let LaneShared {
        client,
        producer,
        on_gone,
        watched,
    } = shared;
    let (intake, intake_task) = Intake::start(
        &settings,
        &config.group_prefix,
        &config.groups,
        shutdown.clone(),
    )?;
    let mut adopted = false;
    // Each lane, and what stops it alone (a child of `shutdown`).
    let mut lanes: HashMap<String, (tokio::task::JoinHandle<()>, CancellationToken)> =
        HashMap::new();
    let mut flows: HashMap<String, Arc<PartnerFlow>> = HashMap::new();
    // Partners with a lane and no subscription any more, since when.
    let mut departed: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut changes = table.watch();
    // Stream topics made (or found) already.
    let mut stream_topics: std::collections::HashSet<String> = Default::default();
    loop {
        // Per partner: the largest in-flight cap and the smallest rate limit of its
        // subscriptions.
        let mut partners: HashMap<String, (usize, Option<f64>)> = HashMap::new();
        // A partner whose only subscription is invalid here still gets a lane: it
        // dead-letters the records with why instead of leaving them unseen.
        for p in table.invalid_partners() {
            partners.entry(p).or_insert((1, None));
        }
        // Stream subscriptions have no lane; their topic is made here too (for one
        // written by `subscriptions apply`; the API makes it before it saves one).
        let (streams, webhooks): (Vec<_>, Vec<_>) =
            table.all().into_iter().partition(|s| s.is_stream());
        // (Each once: this loop runs every few seconds.)
        let new_streams: Vec<String> = streams
            .iter()
            .map(|s| s.topic())
            .filter(|t| !stream_topics.contains(t))
            .collect();
        match settings
            .ensure_topics(&new_streams, config.partitions, &[])
            .await
        {
            Ok(()) => stream_topics.extend(new_streams),
            Err(error) => tracing::warn!(%error, "making the stream topics"),
        }
        for s in webhooks {
            let (cap, rate) = partners.entry(s.partner_id.clone()).or_default();
            *cap = (*cap).max(s.max_in_flight);
            *rate = match (*rate, s.rate_limit_per_sec) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // A partner without subscriptions keeps its lane for `departed_after` (a
        // subscription replaced by another is no reason to stop), then it stops and
        // what the instance holds of it is freed.
        departed.retain(|p, _| lanes.contains_key(p) && !partners.contains_key(p));
        for p in lanes.keys() {
            if !partners.contains_key(p) {
                departed
                    .entry(p.clone())
                    .or_insert_with(tokio::time::Instant::now);
            }
        }
        let gone: Vec<String> = departed
            .iter()
            .filter(|(_, since)| since.elapsed() >= config.departed_after)
            .map(|(p, _)| p.clone())
            .collect();
        // As at shutdown: requests in flight finish (up to the shutdown deadline) and
        // finished offsets are stored, all departed lanes at once; then the intake
        // forgets them (before any later join of the same partner).
        let mut stopping = Vec::new();
        for partner in gone {
            departed.remove(&partner);
            if let Some((handle, stop)) = lanes.remove(&partner) {
                stop.cancel();
                stopping.push((partner, handle));
            }
        }
        for (partner, handle) in stopping {
            if let Err(error) = handle.await {
                tracing::error!(partner = %partner, %error, "lane supervisor failed");
            }
            intake.leave(&partner);
            flows.remove(&partner);
            watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&partner);
            tracing::info!(partner = %partner, "the partner has no subscription any more: its lane stopped");
        }
        partners.retain(|partner, (cap, rate)| match flows.get(partner) {
            Some(flow) => {
                flow.configure(*cap, *rate);
                false
            }
            None => true,
        });
        let mut new: Vec<String> = partners.keys().cloned().collect();
        new.sort();
        let may_park = match make_topics(
            &settings,
            &new,
            config.partitions,
            config.park_after.is_some(),
        )
        .await
        {
            Ok(may_park) => may_park,
            Err(error) => {
                tracing::warn!(partners = new.len(), %error, "cannot create the new partners' topics yet");
                new.clear();
                Default::default()
            }
        };
        if !new.is_empty() && !adopted {
            // Once, before this instance first joins the lanes' group: offsets committed
            // by the per-partner groups of earlier versions (lane::upgrade). Until it
            // succeeds no lane starts: a group joined without them would start every
            // partner from its topic's beginning.
            let (s, prefix, all) = (settings.clone(), config.group_prefix.clone(), new.clone());
            match tokio::task::spawn_blocking(move || {
                super::upgrade::adopt_legacy_offsets(&s, &prefix, &all)
            })
            .await?
            {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            partitions = n,
                            "adopted the offsets of the per-partner groups of an earlier version"
                        );
                    }
                    adopted = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "adopting the offsets of earlier per-partner groups; trying again");
                    new.clear();
                }
            }
        }
        for partner in new {
            let (cap, rate) = partners[&partner];
            let stop = shutdown.child_token();
            let park_after = config
                .park_after
                .filter(|_| may_park.contains_key(&partner));
            let retry_partitions = may_park.get(&partner).copied().unwrap_or(config.partitions);
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
                dead_letter_topic: Arc::new(crate::kafka::TopicOnDemand::new(
                    dead_letter_topic(&partner),
                    settings.clone(),
                    config.partitions,
                )),
                retry_topic: Arc::new(crate::kafka::TopicOnDemand::new(
                    retry_topic(&partner),
                    settings.clone(),
                    retry_partitions,
                )),
                log: config.log.clone(),
                shutdown: stop.clone(),
            };
            let (name, lane_config, lane_intake) =
                (partner.clone(), config.clone(), intake.clone());
            let restarts =
                metrics::counter!(crate::metrics::LANE_RESTARTS, "partner" => partner.clone());
            let (who, health) = (partner.clone(), Arc::clone(&ctx.health));
            let handle = tokio::spawn(restart::keep_running(
                move || {
                    // A lane that ended left its jobs' permits taken (restart.rs).
                    ctx.flow.forget_permits();
                    let link = lane_intake.join(
                        &name,
                        ctx.park_after.is_some(),
                        Some(Arc::clone(&ctx.health)),
                    );
                    run_linked(name.clone(), link, lane_config.clone(), ctx.clone())
                },
                move |why| {
                    tracing::error!(partner = %who, %why, "delivery lane ended; restarting it");
                    restarts.increment(1);
                    health.lane_ended(why);
                },
                stop.clone(),
            ));
            lanes.insert(partner, (handle, stop));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    for (partner, (handle, _)) in lanes {
        if let Err(error) = handle.await {
            tracing::error!(partner = %partner, %error, "lane supervisor failed");
        }
    }
    // Every lane has stored its offsets: one commit for all of them.
    let _ = intake_task.await;
    intake.close();
    Ok(())
}
