//! The registry's state and its durability.
//!
//! Every change is applied to a copy of the state, written to `state.json.tmp`, fsynced
//! and renamed over `state.json` before it becomes visible, so a crash leaves either the
//! old or the new state on disk, never a torn one, and an id once answered is never
//! handed out again.
//!
//! (Over 400 lines on purpose: the state, its invariants and the atomic file write that
//! keeps them across a crash read best together; the tests are in `store/tests.rs`.)

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::{CompatibilityLevel, RegistryError};

const STATE_FILE: &str = "state.json";

/// One version of a subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VersionEntry {
    pub version: u32,
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SubjectEntry {
    pub versions: Vec<VersionEntry>,
    pub compatibility: Option<CompatibilityLevel>,
}

impl SubjectEntry {
    pub fn live(&self) -> impl Iterator<Item = &VersionEntry> {
        self.versions.iter().filter(|v| !v.deleted)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// Schemas by id, in the normalized text that is served back.
    schemas: BTreeMap<u32, String>,
    subjects: BTreeMap<String, SubjectEntry>,
    compatibility: CompatibilityLevel,
}

/// What a registration produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: u32,
    pub version: u32,
}

/// A subject version as served by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// The registry state, shared by the HTTP handlers.
#[derive(Debug)]
pub struct Store {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

/// A version selector as written in URLs: a number, `latest` or `-1`.
fn parse_version(text: &str) -> Result<Option<u32>, RegistryError> {
    match text {
        "latest" | "-1" => Ok(None),
        n => match n.parse::<u32>() {
            Ok(v) if v >= 1 && v <= i32::MAX as u32 => Ok(Some(v)),
            _ => Err(RegistryError::InvalidVersion(text.to_string())),
        },
    }
}

/// Parses an Avro schema and returns it with its normalized text (compact JSON, keys
/// sorted), which is what "the same schema" means for ids.
pub(crate) fn parse_schema(text: &str) -> Result<(Schema, String), RegistryError> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| RegistryError::InvalidSchema(format!("not valid JSON: {e}")))?;
    let normalized = json.to_string();
    let schema = Schema::parse_str(&normalized)
        .map_err(|e| RegistryError::InvalidSchema(format!("not a valid Avro schema: {e}")))?;
    Ok((schema, normalized))
}

impl Store {
    /// A store that lives only in memory (for unit tests).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        fs::create_dir_all(dir).map_err(|e| {
            RegistryError::Store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                RegistryError::Store(format!(
                    "{} is not a registry state file: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(RegistryError::Store(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Self {
            path: Some(path),
            state: Mutex::new(state),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Applies `f` to a copy of the state, persists the copy, then publishes it.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = guard.clone();
        let out = f(&mut next)?;
        if let Some(path) = &self.path {
            persist(path, &next)?;
        }
        *guard = next;
        Ok(out)
    }

    /// Registers `schema_text` under `subject`, or returns the existing registration.
    pub fn register(&self, subject: &str, schema_text: &str) -> Result<Registered, RegistryError> {
        let (schema, normalized) = parse_schema(schema_text)?;
        self.write(|state| {
            if let Some(entry) = state.subjects.get(subject) {
                if let Some(found) = entry
                    .live()
                    .find(|v| state.schemas.get(&v.id) == Some(&normalized))
                {
                    return Ok(Registered {
                        id: found.id,
                        version: found.version,
                    });
                }
                let level = entry.compatibility.unwrap_or(state.compatibility);
                let earlier = parsed_versions(state, entry)?;
                let details = level.violations(&schema, &earlier);
                if !details.is_empty() {
                    return Err(RegistryError::Incompatible {
                        subject: subject.to_string(),
                        details,
                    });
                }
            }
            let id = match state.schemas.iter().find(|(_, s)| **s == normalized) {
                Some((id, _)) => *id,
                None => {
                    let id = state.schemas.keys().next_back().map_or(1, |max| max + 1);
                    state.schemas.insert(id, normalized.clone());
                    id
                }
            };
            let entry = state.subjects.entry(subject.to_string()).or_default();
            let version = entry.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            entry.versions.push(VersionEntry {
                version,
                id,
                deleted: false,
            });
            Ok(Registered { id, version })
        })
    }

    /// Finds the live version of `subject` that holds `schema_text`.
    pub fn lookup(
        &self,
        subject: &str,
        schema_text: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let (_, normalized) = parse_schema(schema_text)?;
        self.read(|state| {
            let entry = live_subject(state, subject)?;
            entry
                .live()
                .find(|v| state.schemas.get(&v.id) == Some(&normalized))
                .map(|v| SubjectVersion {
                    subject: subject.to_string(),
                    version: v.version,
                    id: v.id,
                    schema: normalized.clone(),
                })
                .ok_or_else(|| {
                    RegistryError::SchemaNotFound(format!("not found under subject '{subject}'"))
                })
        })
    }

    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        self.read(|state| state.schemas.get(&id).cloned())
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    /// The (subject, version) pairs that use schema `id`, deleted ones included.
    pub fn usages_of_id(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        self.read(|state| {
            if !state.schemas.contains_key(&id) {
                return Err(RegistryError::SchemaNotFound(id.to_string()));
            }
            Ok(state
                .subjects
                .iter()
                .flat_map(|(s, e)| {
                    e.versions
                        .iter()
                        .filter(|v| v.id == id)
                        .map(move |v| (s.clone(), v.version))
                })
                .collect())
        })
    }

    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.read(|state| {
            state
                .subjects
                .iter()
                .filter(|(_, e)| include_deleted || e.live().next().is_some())
                .map(|(s, _)| s.clone())
                .collect()
        })
    }

    pub fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.read(|state| {
            let entry = state
                .subjects
                .get(subject)
                .filter(|e| include_deleted || e.live().next().is_some())
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
            Ok(entry
                .versions
                .iter()
                .filter(|v| include_deleted || !v.deleted)
                .map(|v| v.version)
                .collect())
        })
    }

    /// A version of a subject; `selector` is a number, `latest` or `-1`.
    pub fn version(&self, subject: &str, selector: &str) -> Result<SubjectVersion, RegistryError> {
        let wanted = parse_version(selector)?;
        self.read(|state| {
            let entry = live_subject(state, subject)?;
            let found = match wanted {
                None => entry.live().last(),
                Some(n) => entry.live().find(|v| v.version == n),
            };
            let v = found.ok_or_else(|| RegistryError::VersionNotFound {
                subject: subject.to_string(),
                version: selector.to_string(),
            })?;
            Ok(SubjectVersion {
                subject: subject.to_string(),
                version: v.version,
                id: v.id,
                schema: state.schemas.get(&v.id).cloned().unwrap_or_default(),
            })
        })
    }

    /// Soft-deletes (or, once soft-deleted, permanently deletes) a subject.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.write(|state| {
            let entry = state
                .subjects
                .get_mut(subject)
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
            if permanent {
                if entry.live().next().is_some() {
                    return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
                }
                let versions = entry.versions.iter().map(|v| v.version).collect();
                state.subjects.remove(subject);
                return Ok(versions);
            }
            let versions: Vec<u32> = entry.live().map(|v| v.version).collect();
            if versions.is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_string()));
            }
            entry.versions.iter_mut().for_each(|v| v.deleted = true);
            Ok(versions)
        })
    }

    /// Soft-deletes one version of a subject.
    pub fn delete_version(&self, subject: &str, selector: &str) -> Result<u32, RegistryError> {
        let version = self.version(subject, selector)?.version;
        self.write(|state| {
            if let Some(v) = state
                .subjects
                .get_mut(subject)
                .and_then(|e| e.versions.iter_mut().find(|v| v.version == version))
            {
                v.deleted = true;
            }
            Ok(version)
        })
    }

    /// Compatibility violations of `schema_text` against one version (`Some`) or against
    /// the versions the subject's level names (`None`).
    pub fn check(
        &self,
        subject: &str,
        selector: Option<&str>,
        schema_text: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let (schema, _) = parse_schema(schema_text)?;
        let (level, earlier) = match selector {
            Some(sel) => {
                let v = self.version(subject, sel)?;
                let level = self.compatibility(Some(subject), true)?;
                (level, vec![(v.version, parse_schema(&v.schema)?.0)])
            }
            None => self.read(|state| match state.subjects.get(subject) {
                None => Ok((state.compatibility, Vec::new())),
                Some(e) => Ok((
                    e.compatibility.unwrap_or(state.compatibility),
                    parsed_versions(state, e)?,
                )),
            })?,
        };
        Ok(level.violations(&schema, &earlier))
    }

    /// The global level (`None`) or a subject's; `fallback` answers the global level for a
    /// subject without one of its own.
    pub fn compatibility(
        &self,
        subject: Option<&str>,
        fallback: bool,
    ) -> Result<CompatibilityLevel, RegistryError> {
        self.read(|state| match subject {
            None => Ok(state.compatibility),
            Some(s) => match state.subjects.get(s).and_then(|e| e.compatibility) {
                Some(level) => Ok(level),
                None if fallback => Ok(state.compatibility),
                None => Err(RegistryError::SubjectConfigNotFound(s.to_string())),
            },
        })
    }

    pub fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Option<CompatibilityLevel>,
    ) -> Result<(), RegistryError> {
        self.write(|state| {
            match subject {
                None => state.compatibility = level.unwrap_or_default(),
                Some(s) => {
                    state
                        .subjects
                        .entry(s.to_string())
                        .or_default()
                        .compatibility = level
                }
            }
            Ok(())
        })
    }
}

fn live_subject<'a>(state: &'a State, subject: &str) -> Result<&'a SubjectEntry, RegistryError> {
    state
        .subjects
        .get(subject)
        .filter(|e| e.live().next().is_some())
        .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))
}

fn parsed_versions(
    state: &State,
    entry: &SubjectEntry,
) -> Result<Vec<(u32, Schema)>, RegistryError> {
    entry
        .live()
        .map(|v| {
            let text = state
                .schemas
                .get(&v.id)
                .map(String::as_str)
                .unwrap_or("null");
            Ok((v.version, parse_schema(text)?.0))
        })
        .collect()
}

fn persist(path: &Path, state: &State) -> Result<(), RegistryError> {
    let store_err = |what: &str, e: std::io::Error| {
        RegistryError::Store(format!("{what} {}: {e}", path.display()))
    };
    let tmp = path.with_extension("json.tmp");
    let bytes =
        serde_json::to_vec_pretty(state).map_err(|e| RegistryError::Store(e.to_string()))?;
    let mut file = fs::File::create(&tmp).map_err(|e| store_err("cannot create", e))?;
    file.write_all(&bytes)
        .map_err(|e| store_err("cannot write", e))?;
    file.sync_all().map_err(|e| store_err("cannot sync", e))?;
    fs::rename(&tmp, path).map_err(|e| store_err("cannot replace", e))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| store_err("cannot sync directory of", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
