//! Realistic sample events for the CLI load generator, the quickstart, benchmarks and
//! tests. Their size grows with the number of items (about 1 KB of Avro at 8 items).

use uuid::Uuid;

use crate::{
    EventType, LineItem, Money, Order, OrderCancelled, OrderCreated, OrderEvent, OrderStatus,
    OrderStatusChanged, Timestamp,
};

const PRODUCTS: [&str; 6] = [
    "Espresso beans, single origin, 1 kg bag",
    "Ceramic pour-over dripper with paper filters",
    "Stainless steel milk jug, 600 ml",
    "Burr grinder replacement blade set",
    "Insulated travel mug with leak-proof lid",
    "Descaling tablets, pack of 12",
];

impl OrderEvent {
    /// A sample event of type `t` for `order_id` and `partner_id`, with `items` line items.
    pub fn sample(t: EventType, order_id: &str, partner_id: &str, items: usize) -> Self {
        let lines: Vec<LineItem> = (0..items.max(1))
            .map(|i| LineItem {
                sku: format!("SKU-{:05}", 1000 + i * 7),
                name: PRODUCTS[i % PRODUCTS.len()].to_string(),
                quantity: (i % 3 + 1) as i32,
                unit_price: Money {
                    amount_minor: 499 + 250 * i as i64,
                    currency: "EUR".into(),
                },
            })
            .collect();
        let total = lines
            .iter()
            .map(|l| l.unit_price.amount_minor * i64::from(l.quantity))
            .sum();
        let status = match t {
            EventType::OrderCreated => OrderStatus::Pending,
            EventType::OrderStatusChanged => OrderStatus::Shipped,
            EventType::OrderCancelled => OrderStatus::Cancelled,
        };
        let order = Order {
            customer_ref: format!("CUST-{}", order_id.len() * 31 + items),
            status,
            items: lines,
            total: Money {
                amount_minor: total,
                currency: "EUR".into(),
            },
        };
        let (event_id, occurred_at) = (Uuid::new_v4(), Timestamp::now());
        let (order_id, partner_id) = (order_id.to_string(), partner_id.to_string());
        match t {
            EventType::OrderCreated => OrderEvent::Created(OrderCreated {
                event_id,
                occurred_at,
                order_id,
                partner_id,
                order,
            }),
            EventType::OrderStatusChanged => OrderEvent::StatusChanged(OrderStatusChanged {
                event_id,
                occurred_at,
                order_id,
                partner_id,
                order,
                previous_status: OrderStatus::Paid,
            }),
            EventType::OrderCancelled => OrderEvent::Cancelled(OrderCancelled {
                event_id,
                occurred_at,
                order_id,
                partner_id,
                order,
                reason: "customer changed their mind".into(),
            }),
        }
    }
}
