//! Replay and resolve: the safety checks, then paced writes, ledger entries and the
//! audit record.

use super::*;

pub(super) async fn handle(
    kafka: &Topics,
    action: Action,
    filter: &Filter,
    run: &RunArgs,
    topics: &TopicArgs,
    table: SubscriptionTable,
    interrupt: CancellationToken,
) -> Result<(Outcome, Counts), DlqError> {
    // (Quiet: the caller answers with the counts; nothing is printed.)
    macro_rules! tell {
        ($($arg:tt)*) => {{
            if !run.quiet {
                say!($($arg)*);
            }
        }};
    }
    if !(run.rate > 0.0 && run.rate.is_finite()) {
        return Err(Invalid(format!("--rate {}: must be above 0", run.rate)).into());
    }
    let Source {
        label: partner,
        topic: source,
        destination,
        partner: for_partner,
    } = kafka.source(filter, topics)?;
    if action == Action::Replay && !kafka.exists(&destination) {
        return Err(Invalid(format!(
            "`{partner}` has no destination topic `{destination}`; nothing sent"
        ))
        .into());
    }
    let ledger = kafka.ledger(&topics.ledger_topic).await?;
    let records = kafka.read(&source).await?;
    let matched: Vec<&DlqRecord> = records.iter().filter(|r| filter.matches(r)).collect();
    if matched.is_empty() && run.quiet {
        return Ok((Outcome::Done, Counts::default()));
    }
    if matched.is_empty() {
        return Err(nothing_matches(&source, records.len()));
    }
    let (mut todo, skipped): (Vec<&DlqRecord>, Vec<&DlqRecord>) = matched
        .iter()
        .partition(|r| run.again || !ledger.contains_key(&r.ledger_key(&source)));
    // A recover sends only what is still failed: not a message a resend delivered since.
    let mut settled = 0;
    if let Some(Settled(check)) = &run.settled {
        let ids = todo
            .iter()
            .filter_map(|r| r.header(headers::WEBHOOK_ID).map(str::to_string))
            .collect();
        let done = check(ids).await.map_err(DlqError::Failed)?;
        let before = todo.len();
        todo.retain(|r| {
            r.header(headers::WEBHOOK_ID)
                .is_none_or(|id| !done.contains(id))
        });
        settled = before - todo.len();
    }
    // Never send a record to a partner it does not belong to, nor one its subscription
    // would refuse or drop. (Router dead letters go back to the orders topic, where the
    // router routes them as it would any record.)
    if action == Action::Replay && for_partner {
        let mut problems = Vec::new();
        for r in &todo {
            let owner = r.header(headers::DLQ_PARTNER);
            if owner.is_some_and(|o| o != partner) {
                problems.push(format!(
                    "{}/{}: dead-lettered for partner `{}`",
                    r.partition,
                    r.offset,
                    owner.unwrap_or_default()
                ));
                continue;
            }
            let id = r.header(headers::SUBSCRIPTION_ID).unwrap_or_default();
            match table.get(id) {
                None => problems.push(format!(
                    "{}/{}: subscription `{id}` no longer exists (resolve the record instead)",
                    r.partition, r.offset
                )),
                Some(s) if s.partner_id != partner => problems.push(format!(
                    "{}/{}: subscription `{id}` belongs to partner `{}`",
                    r.partition, r.offset, s.partner_id
                )),
                Some(s) if s.disabled => problems.push(format!(
                    "{}/{}: subscription `{id}` is disabled (410 Gone); re-enable it with `dispatcher subscriptions apply` first",
                    r.partition, r.offset
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
            return Err(Invalid(format!(
                "{} of the {} records cannot be replayed; nothing sent:\n  {}{}",
                problems.len(),
                todo.len(),
                shown.join("\n  "),
                if problems.len() > 5 { "\n  ..." } else { "" }
            ))
            .into());
        }
    }
    let verb = action.to_string();
    let mut counts = Counts {
        matched: matched.len(),
        skipped: skipped.len(),
        settled,
        todo: todo.len(),
        done: 0,
    };
    if todo.is_empty() {
        tell!(
            "nothing to {verb}: all {} matching records of {source} were already replayed or resolved (`dlq list` shows their state; --again repeats them)",
            matched.len()
        );
        return Ok((Outcome::Done, counts));
    }
    let target = match action {
        Action::Replay => format!(" to {destination}"),
        Action::Resolve => String::new(),
    };
    if run.dry_run {
        tell!(
            "dry run: would {verb} {} records of {source}{target} ({} matched, {} already handled and skipped); nothing changed",
            todo.len(),
            matched.len(),
            skipped.len()
        );
        for r in todo.iter().take(10) {
            tell!(
                "  {}/{} {} key={} webhook-id={} reason={}",
                r.partition,
                r.offset,
                r.header(headers::EVENT_TYPE).unwrap_or("-"),
                String::from_utf8_lossy(&r.key),
                r.header(headers::WEBHOOK_ID).unwrap_or("-"),
                r.header(headers::DLQ_REASON).unwrap_or("-")
            );
        }
        if todo.len() > 10 {
            tell!("  ... and {} more", todo.len() - 10);
        }
        return Ok((Outcome::Done, counts));
    }

    kafka
        .settings
        .ensure_topics(
            std::slice::from_ref(&topics.ledger_topic),
            1,
            &[("cleanup.policy", "compact")],
        )
        .await
        .context("ledger topic")?;
    kafka
        .settings
        .ensure_topics(std::slice::from_ref(&topics.audit_topic), 1, &[])
        .await
        .context("audit topic")?;
    let producer: FutureProducer = kafka
        .settings
        .producer()
        .create()
        .context("creating the producer")?;
    let operator = run
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let id = uuid::Uuid::new_v4().to_string();
    let started_at = Timestamp::now();
    let progress = if run.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(todo.len() as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(format!("{verb} {source}"));
    let interval = Duration::from_secs_f64(1.0 / run.rate);
    let chunk = (run.rate.ceil() as usize).clamp(1, 100);
    let start = Instant::now();
    let mut offsets: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut done = 0usize;
    let mut interrupted = false;
    let mut failed: Option<anyhow::Error> = None;
    let audit = |status: AuditStatus,
                 done: usize,
                 offsets: &BTreeMap<i32, (i64, i64)>,
                 error: Option<String>| AuditRecord {
        id: id.clone(),
        action,
        operator: operator.clone(),
        started_at,
        finished_at: Timestamp::now(),
        partner: partner.clone(),
        source_topic: source.clone(),
        destination_topic: (action == Action::Replay).then(|| destination.clone()),
        filter: filter.clone(),
        again: run.again,
        matched: matched.len(),
        skipped: skipped.len(),
        count: done,
        status,
        error,
        offsets: offsets.clone(),
    };
    // Audited before the first record moves: a run that dies leaves at least this.
    write_audit(
        &producer,
        &topics.audit_topic,
        &audit(AuditStatus::Started, 0, &offsets, None),
    )
    .await?;
    'chunks: for batch in todo.chunks(chunk) {
        // Send the batch (paced), await every acknowledgement, then write its ledger
        // entries: a record is in the ledger only once it is durably where it belongs.
        let mut sent = Vec::with_capacity(batch.len());
        for r in batch {
            if interrupt.is_cancelled() {
                interrupted = true;
            }
            if interrupted {
                break;
            }
            let due = start + interval.mul_f64((done + sent.len()) as f64);
            tokio::select! {
                _ = interrupt.cancelled() => { interrupted = true; break; }
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            if action == Action::Replay {
                let headers = replay_headers(r, &source, &id, run.recover);
                let record = FutureRecord::to(&destination)
                    .key(&r.key)
                    .payload(&r.payload)
                    .headers(headers);
                let written = producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
                    .await
                    .map_err(|(e, _)| e)
                    .with_context(|| {
                        format!("writing {}/{} to {destination}", r.partition, r.offset)
                    });
                if let Err(e) = written {
                    // What was sent before it is recorded below, then the run stops: a
                    // rerun resumes with this record and sends nothing twice.
                    failed = Some(e);
                    break;
                }
            }
            sent.push(*r);
        }
        let entry = serde_json::to_vec(&LedgerEntry {
            action: action.done(),
            operation: id.clone(),
            at: Timestamp::now(),
            operator: operator.clone(),
        })
        .context("encoding the ledger entry")?;
        for r in &sent {
            let key = r.ledger_key(&source);
            let recorded = producer
                .send(
                    FutureRecord::to(&topics.ledger_topic)
                        .key(&key)
                        .payload(&entry),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("writing the ledger entry of {key}"));
            if let Err(e) = recorded {
                // Sent but not recorded: a rerun sends these again (same webhook-id).
                failed.get_or_insert(e);
                break;
            }
            let span = offsets.entry(r.partition).or_insert((r.offset, r.offset));
            span.0 = span.0.min(r.offset);
            span.1 = span.1.max(r.offset);
            done += 1;
        }
        progress.set_position(done as u64);
        if interrupted || failed.is_some() {
            break 'chunks;
        }
    }
    progress.finish_and_clear();
    let status = match (&failed, interrupted) {
        (Some(_), _) => AuditStatus::Failed,
        (None, true) => AuditStatus::Interrupted,
        (None, false) => AuditStatus::Completed,
    };
    let error = failed.as_ref().map(|e| format!("{e:#}"));
    write_audit(
        &producer,
        &topics.audit_topic,
        &audit(status, done, &offsets, error),
    )
    .await?;
    if let Some(e) = failed {
        return Err(DlqError::Failed(e.context(format!(
            "{} {done} of {} records{target} before the failure (recorded: a rerun resumes, operation {id})",
            action.done(),
            todo.len()
        ))));
    }
    if interrupted {
        tell!(
            "interrupted: {} {done} of {} records{target} (operation {id}); run the same command again to resume",
            action.done(),
            todo.len()
        );
        counts.done = done;
        Ok((Outcome::Interrupted, counts))
    } else {
        tell!(
            "{} {done} records of {source}{target} ({} matched, {} already handled and skipped); operation {id}, audited in {}",
            action.done(),
            matched.len(),
            skipped.len(),
            topics.audit_topic
        );
        counts.done = done;
        Ok((Outcome::Done, counts))
    }
}

/// What a filter reads and where a replay of it writes.
pub(super) struct Source {
    /// The partner, or `router:<topic>` (a colon no partner id has).
    pub(super) label: String,
    pub(super) topic: String,
    pub(super) destination: String,
    /// A partner's topic (its subscriptions are checked before a replay).
    pub(super) partner: bool,
}

/// The original headers without the dead-letter ones, plus where the record comes from
/// (and, for a `recover`, that it is one).
pub(super) fn replay_headers(
    r: &DlqRecord,
    source: &str,
    operation: &str,
    recover: bool,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &r.headers {
        if !k.starts_with(headers::DLQ_PREFIX)
            && k != headers::REPLAYED_FROM
            && k != headers::REPLAY_OPERATION
            && k != headers::DELIVERY_TRIGGER
        {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
    }
    let from = ledger_key(source, r.partition, r.offset);
    if recover {
        headers = headers.insert(Header {
            key: headers::DELIVERY_TRIGGER,
            value: Some("recover"),
        });
    }
    headers
        .insert(Header {
            key: headers::REPLAYED_FROM,
            value: Some(from.as_str()),
        })
        .insert(Header {
            key: headers::REPLAY_OPERATION,
            value: Some(operation),
        })
}
