//! Payload filters (#26): a subscription's `filter`, a CEL expression over the event,
//! decides which of the events of its types it receives.
//!
//! - The event is bound as `event`: the webhook body's `data` with its `type`
//!   (`event.type`, `event.order.total.amount_minor`, `event.order.status`, ...).
//! - [`Filter::compile`] refuses, naming the line, the column and what is wrong: an
//!   expression that does not parse; one longer than [`MAX_SOURCE_BYTES`], with more than
//!   [`MAX_NODES`] nodes, nested deeper than [`MAX_DEPTH`] or with a macro (`exists`,
//!   `all`, ...) inside another one's body; a function outside [`FUNCTIONS`]; a variable
//!   other than `event` and a macro's own; a field no schema of the subscription's event
//!   types has; an enum field compared with a string that is none of its symbols.
//! - Cost: CEL has no loops besides its macros over a list, so without a macro inside
//!   another (in its body or its list) an evaluation takes at most (nodes) x (the
//!   event's longest list) steps and builds values at most (nodes) times the event's
//!   size: bounded when the filter is accepted, never cut off half way.
//! - [`Filter::matches`] is `Err` when evaluation fails on one event (an optional field
//!   the event does not have, a type mismatch): the router counts it and does not
//!   deliver the event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use order_schemas::{EventType, OrderEvent};

use check::{nesting, Check, Shape, Within};

/// A filter's source, at most.
pub const MAX_SOURCE_BYTES: usize = 1024;
/// Nodes of the parsed expression (its macros expanded), at most.
pub const MAX_NODES: usize = 200;
/// Nesting of the parsed expression, at most.
pub const MAX_DEPTH: usize = 32;

/// The functions a filter may call (besides the operators and the macros `has`, `all`,
/// `exists`, `exists_one`, `map` and `filter`).
pub const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
];

/// The environment every filter runs in: the standard library, built once.
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// Why a filter is refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at line {line}, column {column}: {message}")]
pub struct FilterError {
    /// From 1.
    pub line: usize,
    /// From 1, in characters.
    pub column: usize,
    pub message: String,
}

/// A compiled filter.
pub struct Filter {
    source: String,
    program: cel::Program,
    /// The paths of the event it reads: only they are bound ([`Bound::new`]).
    paths: Paths,
    /// The same filter on the typed event, when it has the common shape (`fast.rs`).
    fast: Option<fast::Fast>,
}

/// Paths of the event a filter reads, as a tree (`whole`: the value at this path as a
/// whole, a list that a macro iterates for instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paths {
    whole: bool,
    fields: BTreeMap<String, Paths>,
}

impl Paths {
    /// Every path: the whole event.
    pub fn all() -> Self {
        Self {
            whole: true,
            fields: BTreeMap::new(),
        }
    }

    fn add(&mut self, segments: &[&str]) {
        match segments.split_first() {
            _ if self.whole => {}
            None => {
                self.whole = true;
                self.fields.clear();
            }
            Some((first, rest)) => self.fields.entry(first.to_string()).or_default().add(rest),
        }
    }

    /// Adds `other`'s paths.
    pub fn merge(&mut self, other: &Paths) {
        if self.whole {
            return;
        }
        if other.whole {
            *self = Self::all();
            return;
        }
        for (name, sub) in &other.fields {
            self.fields.entry(name.clone()).or_default().merge(sub);
        }
    }

    /// Whether every path of `other` is among these.
    pub fn covers(&self, other: &Paths) -> bool {
        self.whole
            || (!other.whole
                && other
                    .fields
                    .iter()
                    .all(|(name, sub)| self.fields.get(name).is_some_and(|s| s.covers(sub))))
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
    }
}

/// One event as filters see it: bound once, in a context every filter it meets runs in
/// (binding converts the whole event; a context per evaluation would pay it each time).
pub struct Bound(cel::Context<'static, 'static>);

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bound")
    }
}

impl Bound {
    /// `event`, with only `paths` of it: what the filters it meets read (converting the
    /// whole event costs several times a filter's evaluation).
    pub fn new(event: &OrderEvent, paths: &Paths) -> Self {
        Self::of(bind::event(event, paths))
    }

    /// A sample event given as JSON (the filter test): the same shape as [`Self::new`].
    pub fn from_json(event: &serde_json::Value) -> Self {
        Self::of(bind::json(event))
    }

    /// What a filter sees of a webhook body (`{"type", "timestamp", "data"}`): its `data`
    /// with its `type`; only `paths` of it.
    pub fn of_body(body: &serde_json::Value, paths: &Paths) -> Self {
        Self::from_json(&event_of_body(body, paths))
    }

    fn of(value: cel::Value) -> Self {
        let mut context = cel::Context::with_env(Arc::clone(&ENV));
        context.add_variable_from_value("event", value);
        Self(context)
    }
}

impl Filter {
    /// Compiles `source` for a subscription to `event_types` (names), or says where and
    /// why it is refused.
    pub fn compile(source: &str, event_types: &BTreeSet<String>) -> Result<Self, FilterError> {
        if source.trim().is_empty() {
            return Err(FilterError {
                line: 1,
                column: 1,
                message: "is empty (leave `filter` out to receive every event)".into(),
            });
        }
        if source.len() > MAX_SOURCE_BYTES {
            return Err(FilterError {
                line: 1,
                column: 1,
                message: format!(
                    "is {} bytes, at most {MAX_SOURCE_BYTES} allowed",
                    source.len()
                ),
            });
        }
        nesting(source)?;
        let program = parse(source).map_err(|errors| {
            let first = errors.errors.first();
            // (The parser counts both from 1.)
            let (line, column) = first.map(|e| e.pos).unwrap_or((1, 1));
            FilterError {
                line: line.max(1) as usize,
                column: column.max(1) as usize,
                message: first
                    .map(|e| e.msg.clone())
                    .unwrap_or_else(|| "does not parse".into()),
            }
        })?;
        let types: Vec<EventType> = event_types
            .iter()
            .filter_map(|t| EventType::from_name(t))
            .collect();
        let mut check = Check {
            program: &program,
            shape: Shape::of_events(&types),
            scope: Vec::new(),
            nodes: 0,
            paths: Paths::default(),
        };
        check.walk(program.expression(), 1, Within::Top)?;
        let paths = check.paths;
        let fast = fast::Fast::compile(program.expression());
        Ok(Self {
            source: source.to_string(),
            program,
            paths,
            fast,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The paths of the event it reads.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Whether `event` passes; `Err` (why) when the expression fails on it or is not a
    /// boolean.
    /// Whether `event` passes without binding it (the common shape, see `fast.rs`);
    /// `None` when this filter needs CEL ([`Self::matches`]).
    pub fn matches_typed(&self, event: &OrderEvent) -> Option<Result<bool, String>> {
        self.fast.as_ref().map(|f| f.eval(event))
    }

    /// Whether it runs on the typed event ([`Self::matches_typed`]).
    pub fn is_typed(&self) -> bool {
        self.fast.is_some()
    }

    pub fn matches(&self, event: &Bound) -> Result<bool, String> {
        match self.program.execute(&event.0) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "the filter gave {:?}, not a boolean",
                other.type_of()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What a filter's `event` is of a webhook body (`{"type", "timestamp", "data"}`): its
/// `data` with its `type`, only the top-level fields of `paths` (each whole).
pub fn event_of_body(body: &serde_json::Value, paths: &Paths) -> serde_json::Value {
    let mut event = serde_json::Map::new();
    if let Some(t) = body.get("type") {
        event.insert("type".into(), t.clone());
    }
    if let Some(data) = body.get("data").and_then(|d| d.as_object()) {
        for (name, value) in data {
            if paths.whole || paths.fields.contains_key(name) {
                event.insert(name.clone(), value.clone());
            }
        }
    }
    serde_json::Value::Object(event)
}

/// Parses on a thread of its own with a large stack: the parser recurses through about
/// ten grammar rules per level of nesting, which (unoptimised, at least) can exhaust a
/// runtime worker's 2 MiB before [`nesting`]'s limit would.
fn parse(source: &str) -> Result<cel::Program, cel::ParseErrors> {
    let owned = source.to_string();
    let parsed = std::thread::Builder::new()
        .name("filter-parse".into())
        .stack_size(32 << 20)
        .spawn(move || ENV.compile(&owned))
        .map(|t| t.join());
    match parsed {
        Ok(Ok(result)) => result,
        // (No thread: parse here; a parser panic: refuse.)
        Err(_) => ENV.compile(source),
        Ok(Err(_)) => Err(cel::ParseErrors {
            errors: vec![cel::ParseError {
                source: None,
                pos: (1, 1),
                msg: "the expression could not be parsed".into(),
                expr_id: 0,
                source_info: None,
            }],
        }),
    }
}

mod bind;
mod check;
mod fast;
#[cfg(test)]
mod tests;
