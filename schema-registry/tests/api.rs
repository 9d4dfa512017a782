//! The registry binary, started for real on 127.0.0.1:0, driven over HTTP the way
//! Confluent clients drive Confluent Schema Registry.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const CT: &str = "application/vnd.schemaregistry.v1+json";
const V1: &str =
    r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"string"}]}"#;
const V2_COMPATIBLE: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"string"},{"name":"note","type":["null","string"],"default":null}]}"#;
const V2_BREAKING: &str = r#"{"type":"record","name":"Order","namespace":"t","fields":[{"name":"id","type":"string"},{"name":"qty","type":"int"}]}"#;

/// A registry process; killed (by pid) when dropped.
struct Registry {
    child: Child,
    url: String,
}

impl Registry {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_schema-registry"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn schema-registry");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        Self { child, url }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).header("Accept", CT);
    if let Some(b) = body {
        req = req.header("Content-Type", CT).body(b.to_string());
    }
    let resp = req.send().await.expect("registry answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(url: String, body: Value) -> (u16, Value) {
    call(reqwest::Method::POST, url, Some(body)).await
}

async fn get(url: String) -> (u16, Value) {
    call(reqwest::Method::GET, url, None).await
}

#[tokio::test]
async fn register_lookup_and_versions_follow_confluent_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    let u = &reg.url;

    let (status, body) = post(
        format!("{u}/subjects/orders-value/versions"),
        json!({"schema": V1}),
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"id": 1})));
    // Same schema, same subject: same id, no new version.
    let (_, again) = post(
        format!("{u}/subjects/orders-value/versions"),
        json!({"schema": V1, "schemaType": "AVRO"}),
    )
    .await;
    assert_eq!(again, json!({"id": 1}));
    let (status, v2) = post(
        format!("{u}/subjects/orders-value/versions"),
        json!({"schema": V2_COMPATIBLE}),
    )
    .await;
    assert_eq!((status, v2["id"].as_u64()), (200, Some(2)));

    assert_eq!(
        get(format!("{u}/subjects")).await,
        (200, json!(["orders-value"]))
    );
    assert_eq!(
        get(format!("{u}/subjects/orders-value/versions")).await,
        (200, json!([1, 2]))
    );
    let (_, latest) = get(format!("{u}/subjects/orders-value/versions/latest")).await;
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(latest["subject"], "orders-value");
    let (_, by_id) = get(format!("{u}/schemas/ids/1?deleted=true")).await;
    let served: Value =
        serde_json::from_str(by_id["schema"].as_str().expect("schema string")).expect("json");
    assert_eq!(served, serde_json::from_str::<Value>(V1).expect("v1"));

    let (status, found) = post(format!("{u}/subjects/orders-value"), json!({"schema": V1})).await;
    assert_eq!(
        (status, found["version"].as_u64(), found["id"].as_u64()),
        (200, Some(1), Some(1))
    );
    assert_eq!(
        get(format!("{u}/schemas/ids/2/versions")).await.1,
        json!([{"subject": "orders-value", "version": 2}])
    );
}

#[tokio::test]
async fn incompatible_schema_is_refused_with_409_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    let u = &reg.url;
    post(format!("{u}/subjects/s/versions"), json!({"schema": V1})).await;

    let (status, check) = post(
        format!("{u}/compatibility/subjects/s/versions/latest?verbose=true"),
        json!({"schema": V2_BREAKING}),
    )
    .await;
    assert_eq!((status, &check["is_compatible"]), (200, &json!(false)));
    assert!(
        check["messages"][0]
            .as_str()
            .expect("message")
            .contains("qty"),
        "{check}"
    );

    let (status, err) = post(
        format!("{u}/subjects/s/versions"),
        json!({"schema": V2_BREAKING}),
    )
    .await;
    assert_eq!((status, &err["error_code"]), (409, &json!(409)));
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("incompatible"),
        "{err}"
    );
    assert_eq!(get(format!("{u}/subjects/s/versions")).await.1, json!([1]));

    // With the subject set to NONE the same schema is accepted.
    let (status, _) = call(
        reqwest::Method::PUT,
        format!("{u}/config/s"),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        post(
            format!("{u}/subjects/s/versions"),
            json!({"schema": V2_BREAKING})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(format!("{u}/config")).await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        get(format!("{u}/config/s")).await.1,
        json!({"compatibilityLevel": "NONE"})
    );
}

#[tokio::test]
async fn errors_have_confluent_shape_and_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    let u = &reg.url;
    let cases = [
        (
            get(format!("{u}/subjects/nope/versions")).await,
            404,
            40401,
            "nope",
        ),
        (get(format!("{u}/schemas/ids/99")).await, 404, 40403, "99"),
        (
            post(
                format!("{u}/subjects/s/versions"),
                json!({"schema": "{\"type\":\"recrod\"}"}),
            )
            .await,
            422,
            42201,
            "Avro",
        ),
        (
            post(
                format!("{u}/subjects/s/versions"),
                json!({"schema": "{not json"}),
            )
            .await,
            422,
            42201,
            "JSON",
        ),
        (
            post(
                format!("{u}/subjects/s/versions"),
                json!({"schema": V1, "schemaType": "PROTOBUF"}),
            )
            .await,
            422,
            42201,
            "PROTOBUF",
        ),
        (
            post(format!("{u}/subjects/s/versions"), json!({"shema": V1})).await,
            422,
            422,
            "schema",
        ),
        (
            call(
                reqwest::Method::PUT,
                format!("{u}/config"),
                Some(json!({"compatibility": "SIDEWAYS"})),
            )
            .await,
            422,
            42203,
            "SIDEWAYS",
        ),
        (
            get(format!("{u}/no/such/route")).await,
            404,
            404,
            "Not Found",
        ),
    ];
    for ((status, body), want_status, want_code, names) in cases {
        assert_eq!(status, want_status, "{body}");
        assert_eq!(body["error_code"], json!(want_code), "{body}");
        assert!(
            body["message"].as_str().expect("message").contains(names),
            "{body} should name {names}"
        );
    }
    post(format!("{u}/subjects/s/versions"), json!({"schema": V1})).await;
    let (status, body) = get(format!("{u}/subjects/s/versions/7")).await;
    assert_eq!((status, &body["error_code"]), (404, &json!(40402)));
    let (status, body) = get(format!("{u}/subjects/s/versions/zero")).await;
    assert_eq!((status, &body["error_code"]), (422, &json!(42202)));
}

#[tokio::test]
async fn ids_and_versions_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Registry::start(dir.path());
    post(
        format!("{}/subjects/a/versions", first.url),
        json!({"schema": V1}),
    )
    .await;
    post(
        format!("{}/subjects/a/versions", first.url),
        json!({"schema": V2_COMPATIBLE}),
    )
    .await;
    call(
        reqwest::Method::DELETE,
        format!("{}/subjects/a/versions/2", first.url),
        None,
    )
    .await;
    drop(first);

    let second = Registry::start(dir.path());
    let u = &second.url;
    assert_eq!(get(format!("{u}/subjects/a/versions")).await.1, json!([1]));
    assert_eq!(
        get(format!("{u}/subjects/a/versions?deleted=true")).await.1,
        json!([1, 2])
    );
    // The id of a soft-deleted version still resolves (readers of old records need it).
    assert_eq!(get(format!("{u}/schemas/ids/2")).await.0, 200);
    // A new schema gets a fresh id, never a reused one.
    let (_, new) = post(
        format!("{u}/subjects/b/versions"),
        json!({"schema": "\"string\""}),
    )
    .await;
    assert_eq!(new, json!({"id": 3}));
    // Deleting the subject, then permanently.
    assert_eq!(
        call(
            reqwest::Method::DELETE,
            format!("{u}/subjects/b?permanent=true"),
            None
        )
        .await
        .1["error_code"],
        json!(40405)
    );
    assert_eq!(
        call(reqwest::Method::DELETE, format!("{u}/subjects/b"), None)
            .await
            .1,
        json!([1])
    );
    assert_eq!(
        call(
            reqwest::Method::DELETE,
            format!("{u}/subjects/b?permanent=true"),
            None
        )
        .await
        .1,
        json!([1])
    );
    assert_eq!(
        get(format!("{u}/subjects?deleted=true")).await.1,
        json!(["a"])
    );
}
