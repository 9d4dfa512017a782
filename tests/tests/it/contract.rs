//! The contract (docs/openapi.yaml) against what is really sent: webhooks of every event
//! type dispatched to a receiver, and the API's answers, validated against the document's
//! JSON schemas. If the code changes a field, this fails until the document says so.

use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use dispatcher::webhook::signing::Secret;
use e2e::{eventually, unique, DispatchWorld};
use order_schemas::{EventType, OrderEvent};
use serde_json::{json, Value};

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    serde_yaml::from_str(&text).expect("openapi.yaml is YAML")
}

/// A validator for `#/components/schemas/<name>` (refs resolved within the document).
fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
    validator_of(doc, json!({ "$ref": format!("#/$defs/{name}") }))
}

/// A validator for `schema`, with the document's schemas as `#/$defs/<name>`.
fn validator_of(doc: &Value, mut schema: Value) -> jsonschema::Validator {
    let schemas = serde_json::to_string(&doc["components"]["schemas"])
        .expect("schemas")
        .replace("#/components/schemas/", "#/$defs/");
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema["$defs"] = serde_json::from_str::<Value>(&schemas).expect("json");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

/// The schema the document gives for the webhook of `event_type`.
fn webhook_schema(doc: &Value, event_type: &str) -> String {
    let reference = doc["webhooks"][event_type]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("no webhook `{event_type}` in the document"));
    reference
        .strip_prefix("#/components/schemas/")
        .expect("local ref")
        .to_string()
}

#[test]
fn every_event_type_has_a_webhook_entry_with_the_signature_headers() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    for t in EventType::ALL {
        let post = &doc["webhooks"][t.name()]["post"];
        assert!(post.is_object(), "webhooks.{} missing", t.name());
        let headers = serde_yaml::to_string(&post["parameters"]).expect("yaml");
        for h in ["WebhookId", "WebhookTimestamp", "WebhookSignature"] {
            assert!(headers.contains(h), "{}: {h}", t.name());
        }
        for status in ["2XX", "410", "429", "5XX", "4XX", "3XX"] {
            assert!(
                post["responses"][status]["description"].is_string(),
                "{}: what {status} makes us do",
                t.name()
            );
        }
    }
}

#[test]
fn the_schemas_refuse_what_the_contract_forbids() {
    let doc = document();
    let v = validator(&doc, "OrderCreatedWebhook");
    let good = json!({
        "type": "order.created",
        "timestamp": "2026-11-22T10:00:00.000Z",
        "data": {
            "event_id": "0b7c4c52-3a4f-4a43-9f7a-6a1d8c0e1f2a",
            "occurred_at": 1_795_000_000_000_i64,
            "order_id": "o-1",
            "partner_id": "acme",
            "order": {
                "customer_ref": "C-1",
                "status": "PENDING",
                "items": [{"sku": "S", "name": "N", "quantity": 1, "unit_price": {"amount_minor": 100, "currency": "EUR"}}],
                "total": {"amount_minor": 100, "currency": "EUR"}
            }
        }
    });
    assert_eq!(errors(&v, &good), Vec::<String>::new());
    let mut float = good.clone();
    float["data"]["order"]["total"]["amount_minor"] = json!(1.5);
    assert!(!v.is_valid(&float), "money is an integer");
    let mut extra = good.clone();
    extra["data"]["surprise"] = json!(1);
    assert!(!v.is_valid(&extra), "no undocumented field");
    let mut wrong_type = good.clone();
    wrong_type["type"] = json!("order.cancelled");
    assert!(!v.is_valid(&wrong_type));
    let mut bad_id = good;
    bad_id["data"]["event_id"] = json!("not-a-uuid");
    assert!(!v.is_valid(&bad_id), "formats are checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatched_webhooks_and_api_answers_match_the_document() {
    let doc = document();
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("contract");
    let secret = Secret::generate();
    let receiver = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        &secret,
        Script::default(),
    )
    .await
    .expect("receiver");
    let yaml = format!(
        "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: {}\n    event_types: [order.created, order.status_changed, order.cancelled]\n    secrets: [\"{secret}\"]\n",
        receiver.url()
    );
    assert!(world.apply(&yaml).status.success());
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    for (i, t) in EventType::ALL.iter().cycle().take(9).enumerate() {
        let e = OrderEvent::sample(*t, &format!("order-{}", i % 3), &partner, 1 + i % 3);
        publisher.publish(&e).await.expect("publish");
        sent.push(e);
    }
    assert!(
        eventually(Duration::from_secs(60), || receiver.unique() == sent.len()).await,
        "{} of {} delivered\n{}",
        receiver.unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    for d in receiver.deliveries() {
        let t = d.body["type"].as_str().expect("type").to_string();
        let v = validator(&doc, &webhook_schema(&doc, &t));
        assert_eq!(errors(&v, &d.body), Vec::<String>::new(), "{t}: {}", d.body);
        assert_eq!(
            d.body["data"]["event_id"],
            d.webhook_id.as_str(),
            "webhook-id is the event id"
        );
    }
    assert_eq!(receiver.rejected_signatures(), 0, "signed as documented");

    // The API's answers: a created subscription, a list, an events page, an error.
    let token = "contract-admin-token-0001";
    let api = world.start_api(&format!("admin: [\"{token}\"]\n"), &[]);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/v1/subscriptions", api.url))
        .bearer_auth(token)
        .json(&json!({"partner_id": partner, "url": receiver.url(), "event_types": ["order.created"]}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let mut view = created.clone();
    let secret_value = view
        .as_object_mut()
        .and_then(|o| o.remove("secret"))
        .expect("secret shown once");
    assert!(validator(&doc, "Secret").is_valid(&secret_value));
    let v = validator(&doc, "Subscription");
    assert_eq!(errors(&v, &view), Vec::<String>::new(), "{created}");
    // Its URL gets the ownership challenge, as the document describes it.
    assert_eq!(created["verification"]["state"], "pending_verification");
    assert!(
        eventually(Duration::from_secs(10), || receiver.challenges() >= 1).await,
        "challenged"
    );
    let challenge = &receiver.challenge_bodies()[0];
    let schema = doc["webhooks"]["webhook.endpoint_verification"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]
        .clone();
    assert!(schema.is_object(), "the challenge is in the document");
    let v = validator_of(&doc, schema);
    assert_eq!(errors(&v, challenge), Vec::<String>::new(), "{challenge}");
    let page: Value = client
        .get(format!("{}/v1/partners/{partner}/events?limit=20", api.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let v = validator(&doc, "EventsPage");
    assert_eq!(errors(&v, &page), Vec::<String>::new(), "{page}");
    assert_eq!(page["data"].as_array().map(Vec::len), Some(sent.len()));
    // The delivery log: a message with its attempts, and a page of messages.
    let id = sent[0].event_id().to_string();
    let mut message = Value::Null;
    for _ in 0..100 {
        let response = client
            .get(format!("{}/v1/messages/{id}", api.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("message");
        if response.status() == 200 {
            message = response.json().await.expect("json");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = validator(&doc, "MessageWithAttempts");
    assert_eq!(errors(&v, &message), Vec::<String>::new(), "{message}");
    assert_eq!(message["status"], "delivered", "{message}");
    let messages: Value = client
        .get(format!(
            "{}/v1/subscriptions/{partner}-s/messages?limit=5",
            api.url
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("messages")
        .json()
        .await
        .expect("json");
    let v = validator(&doc, "MessagePage");
    assert_eq!(errors(&v, &messages), Vec::<String>::new(), "{messages}");
    assert_eq!(
        messages["items"].as_array().map(Vec::len),
        Some(5),
        "{messages}"
    );
    let error: Value = client
        .get(format!("{}/v1/subscriptions/nope", api.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let v = validator(&doc, "Error");
    assert_eq!(errors(&v, &error), Vec::<String>::new(), "{error}");
    // A disconnected partner's subscriptions, as the disconnect call answers them.
    let off: Value = client
        .post(format!("{}/v1/partners/{partner}/disconnect", api.url))
        .bearer_auth(token)
        .json(&json!({"reason": "contract test"}))
        .send()
        .await
        .expect("disconnect")
        .json()
        .await
        .expect("json");
    let v = validator(&doc, "Subscription");
    let subscriptions = off["subscriptions"].as_array().expect("subscriptions");
    assert_eq!(subscriptions.len(), 2, "{off}");
    for s in subscriptions {
        assert_eq!(errors(&v, s), Vec::<String>::new(), "{s}");
        assert_eq!(s["state"], "disconnected");
    }
    assert_eq!(dispatcher.terminate(), Some(0));
}
