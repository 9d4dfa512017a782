//! Encode/decode through a real registry over HTTP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use order_schemas::wire::{self, FramingError};
use order_schemas::{CodecError, EventType, OrderCodec, OrderEvent};
use tokio::sync::oneshot;

/// A registry served in this process on a free port; stops when dropped.
struct Registry {
    url: String,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn registry_on(addr: SocketAddr) -> Registry {
    let (listener, addr) = schema_registry::bind(addr).await.expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let store = Arc::new(schema_registry::Store::in_memory());
    tokio::spawn(schema_registry::serve(listener, store, async move {
        let _ = stopped.await;
    }));
    Registry {
        url: format!("http://{addr}"),
        addr,
        _stop: stop,
    }
}

fn new_codec(url: &str, topic: &str) -> OrderCodec {
    OrderCodec::new(url, topic, Duration::from_secs(2)).expect("codec")
}

#[tokio::test]
async fn every_event_type_round_trips_in_confluent_framing() {
    let reg = registry_on("127.0.0.1:0".parse().expect("addr")).await;
    let codec = new_codec(&reg.url, "orders");
    let ids = codec.register_all().await.expect("register");
    assert_eq!(ids.len(), 3);
    for t in EventType::ALL {
        let event = OrderEvent::sample(t, "o-1", "partner-a", 8);
        let bytes = codec.encode(&event).await.expect("encode");
        assert_eq!(
            bytes,
            codec.encode_generic(&event).await.expect("generic"),
            "{t}: same bytes as schema_registry_converter"
        );
        let (id, body) = wire::unframe(&bytes).expect("framed");
        assert_eq!(
            Some(&(t, id)),
            ids.iter().find(|(k, _)| *k == t),
            "{t} uses its registered id"
        );
        assert!(!body.is_empty());
        // A separate codec (as a consumer would have) decodes it through the registry.
        let decoded = new_codec(&reg.url, "elsewhere")
            .decode(&bytes)
            .await
            .expect("decode");
        assert_eq!(decoded, event);
    }
    // Subjects follow TopicRecordNameStrategy.
    let subjects: Vec<String> = reqwest::get(format!("{}/subjects", reg.url))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        subjects,
        [
            "orders-orderhooks.events.OrderCancelled",
            "orders-orderhooks.events.OrderCreated",
            "orders-orderhooks.events.OrderStatusChanged"
        ]
    );
}

#[tokio::test]
async fn bad_records_get_a_reason_that_names_the_problem() {
    let reg = registry_on("127.0.0.1:0".parse().expect("addr")).await;
    let codec = new_codec(&reg.url, "orders");
    let good = codec
        .encode(&OrderEvent::sample(EventType::OrderCreated, "o", "p", 2))
        .await
        .expect("encode");
    let (id, body) = wire::unframe(&good).expect("framed");

    assert_eq!(
        codec.decode(b"{\"json\":true}").await,
        Err(CodecError::Framing(FramingError::BadMagic(b'{')))
    );
    assert_eq!(
        codec.decode(&[0, 0, 0]).await,
        Err(CodecError::Framing(FramingError::TooShort(3)))
    );
    assert_eq!(
        codec.decode(&wire::frame(4242, body)).await,
        Err(CodecError::UnknownSchemaId(4242))
    );
    let truncated = codec
        .decode(&wire::frame(id, &body[..body.len() / 2]))
        .await;
    assert!(
        matches!(truncated, Err(CodecError::Undecodable { id: i, .. }) if i == id),
        "{truncated:?}"
    );

    // A record of a schema that is not an order event.
    let other: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/subjects/x-value/versions", reg.url))
        .json(&serde_json::json!({"schema": r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"int"}]}"#}))
        .send().await.expect("post").json().await.expect("json");
    let ping_id = other["id"].as_u64().expect("id") as u32;
    let err = codec
        .decode(&wire::frame(ping_id, &[2]))
        .await
        .expect_err("not an order");
    assert_eq!(
        err,
        CodecError::NotAnOrderEvent {
            id: ping_id,
            name: "Ping".into()
        }
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unreachable_registry_is_retryable_and_not_cached() {
    // Find a free port, and bring the registry up on it only after the first failure.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let codec = new_codec(&format!("http://{addr}"), "orders");
    let event = OrderEvent::sample(EventType::OrderCreated, "o", "p", 1);
    let err = codec.encode(&event).await.expect_err("registry is down");
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("schema registry unavailable"),
        "{err}"
    );
    let err = codec
        .decode(&wire::frame(1, &[2, 3]))
        .await
        .expect_err("registry is down");
    assert!(err.is_retryable(), "{err}");

    let reg = registry_on(addr).await;
    assert_eq!(reg.addr, addr);
    let bytes = codec
        .encode(&event)
        .await
        .expect("works once the registry is up");
    assert_eq!(codec.decode(&bytes).await.expect("decode"), event);
}

#[tokio::test]
async fn an_incompatible_registered_schema_is_a_refusal_not_a_retry() {
    let reg = registry_on("127.0.0.1:0".parse().expect("addr")).await;
    // Someone registered a different, incompatible schema under our subject first.
    let subject = "orders-orderhooks.events.OrderCreated";
    let status = reqwest::Client::new()
        .post(format!("{}/subjects/{subject}/versions", reg.url))
        .json(&serde_json::json!({"schema": r#"{"type":"record","name":"OrderCreated","namespace":"orderhooks.events","fields":[{"name":"legacy","type":"int"}]}"#}))
        .send().await.expect("post").status();
    assert!(status.is_success());
    let err = new_codec(&reg.url, "orders")
        .register_all()
        .await
        .expect_err("incompatible");
    assert!(matches!(err, CodecError::RegistryRefused(_)), "{err:?}");
    assert!(err.to_string().contains("409"), "{err}");
}
