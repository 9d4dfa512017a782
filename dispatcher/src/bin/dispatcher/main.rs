//! `dispatcher`: parses the command line and runs the command: `run` (the router and
//! the delivery lanes, wired by `dispatcher::app::App`), `api`, `subscriptions`, `dlq`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dispatcher::app::{App, Shared};
use tokio_util::sync::CancellationToken;

mod cli;
mod subscriptions;

use cli::{ApiArgs, Cli, Command, SubscriptionsCommand};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    orderhooks_runtime::no_transparent_huge_pages();
    orderhooks_runtime::init_tracing();
    let cli = Cli::parse();
    let shared = match cli.common.shared() {
        Ok(shared) => shared,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    let outcome = match &cli.command {
        Command::Run(args) => match args.config(shared) {
            Ok(config) => run(config).await,
            // A usage error, like the ones clap reports: exit code 2.
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Subscriptions(SubscriptionsCommand::Apply { file, prune }) => {
            subscriptions::apply(&shared, file, *prune).await
        }
        Command::Subscriptions(SubscriptionsCommand::List) => subscriptions::list(&shared).await,
        Command::Dlq(command) => return dlq(shared, command).await,
        Command::Api(args) => api(shared, args).await,
        Command::Log(command) => dispatcher::attempts::cli::run(command, &shared.kafka).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(config: dispatcher::app::RunConfig) -> anyhow::Result<()> {
    let app = App::start(config).await?;
    println!("listening on http://{}", app.addr);
    orderhooks_runtime::shutdown_signal().await;
    app.stop().await
}

/// Exit codes: 0 done, 1 failed (broker unreachable, write failed), 2 refused (bad
/// filter, unknown partner, nothing matches), 130 interrupted by Ctrl-C (rerun resumes).
async fn dlq(shared: Shared, command: &dispatcher::dlq::DlqCommand) -> std::process::ExitCode {
    use dispatcher::dlq::Outcome;
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        orderhooks_runtime::shutdown_signal().await;
        on_signal.cancel();
    });
    let subscriptions = shared.table();
    match dispatcher::dlq::run(command, &shared.kafka, subscriptions, interrupt).await {
        Ok(Outcome::Done) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => std::process::ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

async fn api(shared: Shared, args: &ApiArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.tokens_file)
        .with_context(|| format!("--tokens-file {}", args.tokens_file.display()))?;
    let tokens = dispatcher::api::Tokens::parse(&text)
        .map_err(|e| anyhow::anyhow!("--tokens-file {}: {e}", args.tokens_file.display()))?;
    shared.ensure_subscriptions_topic().await?;
    let audit = shared.audit_trail().await?;
    let table = shared.table().await?;
    let writer = shared
        .kafka
        .producer()
        .set("message.timeout.ms", "30000")
        .create()
        .context("the subscriptions topic's producer")?;
    // The delivery log's view: made where missing, filled from where it stopped.
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_view = stop.clone().drop_guard();
    let log = if args.attempts_topic.is_empty() {
        None
    } else {
        shared
            .kafka
            .ensure_topics(
                std::slice::from_ref(&args.attempts_topic),
                shared.partitions,
                &[("retention.ms", "604800000")],
            )
            .await
            .with_context(|| format!("delivery log topic `{}`", args.attempts_topic))?;
        let view = dispatcher::attempts::view::LogView::open(&args.log_view_path)?;
        let view = Arc::new(std::sync::Mutex::new(view));
        let retention = dispatcher::attempts::ingest::Retention {
            max_age: std::time::Duration::from_secs(args.log_retention_hours * 3600),
            max_bytes: args.log_max_mib << 20,
        };
        let (kafka, topic, filled) = (
            shared.kafka.clone(),
            args.attempts_topic.clone(),
            Arc::clone(&view),
        );
        let view_stop = stop.clone();
        tokio::spawn(async move {
            if let Err(error) =
                dispatcher::attempts::ingest::follow(kafka, topic, filled, retention, view_stop)
                    .await
            {
                tracing::error!(%error, "the delivery log view stopped");
            }
        });
        Some(view)
    };
    let secret = match &args.console_secret_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("--console-secret-file {}", path.display()))?
            .trim_ascii()
            .to_vec(),
        None => {
            tracing::warn!("no --console-secret-file: console sessions and portal links hold on this instance only, until it restarts");
            dispatcher::console::Console::random_secret()
        }
    };
    let ledger =
        dispatcher::console::ledger::Ledger::open(&shared.kafka, &args.console_topic, stop.clone())
            .await
            .with_context(|| format!("the console ledger `{}`", args.console_topic))?;
    let health = if args.health_topic.is_empty() {
        None
    } else {
        Some(
            dispatcher::api::health::HealthView::start(
                &shared.kafka,
                &args.health_topic,
                stop.clone(),
            )
            .await
            .with_context(|| format!("the partner health topic `{}`", args.health_topic))?,
        )
    };
    let console = dispatcher::console::Console::new(secret, args.console_url.clone(), ledger)
        .context("--console-secret-file")?;
    // The ownership challenges go out as webhooks do: the SSRF guard, the client
    // certificate, a subscription's own CA.
    let client = dispatcher::webhook::client::WebhookClient::build(
        Arc::clone(&shared.allowlist),
        Duration::from_secs(5),
        args.egress_proxy.as_deref(),
        shared.client_cert.clone(),
    )?;
    tokio::spawn(client.clone().watch_client_cert(stop.clone()));
    let verifier = Arc::new(dispatcher::api::verify::Verifier::new(
        client,
        args.require_endpoint_verification,
        Duration::from_secs(args.endpoint_verification_window_secs),
        Duration::from_millis(args.endpoint_verification_timeout_ms),
    ));
    let second_factors = dispatcher::api::second_factor::SecondFactors::start(
        &shared.kafka,
        &args.second_factor_topic,
        args.require_second_factor,
        stop.clone(),
    )
    .await
    .with_context(|| format!("the second-factor topic `{}`", args.second_factor_topic))?;
    let state = dispatcher::api::ApiState {
        kafka: shared.kafka,
        subscriptions_topic: shared.subscriptions_topic,
        audit,
        max_subscriptions_per_partner: args.max_subscriptions_per_partner as usize,
        events_permits: Arc::new(tokio::sync::Semaphore::new(
            args.events_concurrency as usize,
        )),
        partitions: shared.partner_partitions,
        table,
        allowlist: shared.allowlist,
        require_https: args.require_https,
        tokens: Arc::new(tokens),
        creating: Default::default(),
        writes: dispatcher::api::WriteLimit::new(
            f64::from(args.partner_writes_per_sec),
            args.partner_write_burst,
        ),
        writer,
        log,
        recovering: Default::default(),
        console: Arc::new(console),
        health,
        verifier: Some(verifier),
        second_factors: Some(second_factors),
        streams: Arc::new(dispatcher::api::stream::Streams::new(
            (
                args.max_streams_per_partner as usize,
                args.max_streams as usize,
            ),
            Duration::from_millis(args.stream_heartbeat_ms),
            args.stream_buffer_events as usize,
            Duration::from_millis(args.stream_slow_after_ms),
            stop.clone(),
        )),
    };
    tokio::spawn(dispatcher::api::verify::run(state.clone(), stop.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    // Open streams end at shutdown (else the graceful shutdown would wait for them);
    // a connection that still cannot be finished (a client that stopped reading) is
    // waited for 10 s at most.
    let stopping = stop.clone();
    let serve =
        axum::serve(listener, dispatcher::api::router(state)).with_graceful_shutdown(async move {
            orderhooks_runtime::shutdown_signal().await;
            stopping.cancel();
        });
    tokio::select! {
        served = std::future::IntoFuture::into_future(serve) => served?,
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        } => tracing::warn!("connections still open 10 s after shutdown began; stopping"),
    }
    Ok(())
}
