//! Upgrading from the per-partner lane groups of earlier versions (#14): the new layout
//! starts where the old groups stopped.

use std::time::Duration;

use consumer_examples::receiver::Script;
use e2e::{assert_per_order, brokers, eventually, unique, DispatchWorld};
use order_schemas::{EventType, OrderEvent};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The offsets `group` committed in `topic`'s partitions `0..partitions`.
fn committed(group: &str, topic: &str, partitions: i32) -> TopicPartitionList {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets")
}

/// The sum of the offsets `group` committed in `topic`'s partitions `0..partitions`.
fn committed_sum(group: &str, topic: &str, partitions: i32) -> i64 {
    committed(group, topic, partitions)
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Commits `offsets` for `group` as a consumer outside the group (what an earlier
/// version's lane group left behind).
fn commit_as(group: &str, offsets: &TopicPartitionList) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    consumer
        .commit(offsets, CommitMode::Sync)
        .expect("commit as the old group");
}

/// A deployment of an earlier version delivered the first events and committed them in
/// its per-partner group `<prefix>.<partner>`; the new version, started on the same
/// prefix, sends only what came after: nothing twice, nothing lost, order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_per_partner_groups_resends_nothing_the_old_groups_committed() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    let (partner, receiver) = world
        .partner_with_receiver("upgrade", Script::default(), "")
        .await;
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    let publish = async |from: usize, to: usize, sent: &mut Vec<OrderEvent>| {
        for i in from..to {
            let kind = if i < 4 {
                EventType::OrderCreated
            } else {
                EventType::OrderStatusChanged
            };
            let event = OrderEvent::sample(kind, &format!("order-{}", i % 4), &partner, 1);
            publisher.publish(&event).await.expect("publish");
            sent.push(event);
        }
    };

    // The old deployment's work: 12 events delivered and committed, then stopped.
    publish(0, 12, &mut sent).await;
    let old = world.start();
    let first = eventually(Duration::from_secs(60), || receiver.unique() == 12).await;
    assert!(
        first,
        "{} of 12 delivered\n{}",
        receiver.unique(),
        old.log_tail()
    );
    assert_eq!(old.terminate(), Some(0));
    // What it committed, as the per-partner group of an earlier version would hold it
    // under a prefix whose new groups are empty.
    let topic = format!("deliveries.{partner}");
    let offsets = committed(&world.lane_group_prefix, &topic, 3);
    let done = committed_sum(&world.lane_group_prefix, &topic, 3);
    assert_eq!(
        done, 12,
        "the first run committed its 12 records: {offsets:?}"
    );
    world.lane_group_prefix = unique("upgraded");
    commit_as(&format!("{}.{partner}", world.lane_group_prefix), &offsets);

    // The new version starts while more events come.
    publish(12, 20, &mut sent).await;
    let new = world.start();
    let all = eventually(Duration::from_secs(60), || receiver.unique() == 20).await;
    assert!(
        all,
        "{} of 20 delivered\n{}",
        receiver.unique(),
        new.log_tail()
    );
    // Everything is finished once the new group has committed all 20 records: any
    // record sent again would have come before that.
    let group = world.lane_group_prefix.clone();
    let committed_all = eventually(Duration::from_secs(30), || {
        committed_sum(&group, &topic, 3) == 20
    })
    .await;
    assert!(
        committed_all,
        "the new group committed all 20\n{}",
        new.log_tail()
    );
    let resent = receiver.deliveries().iter().filter(|d| d.duplicate).count();
    assert_eq!(
        resent,
        0,
        "the new layout resent what the old group had committed\n{}",
        new.log_tail()
    );
    assert_per_order(&receiver, &sent);
    let log = std::fs::read_to_string(&new.log).unwrap_or_default();
    assert!(
        log.contains("adopted offsets of per-partner groups"),
        "the adoption is logged\n{}",
        new.log_tail()
    );
    assert_eq!(new.terminate(), Some(0));
}
