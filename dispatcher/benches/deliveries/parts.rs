//! The measured parts: wrk, the bare reqwest loops, the webhook client loop, and the
//! dispatcher lane on librdkafka's mock cluster.

use super::*;

pub(crate) async fn wrk(url: &str, concurrency: usize) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("bench-deliveries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("post.lua");
    std::fs::write(&script, format!("wrk.method = \"POST\"\nwrk.body = [==[{BODY}]==]\nwrk.headers[\"content-type\"] = \"application/json\"\n")).ok()?;
    let secs = env_or("BENCH_WRK_SECS", 5);
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .await
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The same reqwest settings as the webhook client (pooled, no redirects, nodelay), no
/// Kafka, no signing: the HTTP ceiling of this process. Two shapes, and the bench keeps
/// the faster as the baseline: every request a future of one task (`buffer_unordered`),
/// or every request a task of its own (spawned, `concurrency` at a time), which lets
/// every runtime thread drive requests.
pub(crate) fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client")
}

pub(crate) async fn post_once(client: reqwest::Client, url: String) -> bool {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

pub(crate) async fn on_workers(
    part: impl std::future::Future<Output = Measured> + Send + 'static,
) -> Measured {
    tokio::spawn(part).await.expect("bench part")
}

/// Runs `n` requests made by `request`, `concurrency` at a time; every one must succeed.
/// Returns requests per second and what they cost this process.
pub(crate) async fn timed<F>(
    n: usize,
    concurrency: usize,
    request: impl FnMut(usize) -> F,
) -> Measured
where
    F: std::future::Future<Output = bool>,
{
    let usage = Usage::now();
    let start = Instant::now();
    let ok = stream::iter(0..n)
        .map(request)
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, n);
    Measured {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cost: usage.per_request(n),
    }
}

/// A part's round: requests per second, and (CPU µs, context switches) per request of
/// this process over the same window.
#[derive(Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) rate: f64,
    pub(crate) cost: (f64, f64),
}

pub(crate) async fn bare_one_task(url: String, n: usize, concurrency: usize) -> Measured {
    let client = bare_client();
    timed(n, concurrency, |_| post_once(client.clone(), url.clone())).await
}

pub(crate) async fn bare_tasks(url: String, n: usize, concurrency: usize) -> Measured {
    let client = bare_client();
    timed(n, concurrency, |_| {
        let task = tokio::spawn(post_once(client.clone(), url.clone()));
        async move { matches!(task.await, Ok(true)) }
    })
    .await
}

/// The lane's own HTTP step alone: `WebhookClient::send` (SSRF-guarded resolver, signed
/// Standard Webhooks headers, excerpt read), `concurrency` at a time, no Kafka: what the
/// lane's client costs over the bare loop.
pub(crate) async fn webhook_client(url: String, n: usize, concurrency: usize) -> Measured {
    let client = dispatcher::webhook::client::WebhookClient::new(
        Arc::new(
            dispatcher::webhook::ssrf::Allowlist::parse(&["127.0.0.1".into()]).expect("allowlist"),
        ),
        Duration::from_secs(1),
    )
    .expect("client");
    let url = Ok(reqwest::Url::parse(&url).expect("url"));
    let secrets = [dispatcher::webhook::signing::Secret::parse(
        &dispatcher::webhook::signing::Secret::generate(),
    )
    .expect("secret")];
    let body = bytes::Bytes::from_static(BODY.as_bytes());
    timed(n, concurrency, |i| {
        let (client, url, secrets, body) = (client.clone(), &url, &secrets, &body);
        async move {
            let id = format!("evt-{i}");
            let hook = dispatcher::webhook::client::Webhook {
                url,
                id: &id,
                body,
                secrets,
                traceparent: None,
                timeout: Duration::from_secs(2),
                ca: None,
            };
            matches!(
                client.send(&hook).await.attempt,
                dispatcher::webhook::outcome::Attempt::Status {
                    status: 200..=299,
                    ..
                }
            )
        }
    })
    .await
}

/// Partitions of the bench's delivery topic.
pub(crate) const PARTITIONS: usize = 12;

/// A mock cluster holding `n` delivery records of partner `bench` (5,000 keys,
/// [`PARTITIONS`] partitions), written once; every lane round reads them all in a group
/// of its own.
pub(crate) async fn filled_cluster(
    n: usize,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    // librdkafka's mock cluster keeps at most 5 MB (and 100,000 records) per partition
    // and silently drops the oldest beyond that (rdkafka_mock.c): the lane would then
    // skip records and the count would never be reached (or be reached by duplicates).
    let per_partition = n / PARTITIONS * (BODY.len() + 100);
    assert!(
        per_partition < 4 << 20,
        "BENCH_RECORDS={n} puts about {} MB in each of {PARTITIONS} partitions; the mock cluster keeps 5 MB",
        per_partition >> 20
    );
    let cluster = MockCluster::new(1).expect("mock");
    cluster
        .create_topic("deliveries.bench", PARTITIONS as i32, 1)
        .expect("topic");
    // The delivery log's topics, one per round (`lane+log`); the mock cluster drops
    // what is over 5 MB a partition, which only a reader would notice.
    for round in 0..env_or("BENCH_ROUNDS", 3) {
        cluster
            .create_topic(&format!("attempts-{round}"), PARTITIONS as i32, 1)
            .expect("log topic");
    }
    cluster.create_topic("dlq.bench", 1, 1).expect("topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let (id, key) = (format!("evt-{i}"), format!("order-{}", i % 5000));
        let headers = common::delivery_headers(id.as_str(), "bench-s");
        pending.push(
            producer
                .send_result(
                    FutureRecord::to("deliveries.bench")
                        .key(&key)
                        .payload(BODY)
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.await.expect("delivered").expect("written");
    }
    cluster
}

/// One lane (a fresh one: its own group, client and flow control, which starts at one
/// request in flight) delivering all `n` records; timed from its first delivery (the
/// group join is not delivery work) to its last.
pub(crate) async fn dispatcher_lane(
    receiver: &Receiver,
    brokers: &str,
    round: usize,
    n: usize,
    concurrency: usize,
    log: bool,
) -> Measured {
    let common::Lane {
        settings,
        mut ctx,
        shutdown,
    } = common::lane(
        "bench",
        brokers.to_string(),
        receiver.url(),
        concurrency,
        RetryPolicy::default(),
    );
    let mut config = common::lane_config(
        &format!("bench-{round}{}", if log { "-log" } else { "" }),
        env_or("BENCH_BUFFERED", 1024),
        Duration::from_secs(5),
        PARTITIONS as i32,
    );
    if log {
        // A log topic per round (made by `filled_cluster`).
        let topic = format!("attempts-{round}");
        // The log's own producer, as `dispatcher run` makes it; BENCH_LOG_LINGER=<ms>
        // sets its linger (the default is 50 ms; 5 is the instance's other producer's).
        let mut log_producer = settings.log_producer();
        if let Ok(linger) = std::env::var("BENCH_LOG_LINGER") {
            log_producer.set("linger.ms", &linger);
        }
        let producer = log_producer.create().expect("log producer");
        let writer = dispatcher::attempts::AttemptLog::new(producer, &topic, 4096);
        ctx.log = Some(writer.clone());
        config.log = Some(writer);
    }
    let before = receiver.count().await;
    let flow = std::sync::Arc::clone(&ctx.flow);
    let lane = tokio::spawn(lane::run("bench".into(), settings, config, ctx));
    let mut first = before;
    while first == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
        first = receiver.count().await;
    }
    let usage = Usage::now();
    let start = Instant::now();
    // BENCH_TRACE: the deliveries of every 100 ms (and the partner's concurrency limit
    // then), to see a ramp-up, a stall or flow control holding back.
    let trace = std::env::var("BENCH_TRACE").is_ok();
    let (mut mark, mut marked) = (Instant::now(), first);
    loop {
        let now = receiver.count().await;
        if now >= before + n as u64 {
            break;
        }
        if trace && mark.elapsed() >= Duration::from_millis(100) {
            eprint!("{}/{} ", now - marked, flow.limit() as usize);
            (mark, marked) = (Instant::now(), now);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if trace {
        eprintln!();
    }
    let delivered = (before + n as u64 - first) as usize;
    let measured = Measured {
        rate: delivered as f64 / start.elapsed().as_secs_f64(),
        cost: usage.per_request(delivered),
    };
    shutdown.cancel();
    let _ = lane.await;
    measured
}
