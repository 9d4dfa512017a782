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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use apache_avro::Schema;
use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use order_schemas::{EventType, OrderEvent};

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

/// The operators (as the parser names them) and what the macros expand to.
const OPERATORS: &[&str] = &[
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::SUBSTRACT,
    operators::ADD,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER_EQUALS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::LESS,
    operators::NEGATE,
    operators::INDEX,
    operators::NOT_STRICTLY_FALSE,
    operators::IN,
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

/// Refuses, before parsing, brackets nested deeper than [`MAX_DEPTH`] and runs of
/// unary operators as long (each is a level of the parser's recursion).
fn nesting(source: &str) -> Result<(), FilterError> {
    let (mut depth, mut unary, mut quote) = (0usize, 0usize, None::<char>);
    let (mut line, mut column, mut escaped) = (1, 0, false);
    let mut chars = source.chars().peekable();
    let mut comment = false;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            column = 0;
            comment = false;
        }
        column += 1;
        // (A `//` comment runs to the end of the line. Raw and triple-quoted strings are
        // counted loosely: the parse itself has its own depth limit, on a large stack.)
        if comment {
            continue;
        }
        if quote.is_none() && c == '/' && chars.peek() == Some(&'/') {
            comment = true;
            continue;
        }
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '-' | '!' => unary += 1,
            _ if c.is_whitespace() => continue,
            _ => {}
        }
        if !matches!(c, '-' | '!') {
            unary = 0;
        }
        if depth + unary > MAX_DEPTH {
            return Err(FilterError {
                line,
                column,
                message: format!("nested more than {MAX_DEPTH} deep"),
            });
        }
    }
    Ok(())
}

/// What a path of the event is, from the Avro schemas: the fields of every event type
/// the subscription receives, together.
#[derive(Debug, Clone)]
enum Shape {
    Record(BTreeMap<String, Shape>),
    List(Box<Shape>),
    Enum(Vec<String>),
    /// A string, a number, a boolean: nothing to select in it.
    Scalar,
    /// Not known statically (a macro's variable over something else, an index).
    Any,
}

impl Shape {
    fn of_events(types: &[EventType]) -> Shape {
        let mut fields = BTreeMap::from([("type".to_string(), Shape::Scalar)]);
        for t in types {
            let mut named = HashMap::new();
            if let Shape::Record(more) = Shape::of(t.schema(), &mut named) {
                for (name, shape) in more {
                    fields.entry(name).or_insert(shape);
                }
            }
        }
        Shape::Record(fields)
    }

    fn of(schema: &Schema, named: &mut HashMap<String, Shape>) -> Shape {
        match schema {
            Schema::Record(r) => {
                let shape = Shape::Record(
                    r.fields
                        .iter()
                        .map(|f| (f.name.clone(), Shape::of(&f.schema, named)))
                        .collect(),
                );
                named.insert(r.name.name.clone(), shape.clone());
                shape
            }
            Schema::Enum(e) => {
                let shape = Shape::Enum(e.symbols.clone());
                named.insert(e.name.name.clone(), shape.clone());
                shape
            }
            Schema::Array(a) => Shape::List(Box::new(Shape::of(&a.items, named))),
            Schema::Union(u) => u
                .variants()
                .iter()
                .find(|v| !matches!(v, Schema::Null))
                .map(|v| Shape::of(v, named))
                .unwrap_or(Shape::Scalar),
            Schema::Ref { name } => named.get(&name.name).cloned().unwrap_or(Shape::Any),
            _ => Shape::Scalar,
        }
    }
}

/// Where a node is, for the rules on macros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Within {
    Top,
    /// The list a macro iterates.
    Range,
    /// A macro's body (run once per element).
    Body,
}

struct Check<'a> {
    program: &'a cel::Program,
    shape: Shape,
    /// Macro variables in scope, innermost last, with what they stand for.
    scope: Vec<(String, Shape)>,
    nodes: usize,
    /// The paths of `event` read.
    paths: Paths,
}

impl Check<'_> {
    fn error(&self, node: &IdedExpr, message: String) -> FilterError {
        let info = self.program.source_info();
        let start = info
            .offset_for(node.id)
            .map(|(s, _)| s as usize)
            .unwrap_or(0);
        let (mut line, mut column) = (1, 1);
        for c in info.source.chars().take(start) {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        FilterError {
            line,
            column,
            message,
        }
    }

    /// Notes the path of `event` that `node` spells (`event.order.total`), if it does.
    fn note_path(&mut self, node: &IdedExpr) -> bool {
        let mut segments = Vec::new();
        let mut at = node;
        loop {
            match &at.expr {
                Expr::Select(select) => {
                    segments.push(select.field.as_str());
                    at = &select.operand;
                }
                Expr::Ident(name)
                    if name == "event" && !self.scope.iter().any(|(v, _)| v == name) =>
                {
                    segments.reverse();
                    self.paths.add(&segments);
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Inside a macro's body, a list of the event (or the whole event) would be read,
    /// compared or copied once per element: a cost that grows with the square of the
    /// event (`items.all(i, i in event.order.items)`). Refused; a macro's own element
    /// is what its body reads.
    fn no_list_in_body(&self, node: &IdedExpr, in_macro_body: bool) -> Result<(), FilterError> {
        if !in_macro_body || !self.rooted_at_event(node) {
            return Ok(());
        }
        match self.path(node)? {
            Some(Shape::Record(_) | Shape::Enum(_) | Shape::Scalar) if !matches!(node.expr, Expr::Ident(_)) => {
                Ok(())
            }
            _ => Err(self.error(
                node,
                "a list of the event (or the whole event) inside a macro's body is not allowed (its cost would grow with the square of the event): read the macro's element instead".into(),
            )),
        }
    }

    /// Whether `node` is `event` or a field path of it (not a macro's variable).
    fn rooted_at_event(&self, node: &IdedExpr) -> bool {
        let mut at = node;
        loop {
            match &at.expr {
                Expr::Select(select) => at = &select.operand,
                Expr::Ident(name) => {
                    return name == "event" && !self.scope.iter().any(|(v, _)| v == name)
                }
                _ => return false,
            }
        }
    }

    /// What `node` is when it spells a path of the event or of a macro's variable
    /// (`event.order.total`, `item.sku`), checking every field on the way; `None` when
    /// it is something else.
    fn path(&self, node: &IdedExpr) -> Result<Option<Shape>, FilterError> {
        match &node.expr {
            Expr::Ident(name) => Ok(self
                .scope
                .iter()
                .rev()
                .find(|(v, _)| v == name)
                .map(|(_, s)| s.clone())
                .or_else(|| (name == "event").then(|| self.shape.clone()))),
            Expr::Select(select) => {
                let Some(operand) = self.path(&select.operand)? else {
                    return Ok(None);
                };
                match operand {
                    Shape::Record(fields) => match fields.get(&select.field) {
                        Some(shape) => Ok(Some(shape.clone())),
                        None => Err(self.error(
                            node,
                            format!(
                                "no field `{}` here: the event types of this subscription have {}",
                                select.field,
                                fields
                                    .keys()
                                    .map(|k| format!("`{k}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )),
                    },
                    Shape::Any => Ok(Some(Shape::Any)),
                    Shape::List(_) => Err(self.error(
                        node,
                        format!(
                            "`{}` of a list: use `exists`, `all` or an index ([0])",
                            select.field
                        ),
                    )),
                    Shape::Enum(_) | Shape::Scalar => Err(self.error(
                        node,
                        format!("no field `{}` in a string or number", select.field),
                    )),
                }
            }
            Expr::Call(call) if call.func_name == operators::INDEX && call.target.is_none() => {
                match call
                    .args
                    .first()
                    .map(|a| self.path(a))
                    .transpose()?
                    .flatten()
                {
                    Some(Shape::List(item)) => Ok(Some(*item)),
                    Some(_) => Ok(Some(Shape::Any)),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    fn walk(&mut self, node: &IdedExpr, depth: usize, within: Within) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.error(
                node,
                format!("too long: more than {MAX_NODES} terms (with macros expanded)"),
            ));
        }
        if depth > MAX_DEPTH {
            return Err(self.error(node, format!("nested more than {MAX_DEPTH} deep")));
        }
        match &node.expr {
            Expr::Ident(name) => {
                let _ = self.note_path(node);
                self.no_list_in_body(node, within == Within::Body)?;
                if self.path(node)?.is_none() {
                    return Err(
                        self.error(node, format!("unknown name `{name}`: the event is `event`"))
                    );
                }
            }
            Expr::Select(select) => {
                // Checks the fields of a path; below a path not of `event` itself (a
                // macro's variable, an index) the walk goes on.
                self.path(node)?;
                self.no_list_in_body(node, within == Within::Body)?;
                if !self.note_path(node) {
                    self.walk(&select.operand, depth + 1, within)?;
                }
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                if !OPERATORS.contains(&name) && !FUNCTIONS.contains(&name) {
                    return Err(self.error(
                        node,
                        format!(
                            "function `{name}` is not available; filters may use the operators, has(), all(), exists(), exists_one(), map(), filter() and {}",
                            FUNCTIONS.join(", ")
                        ),
                    ));
                }
                if matches!(name, operators::EQUALS | operators::NOT_EQUALS) {
                    self.check_symbol(&call.args)?;
                }
                if let Some(target) = &call.target {
                    self.walk(target, depth + 1, within)?;
                }
                for a in &call.args {
                    self.walk(a, depth + 1, within)?;
                }
            }
            Expr::Comprehension(c) => {
                if within != Within::Top {
                    return Err(self.error(
                        node,
                        "a macro (all, exists, map, filter) inside another one (its body or its list) is not allowed (its cost could grow with a power of the event's size)".into(),
                    ));
                }
                // (Chained macros, `l.map(..).map(..)`, multiply what each builds.)
                self.walk(&c.iter_range, depth + 1, Within::Range)?;
                let item = match self.path(&c.iter_range)? {
                    Some(Shape::List(item)) => *item,
                    _ => Shape::Any,
                };
                self.walk(&c.accu_init, depth + 1, Within::Top)?;
                self.scope.push((c.accu_var.clone(), Shape::Any));
                self.scope.push((c.iter_var.clone(), item));
                if let Some(v) = &c.iter_var2 {
                    self.scope.push((v.clone(), Shape::Any));
                }
                for part in [&c.loop_cond, &c.loop_step] {
                    self.walk(part, depth + 1, Within::Body)?;
                }
                self.scope
                    .truncate(self.scope.len() - 1 - usize::from(c.iter_var2.is_some()));
                self.walk(&c.result, depth + 1, Within::Top)?;
                self.scope.pop();
            }
            Expr::List(list) => {
                for e in &list.elements {
                    self.walk(e, depth + 1, within)?;
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                        self.walk(&e.key, depth + 1, within)?;
                        self.walk(&e.value, depth + 1, within)?;
                    }
                }
            }
            Expr::Struct(_) => {
                return Err(self.error(node, "message literals are not available".into()))
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
        Ok(())
    }

    /// `event.order.status == "CANCELED"`: a string compared with an enum field must be
    /// one of its symbols (else the filter would silently never match).
    fn check_symbol(&self, args: &[IdedExpr]) -> Result<(), FilterError> {
        let [a, b] = args else { return Ok(()) };
        for (field, other) in [(a, b), (b, a)] {
            if let (Some(Shape::Enum(symbols)), Expr::Literal(LiteralValue::String(s))) =
                (self.path(field)?, &other.expr)
            {
                let s: &str = s.inner();
                if !symbols.iter().any(|x| x == s) {
                    return Err(self.error(
                        other,
                        format!(
                            "`{s}` is not a value of this field: expected one of {}",
                            symbols.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

mod bind;
mod fast;
#[cfg(test)]
mod tests;
