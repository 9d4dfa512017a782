use super::*;

fn types(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn all_types() -> BTreeSet<String> {
    types(&["order.created", "order.status_changed", "order.cancelled"])
}

fn event(kind: &str, amount: i64, status: &str) -> OrderEvent {
    let mut json = serde_json::json!({
        "type": kind,
        "order_id": "o-1",
        "partner_id": "p",
        "order": {
            "customer_ref": "c-1", "status": status,
            "items": [{"sku": "A-1", "name": "Mug", "quantity": 2,
                       "unit_price": {"amount_minor": amount / 2, "currency": "EUR"}}],
            "total": {"amount_minor": amount, "currency": "EUR"}
        }
    });
    match kind {
        "order.cancelled" => json["reason"] = "out of stock".into(),
        "order.status_changed" => json["previous_status"] = "PENDING".into(),
        _ => {}
    }
    OrderEvent::from_json(json.to_string().as_bytes()).expect("event")
}

fn check(source: &str, e: &OrderEvent) -> Result<bool, String> {
    let f = Filter::compile(source, &all_types()).expect("compiles");
    let partly = f.matches(&Bound::new(e, f.paths()));
    let whole = f.matches(&Bound::new(e, &Paths::all()));
    assert_eq!(partly, whole, "{source}: bound partly and whole");
    partly
}

/// Every leaf path of `shape` (lists and enums are leaves).
fn leaves(shape: &Shape, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    match shape {
        Shape::Record(fields) => {
            for (name, sub) in fields {
                let mut path = at.clone();
                path.push(name.clone());
                leaves(sub, path, out);
            }
        }
        _ => out.push(at),
    }
}

fn at<'a>(mut v: &'a cel::Value, path: &[String]) -> Option<&'a cel::Value> {
    for name in path {
        let cel::Value::Map(m) = v else { return None };
        v = m
            .map
            .get(&cel::objects::Key::String(Arc::new(name.clone())))?;
    }
    Some(v)
}

#[test]
fn every_field_binds_as_the_whole_event_has_it() {
    let mut paths = Vec::new();
    leaves(&Shape::of_events(&EventType::ALL), Vec::new(), &mut paths);
    assert!(paths.len() >= 12, "{paths:?}");
    for t in EventType::ALL {
        let e = event(t.name(), 12_345, "PAID");
        let whole = bind::event(&e, &Paths::all());
        for path in &paths {
            let mut only = Paths::default();
            only.add(&path.iter().map(String::as_str).collect::<Vec<_>>());
            let partly = bind::event(&e, &only);
            assert_eq!(at(&partly, path), at(&whole, path), "{t}: {path:?}");
            // Bound without the whole event (a field this binder did not know would
            // bind it whole).
            assert!(
                at(&partly, &["order_id".to_string()]).is_none() || path[0] == "order_id",
                "{t}: {path:?} bound the whole event"
            );
        }
    }
}

#[test]
fn a_webhook_body_binds_as_the_event_does() {
    // Arithmetic on amounts: an `int` in both (JSON would give `uint`, and uint / int
    // is an error in CEL).
    let f = Filter::compile(
        "event.order.total.amount_minor / 100 >= 50 && event.order.items[0].quantity * 2 == 4",
        &all_types(),
    )
    .expect("compiles");
    let e = event("order.created", 12_000, "PAID");
    let body: serde_json::Value =
        serde_json::from_slice(&crate::router::webhook_body(&e)).expect("body");
    assert_eq!(f.matches(&Bound::new(&e, f.paths())), Ok(true));
    assert_eq!(f.matches(&Bound::of_body(&body, f.paths())), Ok(true));
    assert_eq!(f.matches(&Bound::of_body(&body, &Paths::all())), Ok(true));
}

/// An event of any type with the fields the fast path reads set as given.
fn varied(kind: &str, amount: i64, status: &str, currency: &str, text: &str) -> OrderEvent {
    let mut e = event(kind, amount, status).to_json();
    e["order"]["total"]["currency"] = currency.into();
    e["order"]["items"][0]["unit_price"]["currency"] = currency.into();
    e["order"]["customer_ref"] = text.into();
    if kind == "order.cancelled" {
        e["reason"] = text.into();
    }
    if kind == "order.status_changed" {
        e["previous_status"] = status.into();
    }
    OrderEvent::from_json(e.to_string().as_bytes()).expect("event")
}

#[test]
fn the_fast_path_agrees_with_cel() {
    let fast = [
        "event.order.total.amount_minor >= 10000 && event.order.status != \"CANCELLED\"",
        "10000 <= event.order.total.amount_minor",
        "event.order.total.amount_minor < 0 || event.order.total.amount_minor > 20000",
        "!(event.order.total.amount_minor == 9999)",
        "event.type == \"order.cancelled\" && event.reason != \"test\"",
        "event.reason == \"test\" || event.order.total.amount_minor > 100",
        "event.reason == \"test\" && event.order.total.amount_minor > 100",
        "event.previous_status == \"PAID\" || event.order.total.amount_minor > 10000",
        "has(event.reason) && event.reason >= \"p\"",
        "!has(event.previous_status) || event.previous_status != \"PENDING\"",
        "event.order.total.currency == \"EUR\" && event.order.customer_ref < \"m\"",
        "event.order_id == \"o-1\" && event.partner_id != \"p\" || event.order.customer_ref == \"zebra\"",
        "event.occurred_at > 0 && event.order.total.amount_minor != 0",
        "false || event.order.status > \"DELIVERED\"",
        "!(event.reason == \"x\")",
        // Both sides failing: CEL reports the right side's error.
        "event.reason == \"x\" || event.previous_status == \"PAID\"",
        "event.reason == \"x\" && event.previous_status == \"PAID\"",
    ];
    let cel_only = [
        "event.order.total.amount_minor >= 100.0",
        "event.order.items.exists(i, i.quantity > 1)",
        "event.order.status in [\"PAID\", \"SHIPPED\"]",
        "event.event_id != \"\"",
        "size(event.order.customer_ref) > 3",
        "event.order.total.amount_minor == \"10\"",
    ];
    let mut events = Vec::new();
    for kind in ["order.created", "order.status_changed", "order.cancelled"] {
        for amount in [-5, 0, 9_999, 10_000, 10_001, 50_000] {
            for status in ["PENDING", "PAID", "CANCELLED", "REFUNDED"] {
                for (currency, text) in [("EUR", "test"), ("USD", "zebra"), ("EUR", "apple")] {
                    events.push(varied(kind, amount, status, currency, text));
                }
            }
        }
    }
    for source in fast {
        let f = Filter::compile(source, &all_types()).expect(source);
        assert!(f.is_typed(), "{source} runs on the typed event");
        let mut outcomes = std::collections::BTreeSet::new();
        for e in &events {
            let typed = f.matches_typed(e).expect("typed");
            let cel = f.matches(&Bound::new(e, &Paths::all()));
            assert_eq!(typed, cel, "{source} on {}", e.to_json());
            outcomes.insert(format!("{typed:?}"));
        }
        assert!(
            outcomes.len() >= 2,
            "{source}: the events tell its outcomes apart: {outcomes:?}"
        );
    }
    for source in cel_only {
        let f = Filter::compile(source, &all_types()).expect(source);
        assert!(!f.is_typed(), "{source} is CEL's");
    }
}

#[test]
fn a_filter_reads_only_its_paths() {
    let f = Filter::compile(
        "event.order.total.amount_minor > 1 && event.order.items.exists(i, i.sku == \"a\") && has(event.reason) && event.order.items[0].quantity > 0",
        &all_types(),
    )
    .expect("compiles");
    let mut want = Paths::default();
    want.add(&["order", "total", "amount_minor"]);
    want.add(&["order", "items"]);
    want.add(&["reason"]);
    assert_eq!(f.paths(), &want);
    let f = Filter::compile("size(event) > 1", &all_types()).expect("compiles");
    assert_eq!(f.paths(), &Paths::all());
}

#[test]
fn the_issues_example_matches_what_it_says() {
    let f = "event.order.total.amount_minor >= 10000 && event.order.status != \"CANCELLED\"";
    assert_eq!(
        check(f, &event("order.created", 12_000, "PENDING")),
        Ok(true)
    );
    assert_eq!(
        check(f, &event("order.created", 9_999, "PENDING")),
        Ok(false)
    );
    assert_eq!(
        check(f, &event("order.cancelled", 12_000, "CANCELLED")),
        Ok(false)
    );
}

#[test]
fn the_type_lists_strings_and_membership_work() {
    let e = event("order.created", 500, "PAID");
    for (f, want) in [
        ("event.type == \"order.created\"", true),
        ("event.type in [\"order.cancelled\"]", false),
        (
            "event.order.items.exists(i, i.sku.startsWith(\"A-\"))",
            true,
        ),
        ("event.order.items.all(i, i.quantity > 2)", false),
        ("size(event.order.items) == 1", true),
        ("event.order.customer_ref.contains(\"c-\")", true),
        ("event.order.items[0].unit_price.amount_minor == 250", true),
        ("has(event.reason)", false),
        ("!has(event.reason) || event.reason != \"test\"", true),
        (
            "event.order.items.filter(i, i.quantity > 1).size() == 1",
            true,
        ),
        ("double(event.order.total.amount_minor) / 100.0 > 4.5", true),
        (
            "string(event.order.total.amount_minor).endsWith(\"00\")",
            true,
        ),
    ] {
        assert_eq!(check(f, &e), Ok(want), "{f}");
    }
}

#[test]
fn a_missing_optional_field_is_an_error_not_a_match() {
    // `reason` is only in order.cancelled: an order.created event has none.
    let why = check(
        "event.reason == \"x\"",
        &event("order.created", 1, "PENDING"),
    )
    .expect_err("no such key");
    assert!(why.contains("reason"), "{why}");
    assert_eq!(
        check(
            "event.reason == \"out of stock\"",
            &event("order.cancelled", 1, "CANCELLED")
        ),
        Ok(true)
    );
}

#[test]
fn a_type_mismatch_and_a_non_boolean_are_errors() {
    let e = event("order.created", 1, "PENDING");
    assert!(check("event.order.customer_ref > 5", &e).is_err());
    let why = check("event.order.total.amount_minor", &e).expect_err("not a bool");
    assert!(why.contains("not a boolean"), "{why}");
}

fn refused(source: &str, event_types: &[&str]) -> FilterError {
    Filter::compile(source, &types(event_types)).expect_err(source)
}

#[test]
fn a_syntax_error_names_the_position_and_what_was_expected() {
    let e = refused("event.order.total.amount_minor >= ", &["order.created"]);
    // (The end of the input, after the last space.)
    assert_eq!((e.line, e.column), (1, 35), "{e}");
    assert!(e.message.contains("expecting"), "{e}");
    let e = refused(
        "event.type == \"a\" &&\n  event.order.status ==",
        &["order.created"],
    );
    assert_eq!(e.line, 2, "{e}");
    let e = refused("event.type = \"order.created\"", &["order.created"]);
    assert_eq!(e.column, 12, "{e}");
}

#[test]
fn an_unknown_field_is_refused_at_its_position() {
    let e = refused(
        "event.type == \"order.created\" && event.order.totl.amount_minor > 1",
        &["order.created"],
    );
    assert!(e.message.contains("no field `totl`"), "{e}");
    assert!(e.message.contains("`total`"), "{e}");
    assert_eq!(e.line, 1);
    assert!((44..=50).contains(&e.column), "{e}");
    // A field of another event type than the subscription's.
    let e = refused("event.reason == \"x\"", &["order.created"]);
    assert!(e.message.contains("no field `reason`"), "{e}");
    Filter::compile("event.reason == \"x\"", &types(&["order.cancelled"])).expect("known");
    // In a macro's variable.
    let e = refused(
        "event.order.items.exists(i, i.skew == \"A\")",
        &["order.created"],
    );
    assert!(e.message.contains("no field `skew`"), "{e}");
    // In has().
    let e = refused("has(event.reasons)", &["order.cancelled"]);
    assert!(e.message.contains("`reasons`"), "{e}");
    // Selecting in a list or a string.
    let e = refused("event.order.items.sku == \"A\"", &["order.created"]);
    assert!(e.message.contains("list"), "{e}");
    let e = refused("event.order_id.x == 1", &["order.created"]);
    assert!(e.message.contains("no field `x`"), "{e}");
}

#[test]
fn unknown_names_functions_and_enum_values_are_refused() {
    let e = refused("order.total > 1", &["order.created"]);
    assert!(e.message.contains("unknown name `order`"), "{e}");
    let e = refused("event.order_id.matches(\"^a\")", &["order.created"]);
    assert!(e.message.contains("function `matches`"), "{e}");
    let e = refused("event.order.status == \"CANCELED\"", &["order.created"]);
    assert!(e.message.contains("CANCELLED"), "{e}");
    assert_eq!(e.column, 23, "{e}");
}

#[test]
fn cost_is_bounded_when_compiled() {
    let long = format!("event.order_id == \"{}\"", "x".repeat(MAX_SOURCE_BYTES));
    assert!(refused(&long, &["order.created"]).message.contains("bytes"));
    let many = vec!["1 < 2"; 60].join(" && ");
    assert!(refused(&many, &["order.created"]).message.contains("terms"));
    let deep = format!("{}true{}", "(".repeat(30), ")".repeat(30));
    Filter::compile(&deep, &types(&["order.created"])).expect("30 levels");
    // Refused before parsing: the parser's recursion would exhaust a worker's stack.
    let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
    let e = Filter::compile(&deep[..1000], &types(&["order.created"])).expect_err("deep");
    assert_eq!((e.line, e.column), (1, 33), "{e}");
    let e = Filter::compile(
        &format!("{}true", "!".repeat(900)),
        &types(&["order.created"]),
    )
    .expect_err("deep");
    assert!(e.message.contains("deep"), "{e}");
    // A comment's quote does not hide what follows.
    let e = Filter::compile(
        &format!("// it's\n{}true{}", "(".repeat(40), ")".repeat(40)),
        &types(&["order.created"]),
    )
    .expect_err("deep after a comment");
    assert!(e.message.contains("deep"), "{e}");
    // Brackets in strings do not count.
    Filter::compile(
        &format!("event.order_id != \"{}\"", "((".repeat(100)),
        &types(&["order.created"]),
    )
    .expect("in a string");
    let deep = format!("{}1{}", "-(".repeat(40), ")".repeat(40));
    let e = Filter::compile(&deep, &types(&["order.created"])).expect_err("deep");
    assert!(
        e.message.contains("deep") || e.message.contains("recursion"),
        "{e}"
    );
    let nested = "event.order.items.exists(i, event.order.items.exists(j, i.sku == j.sku))";
    let e = refused(nested, &["order.created"]);
    assert!(e.message.contains("inside another"), "{e}");
    // Chained: each link would multiply what the one before built (4^13 x 700 bytes).
    let chain = format!(
        "size([\"{}\"]{}) > 0",
        "x".repeat(600),
        ".map(x, x + x + x + x)".repeat(13)
    );
    let e = refused(&chain, &["order.created"]);
    assert!(e.message.contains("inside another"), "{e}");
    // A list of the event inside a body: read once per element (n^2).
    for quadratic in [
        "event.order.items.all(i, i in event.order.items)",
        "size(event.order.items.map(i, event.order.items + event.order.items)) > 0",
        "event.order.items.exists(i, size(event) > 0)",
    ] {
        let e = refused(quadratic, &["order.created"]);
        assert!(e.message.contains("square"), "{quadratic}: {e}");
    }
    // A scalar of the event inside a body is fine.
    Filter::compile(
        "event.order.items.exists(i, i.unit_price.currency == event.order.total.currency)",
        &types(&["order.created"]),
    )
    .expect("a scalar of the event in a body");
    // One after the other, each over the event: allowed.
    Filter::compile(
        "event.order.items.exists(i, i.quantity > 1) && event.order.items.all(i, i.quantity < 9)",
        &types(&["order.created"]),
    )
    .expect("sequential macros");
    assert!(refused("   ", &["order.created"]).message.contains("empty"));
}
