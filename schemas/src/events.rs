//! The order event types, one per Avro schema, and the envelope enum.

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An amount in the currency's minor unit (cents for EUR, yen for JPY): integers only,
/// so no amount is ever rounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code, e.g. `EUR`.
    pub currency: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
}

/// The order content a partner needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// The customer's reference at the partner; never personal data.
    pub customer_ref: String,
    pub status: OrderStatus,
    pub items: Vec<LineItem>,
    pub total: Money,
}

/// UTC milliseconds since the epoch. Avro stores it as `timestamp-millis`; JSON input
/// may give either the number or an RFC 3339 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(chrono::Utc::now().timestamp_millis())
    }

    /// RFC 3339 with milliseconds, e.g. `2026-11-22T10:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("milliseconds since the epoch or an RFC 3339 timestamp")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| Timestamp(t.timestamp_millis()))
                    .map_err(|e| E::custom(format!("`{v}` is not an RFC 3339 timestamp: {e}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Avro's `uuid` logical type is a string; apache-avro's serializer is not
/// human-readable, so without this a `Uuid` would be written as 16 bytes.
fn uuid_as_string<S: serde::Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&id.hyphenated())
}

fn new_event_id() -> Uuid {
    Uuid::new_v4()
}

macro_rules! event_struct {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Unique id of the event; the `webhook-id` partners deduplicate on.
            /// Generated when JSON input leaves it out.
            #[serde(default = "new_event_id", serialize_with = "uuid_as_string")]
            pub event_id: Uuid,
            /// When the change happened; now when JSON input leaves it out.
            #[serde(default = "Timestamp::now")]
            pub occurred_at: Timestamp,
            /// The order; also the Kafka key, so one order's events stay in order.
            pub order_id: String,
            /// The partner the order concerns; only that partner receives it.
            pub partner_id: String,
            pub order: Order,
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    };
}

event_struct!(
    /// `order.created`: an order was placed.
    OrderCreated {}
);
event_struct!(
    /// `order.status_changed`: `order.status` is the new status.
    OrderStatusChanged { previous_status: OrderStatus }
);
event_struct!(
    /// `order.cancelled`: `order.status` is `CANCELLED`.
    OrderCancelled {
        /// Why it was cancelled, for the partner's support staff.
        reason: String
    }
);

/// The kinds of order event. The `name` is what partners see as the webhook `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderCreated,
    OrderStatusChanged,
    OrderCancelled,
}

static CREATED: LazyLock<Schema> = LazyLock::new(|| parse(EventType::OrderCreated));
static STATUS_CHANGED: LazyLock<Schema> = LazyLock::new(|| parse(EventType::OrderStatusChanged));
static CANCELLED: LazyLock<Schema> = LazyLock::new(|| parse(EventType::OrderCancelled));

fn parse(t: EventType) -> Schema {
    // The schemas are compiled in and checked by this crate's tests.
    #[allow(clippy::expect_used)]
    Schema::parse_str(t.schema_text()).expect("compiled-in schema parses")
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        Self::OrderCreated,
        Self::OrderStatusChanged,
        Self::OrderCancelled,
    ];

    /// The webhook `type`, e.g. `order.created`.
    pub fn name(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderStatusChanged => "order.status_changed",
            Self::OrderCancelled => "order.cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The Avro record's full name, e.g. `orderhooks.events.OrderCreated`.
    pub fn avro_name(self) -> &'static str {
        match self {
            Self::OrderCreated => "orderhooks.events.OrderCreated",
            Self::OrderStatusChanged => "orderhooks.events.OrderStatusChanged",
            Self::OrderCancelled => "orderhooks.events.OrderCancelled",
        }
    }

    pub fn from_avro_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.avro_name() == name)
    }

    /// The current schema, as written in `schemas/avro/`.
    pub fn schema_text(self) -> &'static str {
        match self {
            Self::OrderCreated => include_str!("../avro/order_created.avsc"),
            Self::OrderStatusChanged => include_str!("../avro/order_status_changed.avsc"),
            Self::OrderCancelled => include_str!("../avro/order_cancelled.avsc"),
        }
    }

    /// The file stem in `schemas/avro/` (and `schemas/avro/released/`).
    pub fn file_stem(self) -> &'static str {
        match self {
            Self::OrderCreated => "order_created",
            Self::OrderStatusChanged => "order_status_changed",
            Self::OrderCancelled => "order_cancelled",
        }
    }

    pub fn schema(self) -> &'static Schema {
        match self {
            Self::OrderCreated => &CREATED,
            Self::OrderStatusChanged => &STATUS_CHANGED,
            Self::OrderCancelled => &CANCELLED,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Any order event. As JSON it is the event's fields plus `"type": "order.created"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    #[serde(rename = "order.created")]
    Created(OrderCreated),
    #[serde(rename = "order.status_changed")]
    StatusChanged(OrderStatusChanged),
    #[serde(rename = "order.cancelled")]
    Cancelled(OrderCancelled),
}

macro_rules! common {
    ($self:ident . $field:ident) => {
        match $self {
            OrderEvent::Created(e) => &e.$field,
            OrderEvent::StatusChanged(e) => &e.$field,
            OrderEvent::Cancelled(e) => &e.$field,
        }
    };
}

impl OrderEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Created(_) => EventType::OrderCreated,
            Self::StatusChanged(_) => EventType::OrderStatusChanged,
            Self::Cancelled(_) => EventType::OrderCancelled,
        }
    }

    pub fn event_id(&self) -> Uuid {
        *common!(self.event_id)
    }

    pub fn occurred_at(&self) -> Timestamp {
        *common!(self.occurred_at)
    }

    /// The Kafka key.
    pub fn order_id(&self) -> &str {
        common!(self.order_id)
    }

    pub fn partner_id(&self) -> &str {
        common!(self.partner_id)
    }

    pub fn order(&self) -> &Order {
        common!(self.order)
    }
}
