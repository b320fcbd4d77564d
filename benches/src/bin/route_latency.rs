//! `Route` latency seen by a client: starts the real server on a loopback port (or uses
//! `--addr HOST:PORT` of a running one) and times sequential calls with ~16, 64 and 256-token
//! prompts. Prints median and p99 per size.
//!
//!     cargo run --release -p triage-benches --bin route_latency -- [--calls N] [--addr HOST:PORT]

use std::time::Instant;

use anyhow::Context;
use triage_core::Settings;
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{Message, RouteRequest};
use triage_server::RoutingEngine;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = triage_benches::flag("--calls")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(200);
    let root = triage_benches::root();
    let mut settings = Settings::load(None)?;
    // Every call repeats its prompt: measure the encoder, not the exact-repeat cache.
    settings.encoder.cache_entries = 0;
    let addr: Option<String> = triage_benches::flag("--addr").map_err(anyhow::Error::msg)?;
    let (addr, _server) = match addr {
        Some(a) => (a, None),
        None => {
            let engine = RoutingEngine::from_settings(&settings, &root)?;
            let server = triage_server::start(engine, &settings, "127.0.0.1:0".parse()?).await?;
            (server.addr.to_string(), Some(server))
        }
    };
    let mut client = RouterClient::connect(format!("http://{addr}"))
        .await
        .context("connect")?;
    println!(
        "{:>8} {:>10} {:>10} {:>12} {:>8}",
        "tokens", "median_us", "p99_us", "encoder_us", "calls"
    );
    for tokens in [16, 64, 256] {
        let request = RouteRequest {
            messages: vec![Message {
                role: "user".into(),
                content: triage_benches::prompt_of(tokens),
            }],
            ..Default::default()
        };
        for _ in 0..10 {
            client.route(request.clone()).await?;
        }
        let mut total = Vec::with_capacity(calls);
        let mut encoder = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let reply = client.route(request.clone()).await?.into_inner();
            total.push(started.elapsed().as_micros() as u64);
            encoder.push(reply.timings.map_or(0, |t| t.encoder_us));
        }
        total.sort_unstable();
        encoder.sort_unstable();
        let pct = |v: &[u64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "{tokens:>8} {:>10} {:>10} {:>12} {calls:>8}",
            pct(&total, 0.5),
            pct(&total, 0.99),
            pct(&encoder, 0.5)
        );
    }
    let before = cpu_seconds();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    println!(
        "idle CPU in the second after the calls: {:.1}% of one core",
        100.0 * (cpu_seconds() - before)
    );
    Ok(())
}

/// CPU time this process has used, seconds (`/proc/self/stat`, at Linux's 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}
