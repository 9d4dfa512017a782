//! The checks a filter passes when it is compiled ([`super::Filter::compile`]): nesting
//! before parsing, then a walk of the parsed expression against the event's shape (from
//! the Avro schemas): fields, enum symbols, functions, size, depth and the rules on
//! macros that bound its cost.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;
use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use order_schemas::EventType;

use super::{FilterError, Paths, FUNCTIONS, MAX_DEPTH, MAX_NODES};

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

/// Refuses, before parsing, brackets nested deeper than [`MAX_DEPTH`] and runs of
/// unary operators as long (each is a level of the parser's recursion).
pub(super) fn nesting(source: &str) -> Result<(), FilterError> {
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
pub(super) enum Shape {
    Record(BTreeMap<String, Shape>),
    List(Box<Shape>),
    Enum(Vec<String>),
    /// A string, a number, a boolean: nothing to select in it.
    Scalar,
    /// Not known statically (a macro's variable over something else, an index).
    Any,
}

impl Shape {
    pub(super) fn of_events(types: &[EventType]) -> Shape {
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
pub(super) enum Within {
    Top,
    /// The list a macro iterates.
    Range,
    /// A macro's body (run once per element).
    Body,
}

pub(super) struct Check<'a> {
    pub(super) program: &'a cel::Program,
    pub(super) shape: Shape,
    /// Macro variables in scope, innermost last, with what they stand for.
    pub(super) scope: Vec<(String, Shape)>,
    pub(super) nodes: usize,
    /// The paths of `event` read.
    pub(super) paths: Paths,
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

    pub(super) fn walk(
        &mut self,
        node: &IdedExpr,
        depth: usize,
        within: Within,
    ) -> Result<(), FilterError> {
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
