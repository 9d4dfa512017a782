//! Following a lane's group: what rebalances changed, and the read-back of a delivery
//! partition's parked keys from the retry topic.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::state::{LaneState, ParkedCounts, ReadBack};
use crate::kafka::group::GroupChange;
use crate::kafka::KafkaSettings;

/// What a lane needs to follow its group's rebalances ([`LaneState::follow`]).
pub(super) struct Rebalances {
    pub(super) partner: String,
    pub(super) topic: String,
    pub(super) retry_topic: String,
    /// When the lane parks keys: where read-backs of parked keys start.
    pub(super) read_backs: Option<ReadBacks>,
}

/// Starts read-backs of a delivery partition's parked keys; they answer on one channel.
pub(super) struct ReadBacks {
    pub(super) pool: ReadBackPool,
    pub(super) retry_topic: String,
    pub(super) answers: tokio::sync::mpsc::UnboundedSender<ReadBack>,
}

impl Rebalances {
    /// Follows partition changes ([`LaneState::follow`]) and starts the read-backs they
    /// call for.
    pub(super) fn follow(&self, state: &mut LaneState, changes: Vec<GroupChange>) {
        let started = state.follow(self, changes);
        if let Some(read_backs) = &self.read_backs {
            for (partition, generation) in started {
                let cancel = state
                    .rebuilding
                    .get(&partition)
                    .map(|r| r.cancel.clone())
                    .unwrap_or_default();
                read_backs.start(partition, generation, cancel);
            }
        }
    }
}

impl ReadBacks {
    /// Reads back the parked keys of `partition` (in the instance's [`ReadBackPool`])
    /// and sends the answer to the lane, unless `cancel` comes first.
    pub(super) fn start(&self, partition: i32, generation: u64, cancel: CancellationToken) {
        let _ = self.pool.requests.send(Request {
            topic: self.retry_topic.clone(),
            partition,
            generation,
            answers: self.answers.clone(),
            cancel,
        });
    }
}

/// Read-backs of every lane of an instance, done together: the partitions assigned at
/// once (all of them at start-up) cost one committed-offsets request, one request for
/// the ends of the retry partitions, and reads only of the partitions that hold parked
/// records, rather than a consumer each. A few batches run at once, so that a partner's
/// large backlog, read at its own pace, does not hold the answers of partitions asked
/// for after it.
#[derive(Debug, Clone)]
pub struct ReadBackPool {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
}

#[derive(Debug, Clone)]
struct Request {
    topic: String,
    partition: i32,
    generation: u64,
    answers: tokio::sync::mpsc::UnboundedSender<ReadBack>,
    /// The lane no longer wants this answer.
    cancel: CancellationToken,
}

impl Request {
    fn wanted(&self) -> bool {
        !self.cancel.is_cancelled() && !self.answers.is_closed()
    }
}

/// Most partitions read back in one batch.
const BATCH: usize = 10_000;
/// Batches read at once (a consumer each).
const CONCURRENT: usize = 4;
/// A read that gets no record for this long fails, and goes on where it stopped a
/// second later. (No limit on the whole: a backlog of any size is read to its end.)
const IDLE: Duration = Duration::from_secs(30);

impl ReadBackPool {
    /// Read-backs from the committed offsets of `group` (the retry offsets group), until
    /// `stop`.
    pub fn start(settings: KafkaSettings, group: String, stop: CancellationToken) -> Self {
        let (requests, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = receiver.recv() => match r {
                        Some(r) => r,
                        None => return,
                    },
                };
                // What arrives while every slot is busy joins the next batch.
                let slot = tokio::select! {
                    _ = stop.cancelled() => return,
                    slot = std::sync::Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    let Ok(r) = receiver.try_recv() else { break };
                    batch.push(r);
                }
                let (settings, group, stop) = (settings.clone(), group.clone(), stop.clone());
                tokio::spawn(async move {
                    read_back(settings, group, batch, stop).await;
                    drop(slot);
                });
            }
        });
        Self { requests }
    }

    /// A pool that never answers (unit tests of the lane's state).
    #[cfg(test)]
    pub(super) fn unstarted() -> Self {
        Self {
            requests: tokio::sync::mpsc::unbounded_channel().0,
        }
    }
}

/// The read-back of one retry partition, for the requests waiting for it.
#[derive(Default)]
struct Reading {
    requests: Vec<Request>,
    /// From the group's committed offset to the end, as the first attempt found them.
    range: Option<(i64, i64)>,
    /// The next offset to read (an attempt that failed goes on from there).
    next: i64,
    /// The count per key of the records read so far.
    counts: ParkedCounts,
}

/// Readings by (retry topic, partition).
type Readings = std::collections::HashMap<(String, i32), Reading>;

/// Readings not started yet, one per partition `requests` ask for.
fn readings_of(requests: Vec<Request>) -> Readings {
    let mut readings = Readings::new();
    for r in requests {
        readings
            .entry((r.topic.clone(), r.partition))
            .or_default()
            .requests
            .push(r);
    }
    readings
}

impl Reading {
    /// Whether anyone still waits for this read-back.
    fn wanted(&self) -> bool {
        self.requests.iter().any(Request::wanted)
    }

    /// Answers every request. (Two requests for one partition, from before and after a
    /// revoke or a lane restart, both get the answer: the lane keeps the one of its
    /// current generation.)
    fn answer(self) {
        let (from, to) = self.range.unwrap_or((0, 0));
        for r in self.requests {
            let _ = r.answers.send(ReadBack {
                partition: r.partition,
                generation: r.generation,
                from,
                to,
                counts: self.counts.clone(),
            });
        }
    }
}

/// Reads back a batch of requests, each partition answered as soon as it is read; an
/// attempt that fails is followed a second later by one that goes on where it stopped.
async fn read_back(
    settings: KafkaSettings,
    group: String,
    batch: Vec<Request>,
    stop: CancellationToken,
) {
    let mut readings = readings_of(batch);
    while !stop.is_cancelled() {
        // What nobody waits for any more is not read (nor read again).
        readings.retain(|_, r| r.wanted());
        if readings.is_empty() {
            return;
        }
        let (s, g, halt) = (settings.clone(), group.clone(), stop.clone());
        // Kept aside in case the attempt panics (then read again from the start).
        let requests: Vec<Request> = readings
            .values()
            .flat_map(|r| r.requests.iter().cloned())
            .collect();
        let attempt = tokio::task::spawn_blocking(move || {
            let result = read_parked(&s, &g, &mut readings, &halt);
            (readings, result)
        })
        .await;
        let error = match attempt {
            Ok((left, Ok(()))) => {
                readings = left;
                continue;
            }
            Ok((left, Err(error))) => {
                readings = left;
                error
            }
            Err(panic) => {
                readings = readings_of(requests);
                anyhow::anyhow!("the read-back failed: {panic}")
            }
        };
        tracing::warn!(partitions = readings.len(), %error, "reading parked keys back; going on in a second");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Reads back the parked keys of retry partitions: for each (retry topic, partition) of
/// `readings` the records of that retry partition from the committed offset of `group`
/// (the retry offsets group) to its end, counting records per key (memory grows with
/// the keys, not the records). Each partition is answered and removed from `readings`
/// as soon as it is read; on an error, what is left goes on from where it stopped.
/// Blocking.
fn read_parked(
    settings: &KafkaSettings,
    group: &str,
    readings: &mut Readings,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut config = settings.reader();
    config
        .set("group.id", group)
        // What the consumer fetches ahead of the count: bounded, whatever the backlog.
        .set("queued.max.messages.kbytes", "16384");
    let consumer: BaseConsumer = config.create()?;
    // A retry topic is made on the partner's first parked record: where there is none
    // (or not that partition yet, or no more: the partner is gone), nothing is parked.
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let exists: std::collections::HashSet<(&str, i32)> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(move |p| (t.name(), p.id())))
        .collect();
    let gone: Vec<(String, i32)> = readings
        .keys()
        .filter(|(t, p)| !exists.contains(&(t.as_str(), *p)))
        .cloned()
        .collect();
    for tp in gone {
        if let Some(reading) = readings.remove(&tp) {
            reading.answer();
        }
    }
    if readings.is_empty() {
        return Ok(());
    }
    let list_of = |unstarted: bool| {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), r) in readings.iter() {
            if !unstarted || r.range.is_none() {
                list.add_partition(topic, *partition);
            }
        }
        list
    };
    // Both ends of partitions in one request each (timestamp -2: earliest, -1: latest).
    let ends = |list: &TopicPartitionList, at: Offset| -> anyhow::Result<TopicPartitionList> {
        let mut l = list.clone();
        l.set_all_offsets(at)?;
        Ok(consumer.offsets_for_times(l, Duration::from_secs(30))?)
    };
    let offset_in = |l: &TopicPartitionList, topic: &str, partition: i32| match l
        .find_partition(topic, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    // Records deleted by retention since (or before) are not parked any more: reading
    // goes on from the earliest there is.
    let lows = ends(&list_of(false), Offset::Beginning)?;
    let unstarted = list_of(true);
    if unstarted.count() > 0 {
        let committed = consumer.committed_offsets(unstarted.clone(), Duration::from_secs(30))?;
        let highs = ends(&unstarted, Offset::End)?;
        for ((topic, partition), r) in readings.iter_mut().filter(|(_, r)| r.range.is_none()) {
            let low = offset_in(&lows, topic, *partition).unwrap_or(0);
            let high = offset_in(&highs, topic, *partition)
                .ok_or_else(|| anyhow::anyhow!("no end offset for {topic}/{partition}"))?;
            let from = offset_in(&committed, topic, *partition).map_or(low, |o| o.max(low));
            r.range = Some((from, high.max(from)));
            r.next = from;
        }
    }
    let mut ranges = std::collections::BTreeMap::new();
    for ((topic, partition), r) in readings.iter_mut() {
        let low = offset_in(&lows, topic, *partition).unwrap_or(0);
        r.next = r.next.max(low);
        let to = r.range.map_or(0, |(_, to)| to);
        ranges.insert((topic.clone(), *partition), (r.next, to.max(r.next)));
    }
    let readings = std::cell::RefCell::new(readings);
    crate::kafka::visit_ranges(
        &consumer,
        &ranges,
        crate::kafka::Patience {
            idle: IDLE,
            deadline: None,
            stop: Some(stop.clone()),
        },
        |m| {
            use rdkafka::Message;
            let mut readings = readings.borrow_mut();
            let tp = (m.topic().to_string(), m.partition());
            let Some(r) = readings.get_mut(&tp) else {
                return false;
            };
            if !r.wanted() {
                // Superseded or revoked meanwhile: stop reading it.
                readings.remove(&tp);
                return false;
            }
            let key = m.key().unwrap_or_default();
            match r.counts.get_mut(key) {
                Some(n) => *n += 1,
                None => {
                    r.counts.insert(key.to_vec(), 1);
                }
            }
            r.next = m.offset() + 1;
            true
        },
        |topic, partition| {
            if let Some(reading) = readings
                .borrow_mut()
                .remove(&(topic.to_string(), partition))
            {
                reading.answer();
            }
        },
    )
}
