//! Harness for the end-to-end tests: the broker and registry started by
//! `scripts/test.sh` (found through `KAFKA_BOOTSTRAP_SERVERS` and `SCHEMA_REGISTRY_URL`),
//! a fresh topic per test, consumers tuned for the test broker, and child processes
//! that are killed by pid when dropped. Split by role: `env`, `kafka`, `process`,
//! `broker`, `dispatch`, `api`, `registry`.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

mod api;
mod bench;
mod broker;
mod dispatch;
mod env;
mod kafka;
mod process;
mod registry;
pub mod tls;

pub use api::*;
pub use bench::*;
pub use broker::*;
pub use dispatch::*;
pub use env::*;
pub use kafka::*;
pub use process::*;
pub use registry::*;
