//! The common shape of a filter evaluated on the typed event, without CEL's interpreter:
//! comparisons of a field with a literal of its type (`event.order.total.amount_minor
//! >= 10000`, `event.order.status != "CANCELLED"`), `has()` of an optional field, joined
//! by `&&`, `||` and `!`. About ten times cheaper than an evaluation by the `cel`
//! crate, which matters when an event meets many filters (docs/BENCHMARKS.md "Payload
//! filters"). Anything else is evaluated by CEL; a filter is either entirely one or
//! the other. CEL's semantics are kept, errors included: a field the event does not
//! have is an error, and `&&` / `||` absorb an error when the other side decides
//! (false, true); `tests::the_fast_path_agrees_with_cel` compares both on many events.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use order_schemas::{OrderEvent, OrderStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Type,
    OccurredAt,
    OrderId,
    PartnerId,
    CustomerRef,
    Status,
    TotalAmount,
    TotalCurrency,
    PreviousStatus,
    Reason,
}

impl Field {
    fn of(path: &[&str]) -> Option<Self> {
        Some(match path {
            ["type"] => Self::Type,
            ["occurred_at"] => Self::OccurredAt,
            ["order_id"] => Self::OrderId,
            ["partner_id"] => Self::PartnerId,
            ["order", "customer_ref"] => Self::CustomerRef,
            ["order", "status"] => Self::Status,
            ["order", "total", "amount_minor"] => Self::TotalAmount,
            ["order", "total", "currency"] => Self::TotalCurrency,
            ["previous_status"] => Self::PreviousStatus,
            ["reason"] => Self::Reason,
            _ => return None,
        })
    }

    fn is_int(self) -> bool {
        matches!(self, Self::OccurredAt | Self::TotalAmount)
    }

    fn name(self) -> &'static str {
        match self {
            Self::PreviousStatus => "previous_status",
            Self::Reason => "reason",
            _ => "",
        }
    }

    /// The value of the field in `e`; `None` when `e` has no such field.
    fn get(self, e: &OrderEvent) -> Option<Value<'_>> {
        let o = e.order();
        Some(match self {
            Self::Type => Value::Str(e.event_type().name()),
            Self::OccurredAt => Value::Int(e.occurred_at().0),
            Self::OrderId => Value::Str(e.order_id()),
            Self::PartnerId => Value::Str(e.partner_id()),
            Self::CustomerRef => Value::Str(&o.customer_ref),
            Self::Status => Value::Str(status(o.status)),
            Self::TotalAmount => Value::Int(o.total.amount_minor),
            Self::TotalCurrency => Value::Str(&o.total.currency),
            Self::PreviousStatus => match e {
                OrderEvent::StatusChanged(c) => Value::Str(status(c.previous_status)),
                _ => return None,
            },
            Self::Reason => match e {
                OrderEvent::Cancelled(c) => Value::Str(&c.reason),
                _ => return None,
            },
        })
    }
}

/// A status as the event's JSON (and so CEL) spells it.
fn status(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Pending => "PENDING",
        OrderStatus::Confirmed => "CONFIRMED",
        OrderStatus::Paid => "PAID",
        OrderStatus::Shipped => "SHIPPED",
        OrderStatus::Delivered => "DELIVERED",
        OrderStatus::Cancelled => "CANCELLED",
        OrderStatus::Refunded => "REFUNDED",
    }
}

enum Value<'a> {
    Int(i64),
    Str(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            operators::EQUALS => Self::Eq,
            operators::NOT_EQUALS => Self::Ne,
            operators::LESS => Self::Lt,
            operators::LESS_EQUALS => Self::Le,
            operators::GREATER => Self::Gt,
            operators::GREATER_EQUALS => Self::Ge,
            _ => return None,
        })
    }

    /// The same comparison with its sides swapped (`10 < x` is `x > 10`).
    fn flipped(self) -> Self {
        match self {
            Self::Lt => Self::Gt,
            Self::Le => Self::Ge,
            Self::Gt => Self::Lt,
            Self::Ge => Self::Le,
            same => same,
        }
    }

    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Self::Eq => ordering == Equal,
            Self::Ne => ordering != Equal,
            Self::Lt => ordering == Less,
            Self::Le => ordering != Greater,
            Self::Gt => ordering == Greater,
            Self::Ge => ordering != Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Literal {
    Int(i64),
    Str(String),
}

/// A filter of the common shape, ready to run on the typed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fast {
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    Compare(Field, Op, Literal),
    Has(Field),
    Const(bool),
}

/// The path of `event` that `node` spells (`event.order.status` is `[order, status]`).
fn event_path(node: &IdedExpr) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    let mut at = node;
    loop {
        match &at.expr {
            Expr::Select(s) if !s.test => {
                segments.push(s.field.as_str());
                at = &s.operand;
            }
            Expr::Ident(name) if name == "event" => {
                segments.reverse();
                return Some(segments);
            }
            _ => return None,
        }
    }
}

fn literal(node: &IdedExpr) -> Option<Literal> {
    match &node.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(Literal::Int(**i)),
        Expr::Literal(LiteralValue::String(s)) => Some(Literal::Str(s.inner().to_string())),
        _ => None,
    }
}

impl Fast {
    /// `node` as a fast filter, when it has the common shape (else CEL runs it).
    pub(super) fn compile(node: &IdedExpr) -> Option<Self> {
        match &node.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Self::Const(**b)),
            // `has(event.reason)`: a presence test, of an optional field only.
            Expr::Select(s) if s.test => {
                let mut path = event_path(&s.operand)?;
                path.push(s.field.as_str());
                let field = Field::of(&path)?;
                (!field.name().is_empty()).then_some(Self::Has(field))
            }
            Expr::Call(call) if call.target.is_none() => {
                let name = call.func_name.as_str();
                match (name, call.args.as_slice()) {
                    (operators::LOGICAL_AND, [a, b]) => Some(Self::And(
                        Box::new(Self::compile(a)?),
                        Box::new(Self::compile(b)?),
                    )),
                    (operators::LOGICAL_OR, [a, b]) => Some(Self::Or(
                        Box::new(Self::compile(a)?),
                        Box::new(Self::compile(b)?),
                    )),
                    (operators::LOGICAL_NOT, [a]) => Some(Self::Not(Box::new(Self::compile(a)?))),
                    (_, [a, b]) => {
                        let op = Op::of(name)?;
                        let (field, op, lit) = match (event_path(a), event_path(b)) {
                            (Some(path), None) => (Field::of(&path)?, op, literal(b)?),
                            (None, Some(path)) => (Field::of(&path)?, op.flipped(), literal(a)?),
                            _ => return None,
                        };
                        // Only a literal of the field's own type (CEL's mixed-type
                        // comparisons stay CEL's).
                        match (&lit, field.is_int()) {
                            (Literal::Int(_), true) | (Literal::Str(_), false) => {
                                Some(Self::Compare(field, op, lit))
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether `e` passes; `Err` as CEL's would be (a field `e` does not have).
    pub(super) fn eval(&self, e: &OrderEvent) -> Result<bool, String> {
        match self {
            Self::Const(b) => Ok(*b),
            Self::Has(field) => Ok(field.get(e).is_some()),
            Self::Not(a) => a.eval(e).map(|b| !b),
            // CEL's commutative logic: a side that decides wins over an error; when
            // both fail, the right side's error is the one (as cel 0.15 reports it).
            Self::And(a, b) => match (a.eval(e), b.eval(e)) {
                (Ok(false), _) | (_, Ok(false)) => Ok(false),
                (_, Err(why)) | (Err(why), _) => Err(why),
                (Ok(true), Ok(true)) => Ok(true),
            },
            Self::Or(a, b) => match (a.eval(e), b.eval(e)) {
                (Ok(true), _) | (_, Ok(true)) => Ok(true),
                (_, Err(why)) | (Err(why), _) => Err(why),
                (Ok(false), Ok(false)) => Ok(false),
            },
            Self::Compare(field, op, lit) => {
                let Some(value) = field.get(e) else {
                    return Err(format!("No such key: {}", field.name()));
                };
                Ok(match (value, lit) {
                    (Value::Int(v), Literal::Int(l)) => op.holds(v.cmp(l)),
                    (Value::Str(v), Literal::Str(l)) => op.holds(v.cmp(l.as_str())),
                    // (Not compiled: a literal has its field's type.)
                    _ => false,
                })
            }
        }
    }
}
