//! A cursor that retention passed: 410 with where to go on, on the real broker with
//! DeleteRecords standing for retention.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{api_tokens, partner_token, unique, DispatchWorld};
use order_schemas::EventType;
use serde_json::Value;

use super::{create_stream, ids_of, publish, read_ready, read_until};

/// Retention passing a cursor (DeleteRecords, as Kafka's retention does): reconnecting
/// with it is 410 with where to go on, and going on from there gives every event still
/// kept after the cursor, none twice; a cursor past the cut resumes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_retention_passed_is_410_with_where_to_go_on() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("stream-gone");
    let token = partner_token(&partner);
    let api = world.start_api(&api_tokens(&[&partner]), &[]);
    let _dispatcher = world.start();
    create_stream(&api, &token).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/partners/{partner}/stream", api.url);
    let open = |cursor: Option<String>| {
        let mut r = client.get(&url).bearer_auth(&token);
        if let Some(c) = cursor {
            r = r.header("last-event-id", c);
        }
        r.send()
    };
    let mut live = e2e::poll(Duration::from_secs(20), || async {
        let r = open(None).await.expect("call");
        (r.status() == 200).then_some(r)
    })
    .await
    .expect("the stream opened once its topic was made");
    let mut text = read_ready(&mut live).await;
    let p = world.publisher().await;
    let sent = publish(&p, &partner, 10, "gone").await;
    assert!(
        read_until(&mut live, &mut text, Duration::from_secs(30), |t| {
            ids_of(t, "order.created").len() == sent.len()
        })
        .await,
        "{text}"
    );
    drop(live);
    let got = ids_of(&text, "order.created");
    let ready = ids_of(&text, "ready");
    let decode = |id: &str| dispatcher::api::Cursor::decode(id).expect("a cursor");
    // Each event's partition: the one its cursor moved on.
    let mut at = decode(&ready[0].0);
    let mut part = Vec::new();
    for (id, _) in &got {
        let next = decode(id);
        let moved = next.0.iter().find(|(p, o)| at.0.get(p) != Some(o));
        part.push(*moved.expect("each event moves its partition's cursor").0);
        at = next;
    }
    // The partner read the first event (partition R), then was away; retention removed
    // every event of another partition P (the keys are fixed: they use at least two).
    let r = part[0];
    let p_gone = *part
        .iter()
        .find(|&&p| p != r)
        .expect("events in two partitions");
    let first = decode(&got[0].0);
    let last = decode(&got[got.len() - 1].0);
    let cut = last.0[&p_gone];
    let lows = e2e::delete_records_on(
        &e2e::brokers(),
        &dispatcher::subscriptions::stream_topic(&partner),
        &[(p_gone, cut)],
    )
    .await;
    assert_eq!(
        lows,
        [(p_gone, cut)],
        "the broker's low watermark after the deletion"
    );

    // The first event's cursor: events after it are gone. 410, with where to go on:
    // partition P from its oldest kept, the others where the cursor was.
    let resp = open(Some(got[0].0.clone())).await.expect("call");
    assert_eq!(resp.status(), 410);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "gone", "{body}");
    let on = body["oldest_cursor"].as_str().expect("oldest_cursor");
    let mut want = first.0.clone();
    want.insert(p_gone, cut);
    assert_eq!(decode(on).0, want, "{body}");
    // A marker per partition the events used (an order of that partition), written
    // now: a reader that has every marker has read each partition to its end, so a
    // repeat or a missing event shows without waiting on a clock.
    let event_id = |data: &Value| data["data"]["event_id"].as_str().unwrap_or("").to_string();
    let mut order_of_partition = std::collections::BTreeMap::new();
    for ((_, data), &partition) in got.iter().zip(&part) {
        let id = event_id(data);
        let order = sent
            .iter()
            .find(|e| e.event_id().to_string() == id)
            .expect("an event we sent")
            .order_id()
            .to_string();
        order_of_partition.entry(partition).or_insert(order);
    }
    let mut markers = BTreeSet::new();
    for order in order_of_partition.values() {
        let marker = e2e::order_event(EventType::OrderCreated, &partner, order, 1);
        p.publish(&marker).await.expect("publish");
        markers.insert(marker.event_id().to_string());
    }
    let read_to_markers = |cursor: String| {
        let (open, markers) = (&open, &markers);
        async move {
            let mut r = open(Some(cursor.clone())).await.expect("call");
            assert_eq!(r.status(), 200, "from {cursor}");
            let mut text = String::new();
            let ids = |t: &str| -> BTreeSet<String> {
                ids_of(t, "order.created")
                    .iter()
                    .map(|(_, d)| event_id(d))
                    .collect()
            };
            assert!(
                read_until(&mut r, &mut text, Duration::from_secs(30), |t| ids(t)
                    .is_superset(markers))
                .await,
                "every marker, from {cursor}: {text}"
            );
            let read: Vec<String> = ids_of(&text, "order.created")
                .iter()
                .map(|(_, d)| event_id(d))
                .filter(|id| !markers.contains(id))
                .collect();
            read
        }
    };
    // Going on from there: every later event still kept (none of P), each once, not
    // the first again.
    let mut kept: Vec<String> = got
        .iter()
        .zip(&part)
        .skip(1)
        .filter(|(_, &p)| p != p_gone)
        .map(|((_, data), _)| event_id(data))
        .collect();
    let mut again = read_to_markers(on.to_string()).await;
    again.sort();
    kept.sort();
    assert_eq!(again, kept);
    // A cursor past the cut resumes as before: nothing but what came since, no 410.
    let past = read_to_markers(got[got.len() - 1].0.clone()).await;
    assert!(past.is_empty(), "{past:?}");
}
