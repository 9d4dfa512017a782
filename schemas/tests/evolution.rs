//! Schema evolution guard: every released version of an event schema
//! (`schemas/avro/released/<event>/vN.avsc`) must be readable by the current schema
//! (`schemas/avro/<event>.avsc`). Releasing a new version = copying the current file
//! into `released/` as the next vN once it has shipped.

use std::fs;
use std::path::PathBuf;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::{from_avro_datum, to_avro_datum, Schema};
use order_schemas::{EventType, OrderEvent};

fn released(t: EventType) -> Vec<(PathBuf, Schema)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("avro/released")
        .join(t.file_stem());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let schema = Schema::parse_str(&fs::read_to_string(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, schema)
        })
        .collect()
}

/// The guard itself: the reasons `current` cannot read data written with `old`.
fn cannot_read(old: &Schema, current: &Schema) -> Option<String> {
    SchemaCompatibility::can_read(old, current)
        .err()
        .map(|e| e.to_string())
}

#[test]
fn every_event_type_has_a_released_version() {
    for t in EventType::ALL {
        assert!(
            !released(t).is_empty(),
            "{t}: nothing in schemas/avro/released/{}",
            t.file_stem()
        );
    }
}

#[test]
fn current_schemas_read_every_released_version() {
    for t in EventType::ALL {
        for (path, old) in released(t) {
            if let Some(why) = cannot_read(&old, t.schema()) {
                panic!(
                    "schemas/avro/{}.avsc cannot read data written with {}: {why}",
                    t.file_stem(),
                    path.display()
                );
            }
        }
    }
}

#[test]
fn data_written_with_a_released_version_decodes_with_the_current_schema() {
    for t in EventType::ALL {
        let event = OrderEvent::sample(t, "o-1", "partner-a", 3);
        for (path, old) in released(t) {
            let value = apache_avro::to_value(
                match &event {
                    OrderEvent::Created(e) => serde_json::to_value(e),
                    OrderEvent::StatusChanged(e) => serde_json::to_value(e),
                    OrderEvent::Cancelled(e) => serde_json::to_value(e),
                }
                .expect("json"),
            )
            .expect("avro value");
            let bytes = to_avro_datum(&old, value.resolve(&old).expect("fits released schema"))
                .expect("write");
            let read = from_avro_datum(&old, &mut &bytes[..], Some(t.schema()));
            assert!(read.is_ok(), "{}: {:?}", path.display(), read.err());
        }
    }
}

#[test]
fn the_guard_catches_a_breaking_change() {
    // Adding a required field without a default is the classic breaking change.
    let t = EventType::OrderCreated;
    let mut json: serde_json::Value = serde_json::from_str(t.schema_text()).expect("json");
    json["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "channel", "type": "string"}));
    let breaking = Schema::parse(&json).expect("still a valid schema");
    let (_, v1) = released(t).remove(0);
    let why = cannot_read(&v1, &breaking)
        .expect("the guard must refuse a required field without default");
    assert!(why.contains("channel"), "{why}");

    // The same field with a default is fine.
    json["fields"]
        .as_array_mut()
        .expect("fields")
        .last_mut()
        .expect("field")["default"] = "web".into();
    assert_eq!(
        cannot_read(&v1, &Schema::parse(&json).expect("valid")),
        None
    );
}
