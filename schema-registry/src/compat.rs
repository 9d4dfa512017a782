//! Compatibility levels and the check a new schema must pass against the subject's
//! earlier versions, with the same meaning as in Confluent Schema Registry:
//! BACKWARD = the new schema can read data written with the previous one, FORWARD = the
//! previous schema can read data written with the new one, FULL = both; the
//! `_TRANSITIVE` forms check against every earlier version instead of only the latest.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// A subject's (or the registry's) compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl CompatibilityLevel {
    /// Parses a level the way Confluent does: case-insensitive.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase()))
            .map_err(|_| RegistryError::InvalidCompatibilityLevel(text.to_string()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Checks `candidate` against `earlier` (oldest first). Returns one message per
    /// violation; an empty list means compatible.
    pub fn violations(self, candidate: &Schema, earlier: &[(u32, Schema)]) -> Vec<String> {
        let (backward, forward, transitive) = match self {
            Self::None => return Vec::new(),
            Self::Backward => (true, false, false),
            Self::BackwardTransitive => (true, false, true),
            Self::Forward => (false, true, false),
            Self::ForwardTransitive => (false, true, true),
            Self::Full => (true, true, false),
            Self::FullTransitive => (true, true, true),
        };
        let against: &[(u32, Schema)] = match (transitive, earlier.len()) {
            (_, 0) => return Vec::new(),
            (true, _) => earlier,
            (false, n) => &earlier[n - 1..],
        };
        let mut out = Vec::new();
        for (version, old) in against {
            if backward {
                if let Err(e) = SchemaCompatibility::can_read(old, candidate) {
                    out.push(format!(
                        "{{oldSchemaVersion: {version}, type: READER_INCOMPATIBLE, description: the new schema cannot read data written with version {version}: {e}}}"
                    ));
                }
            }
            if forward {
                if let Err(e) = SchemaCompatibility::can_read(candidate, old) {
                    out.push(format!(
                        "{{oldSchemaVersion: {version}, type: WRITER_INCOMPATIBLE, description: version {version} cannot read data written with the new schema: {e}}}"
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .expect("test schema parses")
    }

    #[test]
    fn backward_refuses_a_new_field_without_default_and_accepts_one_with_default() {
        let v1 = vec![(1, schema(r#"{"name":"a","type":"string"}"#))];
        let no_default = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        let with_default =
            schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let errors = CompatibilityLevel::Backward.violations(&no_default, &v1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("READER_INCOMPATIBLE"), "{errors:?}");
        assert!(CompatibilityLevel::Backward
            .violations(&with_default, &v1)
            .is_empty());
        assert!(CompatibilityLevel::None
            .violations(&no_default, &v1)
            .is_empty());
    }

    #[test]
    fn forward_refuses_removing_a_field_without_default() {
        let v1 = vec![(
            1,
            schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#),
        )];
        let removed = schema(r#"{"name":"a","type":"string"}"#);
        assert!(CompatibilityLevel::Backward
            .violations(&removed, &v1)
            .is_empty());
        assert_eq!(
            CompatibilityLevel::Forward.violations(&removed, &v1).len(),
            1
        );
        assert_eq!(CompatibilityLevel::Full.violations(&removed, &v1).len(), 1);
    }

    #[test]
    fn transitive_checks_every_earlier_version_plain_checks_the_latest() {
        let earlier = vec![
            (1, schema(r#"{"name":"a","type":"string"}"#)),
            (
                2,
                schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#),
            ),
        ];
        // Reading v1 data is fine, reading v2 data is fine too; but a schema that
        // requires `b` without default cannot read v1 data.
        let needs_b = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(CompatibilityLevel::Backward
            .violations(&needs_b, &earlier)
            .is_empty());
        let transitive = CompatibilityLevel::BackwardTransitive.violations(&needs_b, &earlier);
        assert_eq!(transitive.len(), 1, "{transitive:?}");
        assert!(transitive[0].contains("oldSchemaVersion: 1"));
    }

    #[test]
    fn levels_parse_case_insensitively_and_name_a_bad_value() {
        assert_eq!(
            CompatibilityLevel::parse("full_transitive").ok(),
            Some(CompatibilityLevel::FullTransitive)
        );
        let err = CompatibilityLevel::parse("sideways").expect_err("not a level");
        assert!(err.to_string().contains("'sideways'"), "{err}");
    }
}
