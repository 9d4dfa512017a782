//! `partner-receiver`: the example partner endpoint, printing each verified event.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use consumer_examples::receiver::{Receiver, Script};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Example partner webhook receiver (verifies Standard Webhooks signatures)"
)]
struct Args {
    /// Address to listen on; webhooks are POSTed to /webhook.
    #[arg(long, env = "RECEIVER_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The subscription's signing secret (`whsec_...`).
    #[arg(long, env = "RECEIVER_SECRET")]
    secret: String,
    /// A script as JSON, e.g. `{"fail_first": 2}` or `{"always_status": 410}`.
    #[arg(long, env = "RECEIVER_SCRIPT", default_value = "{}")]
    script: String,
    /// Stop after this many seconds (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let script: Script =
        serde_json::from_str(&args.script).map_err(|e| anyhow::anyhow!("--script: {e}"))?;
    let receiver = Receiver::start(args.listen, &args.secret, script).await?;
    println!("listening on {}", receiver.url());
    let mut printed = 0;
    let deadline =
        (args.seconds > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.seconds));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for d in receiver.deliveries().into_iter().skip(printed) {
            printed += 1;
            let dup = if d.duplicate {
                " (duplicate, ignored)"
            } else {
                ""
            };
            println!(
                "{} {} {} webhook-id {}{dup}",
                d.event_type, d.order_id, d.partner_id, d.webhook_id
            );
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    println!(
        "{} deliveries, {} distinct, {} refused signatures",
        printed,
        receiver.unique(),
        receiver.rejected_signatures()
    );
    Ok(())
}
