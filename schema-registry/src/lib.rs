//! A small Schema Registry that speaks the part of the Confluent REST API that this
//! project and common Confluent clients use.
//!
//! Guarantees:
//! - the same schema registered under a subject twice gets the same id and version;
//!   the same schema under another subject gets the same id;
//! - ids and versions survive a restart: every change is written to disk (write to a
//!   temporary file, fsync, rename) before the HTTP answer is sent;
//! - a schema that breaks the subject's compatibility level (BACKWARD by default) is
//!   refused with `409`, and nothing is stored;
//! - every error body has Confluent's shape: `{"error_code": N, "message": "..."}`.
//!
//! Only AVRO schemas without references are accepted; anything else is refused with a
//! `42201` naming what is not supported (see docs/ARCHITECTURE.md).

mod api;
mod compat;
mod error;
mod store;

pub use api::{bind, router, serve};
pub use compat::CompatibilityLevel;
pub use error::RegistryError;
pub use store::Store;
