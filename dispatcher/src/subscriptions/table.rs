//! The subscription table every dispatcher instance shares: read from the compacted
//! subscriptions topic from the beginning, then followed, so changes reach running
//! instances without a restart. Start-up waits until the table has caught up with the
//! topic, so no event is routed against a half-loaded table.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::kafka::KafkaSettings;
use crate::metrics as m;
use crate::subscriptions::Subscription;
use crate::webhook::ssrf::Allowlist;

/// A subscription with what every delivery needs from it worked out once, when it
/// entered the table: its URL parsed and its signing keys decoded.
#[derive(Debug)]
pub struct Target {
    pub subscription: Arc<Subscription>,
    /// The parsed URL, or why it does not parse.
    pub url: Result<reqwest::Url, String>,
    pub keys: Vec<crate::webhook::signing::Secret>,
    /// The subscription's own CA for its partner's server, parsed.
    pub ca: Option<crate::webhook::tls::TrustedCa>,
    /// Its payload filter, compiled, with its counters.
    pub filter: Option<Arc<TargetFilter>>,
}

/// A subscription an event matched by type and partner, with its filter if it has one.
#[derive(Debug, Clone)]
pub struct Matched {
    pub subscription: Arc<Subscription>,
    pub filter: Option<Arc<TargetFilter>>,
    /// Invalid here ([`Invalid`]): its records go to its partner's lane, which
    /// dead-letters them with why (a stream subscription's too: no lane reads a stream).
    pub invalid: bool,
}

impl Target {
    fn new(subscription: Subscription, tallies: &Mutex<HashMap<String, Arc<Tally>>>) -> Self {
        // (A subscription with no URL to deliver to yet is held before any attempt.)
        let url = subscription.delivery_url().unwrap_or(&subscription.url);
        let ca = subscription
            .delivery_ca_pem()
            .map(crate::webhook::tls::TrustedCa::parse)
            .transpose();
        // A CA that does not parse refuses the calls; never the public roots instead.
        let url = match &ca {
            Ok(_) => reqwest::Url::parse(url).map_err(|e| format!("bad URL: {e}")),
            Err(e) => Err(format!("tls.ca_pem {e}")),
        };
        Self {
            url,
            filter: TargetFilter::new(&subscription, tallies),
            keys: subscription.signing_keys(),
            ca: ca.ok().flatten(),
            subscription: Arc::new(subscription),
        }
    }
}

/// A subscription record that failed validation when this instance read it (for
/// example after the operator narrowed the SSRF allowlist) and has no valid version in
/// force: its events are routed and then dead-lettered with `reason`, not dropped.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The record as parsed, when it parsed (it names the partner and event types).
    pub subscription: Option<Arc<Subscription>>,
    pub reason: String,
}

/// Where the table stands against the topic it follows (see [`SubscriptionTable::catch_up`]).
#[derive(Debug, Default)]
struct Positions {
    /// Per subscription id: the partition and offset of the latest record applied (a
    /// tombstone included). A record older than it is not applied again: an own write
    /// applied at once is not undone when the follower reads an earlier record late.
    placed: HashMap<String, (i32, i64)>,
    /// Per partition: the next offset the follower applies.
    next: HashMap<i32, i64>,
    /// Per partition: this process's own writes, applied here already, that the
    /// follower has not read back yet.
    own: HashMap<i32, BTreeSet<i64>>,
}

impl Positions {
    /// Whether the follower has applied `partition` up to `end`, counting the own
    /// writes it has not read back yet (they are applied here already).
    fn applied(&self, partition: i32, end: i64) -> bool {
        let next = self.next.get(&partition).copied().unwrap_or(0);
        if next >= end {
            return true;
        }
        let Some(own) = self.own.get(&partition) else {
            return false;
        };
        // (More offsets to read than own writes: something else is among them.)
        end - next <= own.len() as i64 && (next..end).all(|o| own.contains(&o))
    }
}

/// The consumer a table follows its topic with.
struct Follower {
    consumer: StreamConsumer,
    /// Asks the topic's ends: a client of its own (a broker answers one connection's
    /// requests in order, so a look-up on the follower's connection would wait for
    /// its fetch).
    ends: rdkafka::consumer::BaseConsumer,
    topic: String,
    /// The topic's partitions (a subscription never seen is in the only one, when
    /// there is only one: the subscriptions topic is made with one).
    partitions: Vec<i32>,
    /// Set when the follower's stream ended: nothing will be applied any more.
    ended: std::sync::atomic::AtomicBool,
}

/// Subscriptions by id, and a counter that moves on every change.
#[derive(Clone)]
pub struct SubscriptionTable {
    inner: Arc<RwLock<HashMap<String, Arc<Target>>>>,
    invalid: Arc<RwLock<HashMap<String, Invalid>>>,
    changes: watch::Sender<u64>,
    positions: Arc<Mutex<Positions>>,
    /// Moves whenever the follower applies a record.
    progress: watch::Sender<u64>,
    follower: Option<Arc<Follower>>,
    /// Held by one write at a time ([`Self::save_merged`], [`Self::write`]).
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Per subscription with a filter: what it kept back, not yet in the delivery log.
    tallies: Arc<Mutex<HashMap<String, Arc<Tally>>>>,
}

impl std::fmt::Debug for SubscriptionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionTable")
            .field("subscriptions", &self.inner.read().map(|t| t.len()).ok())
            .finish_non_exhaustive()
    }
}

impl Default for SubscriptionTable {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            invalid: Arc::default(),
            changes: watch::channel(0).0,
            positions: Arc::default(),
            progress: watch::channel(0).0,
            follower: None,
            writing: Arc::default(),
            tallies: Arc::default(),
        }
    }
}

impl SubscriptionTable {
    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.target(id).map(|t| Arc::clone(&t.subscription))
    }

    /// The subscription with its parsed URL and keys (what a delivery uses).
    pub fn target(&self, id: &str) -> Option<Arc<Target>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Subscription>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|t| Arc::clone(&t.subscription))
            .collect()
    }

    /// Why the subscription `id` is not in force although the topic has it (it failed
    /// validation here), or `None`.
    pub fn invalid(&self, id: &str) -> Option<Invalid> {
        self.invalid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every invalid subscription by id (for listing and deleting them).
    pub fn all_invalid(&self) -> Vec<(String, Invalid)> {
        self.invalid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Partners that have an invalid subscription (their lanes dead-letter its records).
    pub fn invalid_partners(&self) -> Vec<String> {
        self.invalid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|i| i.subscription.as_ref().map(|s| s.partner_id.clone()))
            .collect()
    }

    /// Subscriptions that receive `event_type` of an order of `partner_id`, the invalid
    /// ones included (their records are dead-lettered with the reason downstream).
    /// Their payload filters are for the caller to apply.
    pub fn matching(&self, event_type: &str, partner_id: &str) -> Vec<Matched> {
        // Called for every orders record: filter under the lock, clone only the matches.
        let table = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<_> = table
            .values()
            .filter(|t| t.subscription.wants(event_type, partner_id))
            .map(|t| Matched {
                subscription: Arc::clone(&t.subscription),
                filter: t.filter.clone(),
                invalid: false,
            })
            .collect();
        drop(table);
        let invalid = self.invalid.read().unwrap_or_else(|p| p.into_inner());
        if !invalid.is_empty() {
            found.extend(
                invalid
                    .values()
                    .filter_map(|i| i.subscription.as_ref())
                    .filter(|s| s.wants(event_type, partner_id))
                    .map(|s| Matched {
                        subscription: Arc::clone(s),
                        filter: None,
                        invalid: true,
                    }),
            );
        }
        drop(invalid);
        found.sort_by(|a, b| a.subscription.id.cmp(&b.subscription.id));
        found
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn upsert(&self, s: Subscription) {
        // Built before the table's lock is taken: it compiles the filter and takes the
        // tallies' lock (which `take_tallies` holds while it never takes the table's).
        let target = Arc::new(Target::new(s, &self.tallies));
        let id = target.subscription.id.clone();
        self.invalid
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, target);
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn remove(&self, id: &str) {
        self.invalid
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Applies one record of the subscriptions topic; an invalid value is logged and
    /// counted; the previous version, if any, stays in force, and without one the
    /// subscription is kept as [`Invalid`] so its records are dead-lettered with why.
    pub fn apply_record(&self, key: Option<&[u8]>, value: Option<&[u8]>, allowlist: &Allowlist) {
        let Some(id) = key.map(|k| String::from_utf8_lossy(k).into_owned()) else {
            return;
        };
        let Some(value) = value else {
            self.remove(&id);
            metrics::counter!(m::SUBSCRIPTION_CHANGES).increment(1);
            return;
        };
        let mut as_parsed = None;
        let parsed = serde_json::from_slice::<Subscription>(value)
            .map_err(|e| format!("subscription `{id}`: {e}"))
            .and_then(|s| {
                if let Err(e) = s.validate(allowlist) {
                    // Routed to (and dead-lettered) only when its partner id names a
                    // topic and it reaches no one else's orders: a bad partner id or
                    // an internal flag on a record we cannot trust must not become a
                    // target (a write to an impossible topic would stall the router).
                    as_parsed = (s.id == id
                        && crate::subscriptions::valid_partner_id(&s.partner_id)
                        && !s.internal)
                        .then(|| Arc::new(s));
                    return Err(e.to_string());
                }
                Ok(s)
            });
        match parsed {
            Ok(s) if s.id == id => {
                self.upsert(s);
                metrics::counter!(m::SUBSCRIPTION_CHANGES).increment(1);
            }
            Ok(s) => {
                tracing::warn!(key = %id, id = %s.id, "subscription record key and id differ; skipped")
            }
            Err(error) => {
                metrics::counter!(m::INVALID_SUBSCRIPTIONS).increment(1);
                if self.target(&id).is_some() {
                    tracing::warn!(key = %id, %error, "invalid subscription record skipped; the previous version stays in force");
                    return;
                }
                tracing::error!(key = %id, %error, "invalid subscription: its records are dead-lettered until it is fixed");
                self.invalid
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        id,
                        Invalid {
                            subscription: as_parsed,
                            reason: error,
                        },
                    );
                self.changes.send_modify(|n| *n += 1);
            }
        }
    }

    /// Applies a record the follower read, unless a later record of the same
    /// subscription is applied already (an own write, applied when it was written).
    fn apply_at(&self, m: &impl Message, allowlist: &Allowlist) {
        let (partition, offset) = (m.partition(), m.offset());
        let mut at = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let id = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let newer = id.as_ref().is_some_and(|id| {
            at.placed
                .get(id)
                .is_some_and(|&(p, o)| p == partition && o >= offset)
        });
        if !newer {
            self.apply_record(m.key(), m.payload(), allowlist);
            if let Some(id) = id {
                at.placed.insert(id, (partition, offset));
            }
        }
        at.next.insert(partition, offset + 1);
        if let Some(own) = at.own.get_mut(&partition) {
            *own = own.split_off(&(offset + 1));
        }
        drop(at);
        self.progress.send_modify(|n| *n += 1);
    }

    /// Loads `topic` up to its current end, then keeps following it in a task.
    pub async fn follow(
        settings: &KafkaSettings,
        topic: &str,
        allowlist: Arc<Allowlist>,
    ) -> anyhow::Result<Self> {
        let mut table = Self::default();
        let group = format!(
            "orderhooks-subscriptions-reader-{}",
            uuid::Uuid::new_v4().simple()
        );
        let mut config = settings.consumer(&group);
        config.set("enable.auto.commit", "false");
        // A change written elsewhere reaches this table within 50 ms of the write (at
        // most 20 small fetches a second): a writer waiting for it (`catch_up`) waits
        // little, and routing follows a change sooner.
        config.set("fetch.wait.max.ms", "50");
        let consumer: StreamConsumer = config.create()?;
        let partitions = crate::kafka::partitions_of(&consumer, topic, "subscriptions topic")?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in &partitions {
            assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
            let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
            if high > low {
                ends.insert(*p, high);
            }
        }
        consumer.assign(&assignment)?;
        let follower = Arc::new(Follower {
            consumer,
            ends: settings.reader().create()?,
            topic: topic.to_string(),
            partitions: partitions.clone(),
            ended: Default::default(),
        });
        table.follower = Some(Arc::clone(&follower));
        let consumer = &follower.consumer;
        let mut stream = consumer.stream();
        while !ends.is_empty() {
            let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("subscriptions topic `{topic}` not read to its end within 30 s")
                })?
                .ok_or_else(|| anyhow::anyhow!("subscriptions stream ended"))??;
            table.apply_at(&message, &allowlist);
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                ends.remove(&message.partition());
            }
        }
        drop(stream);
        tracing::info!(
            subscriptions = table.all().len(),
            "subscription table loaded"
        );
        let reader = table.clone();
        tokio::spawn(async move {
            let mut stream = follower.consumer.stream();
            while let Some(message) = stream.next().await {
                match message {
                    Ok(m) => reader.apply_at(&m, &allowlist),
                    Err(error) => tracing::warn!(%error, "reading subscriptions"),
                }
            }
            tracing::error!("the subscriptions table stopped following its topic");
            follower
                .ended
                .store(true, std::sync::atomic::Ordering::SeqCst);
            reader.progress.send_modify(|n| *n += 1);
        });
        Ok(table)
    }
}

/// Writes `subscriptions` to the topic (key = id) and waits for the acknowledgements;
/// `remove` ids get tombstones.
pub async fn publish(
    settings: &KafkaSettings,
    topic: &str,
    subscriptions: &[Subscription],
    remove: &[String],
) -> anyhow::Result<()> {
    let producer: FutureProducer = settings
        .producer()
        .set("message.timeout.ms", "30000")
        .create()?;
    publish_with(&producer, topic, subscriptions, remove).await
}

/// As [`publish`], with a producer the caller keeps (the API's, shared by its requests).
pub async fn publish_with(
    producer: &FutureProducer,
    topic: &str,
    subscriptions: &[Subscription],
    remove: &[String],
) -> anyhow::Result<()> {
    for s in subscriptions {
        let value = serde_json::to_vec(s)?;
        producer
            .send(
                FutureRecord::to(topic).key(&s.id).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing subscription `{}`: {e}", s.id))?;
    }
    for id in remove {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(topic).key(id),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("deleting subscription `{id}`: {e}"))?;
    }
    Ok(())
}

mod filters;
pub use filters::{Taken, Tally, TargetFilter};

#[cfg(test)]
mod tests;
mod writes;

pub use writes::{merge, WriteLock};
