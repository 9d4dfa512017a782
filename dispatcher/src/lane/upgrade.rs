//! Upgrading from per-partner groups. Before #14 each partner's lane was a consumer group
//! of its own, `<prefix>.<partner>`, over its delivery and retry topics; now every lane
//! of an instance shares one member of group `<prefix>`, and retry offsets live in
//! `<prefix>.retry.offsets`. Before an instance first joins, it copies each offset an
//! old group committed into the new groups, for every partition the new groups have no
//! offset for yet: the new layout starts where the old one stopped, so an upgrade
//! re-sends at most what was in flight when the old version stopped.
//!
//! Kafka accepts such a group-less commit only while nobody is in the group: the first
//! instance of the new version adopts the offsets (the others find them there). Stop
//! every old instance before starting the new ones: an old instance still running keeps
//! delivering from its own groups, and what it commits after the copy is not adopted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::intake::retry_offsets_group;
use crate::kafka::KafkaSettings;
use crate::subscriptions::{delivery_topic, retry_topic};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The group of a partner's lane before #14.
pub fn legacy_group(prefix: &str, partner: &str) -> String {
    format!("{prefix}.{partner}")
}

/// Copies the offsets the per-partner groups of `partners` committed into the lanes'
/// groups, where those have none. Returns the partitions adopted. Blocking.
pub fn adopt_legacy_offsets(
    settings: &KafkaSettings,
    prefix: &str,
    partners: &[String],
) -> anyhow::Result<usize> {
    let groups: HashSet<String> = {
        let client: BaseConsumer = settings.reader().create()?;
        let list = client.fetch_group_list(None, TIMEOUT)?;
        list.groups().iter().map(|g| g.name().to_string()).collect()
    };
    let old: Vec<&String> = partners
        .iter()
        .filter(|p| groups.contains(&legacy_group(prefix, p)))
        .collect();
    if old.is_empty() {
        return Ok(0);
    }
    let counts = settings.all_partition_counts()?;
    let retry_group = retry_offsets_group(prefix);
    let mut adopted = 0;
    // (new group, topic of each partner) for the delivery and the retry topics.
    for (group, topic_of) in [
        (prefix.to_string(), delivery_topic as fn(&str) -> String),
        (retry_group, retry_topic as fn(&str) -> String),
    ] {
        let new = committed_by(settings, &group, &old, topic_of, &counts)?;
        let mut copy = TopicPartitionList::new();
        for partner in &old {
            let legacy = committed_by(
                settings,
                &legacy_group(prefix, partner),
                &[partner],
                topic_of,
                &counts,
            )?;
            for ((topic, partition), offset) in legacy {
                if !new.contains_key(&(topic.clone(), partition)) {
                    copy.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
                }
            }
        }
        if copy.count() == 0 {
            continue;
        }
        let mut config = settings.reader();
        config.set("group.id", &group);
        let committer: BaseConsumer = config.create()?;
        committer.commit(&copy, CommitMode::Sync)?;
        tracing::info!(%group, partitions = copy.count(), "adopted offsets of per-partner groups");
        adopted += copy.count();
    }
    Ok(adopted)
}

/// The offsets `group` committed in the topics of `partners` (`topic_of`), by (topic,
/// partition).
fn committed_by(
    settings: &KafkaSettings,
    group: &str,
    partners: &[&String],
    topic_of: fn(&str) -> String,
    counts: &HashMap<String, usize>,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut list = TopicPartitionList::new();
    for p in partners {
        let topic = topic_of(p);
        for partition in 0..counts.get(&topic).copied().unwrap_or(0) {
            list.add_partition(&topic, partition as i32);
        }
    }
    let mut found = BTreeMap::new();
    if list.count() == 0 {
        return Ok(found);
    }
    let mut config = settings.reader();
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create()?;
    for e in consumer.committed_offsets(list, TIMEOUT)?.elements() {
        if let Offset::Offset(o) = e.offset() {
            found.insert((e.topic().to_string(), e.partition()), o);
        }
    }
    Ok(found)
}
