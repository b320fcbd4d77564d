//! `Route` latency against the bare encoder, in one process and one run: for each size (about
//! 16, 64 and 256 tokens) it interleaves a `Route` call over gRPC on loopback, the same prompt
//! through a bare `OnnxEmbedder` built with the same settings (tokenising and one ONNX Runtime
//! run, nothing else), and a gRPC health check (the client's own round trip), so that machine
//! noise hits all three alike. Every `Route` prompt is new (a rotating first word), so the
//! exact-repeat cache misses as it would for fresh traffic; a last row repeats one prompt to
//! time cache hits, end to end and inside the server. Then the process's CPU in the second
//! after the calls.
//!
//!     cargo run --release -p triage-benches --bin route_latency -- [--calls N]
//!         [--spinning true|false] [--intra-threads N] [--runtime-threads N]
//!
//! Defaults: 200 calls a size and the configuration's defaults.

use std::time::Instant;

use anyhow::Context;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use triage_core::{EncoderInput, Settings};
use triage_encoder::{Embedder, OnnxEmbedder, OnnxOptions};
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{Message, RouteRequest};
use triage_server::RoutingEngine;

/// First words that each encode as one token, so a rotated prompt keeps its length.
const FIRST: [&str; 8] = [
    "please", "now", "kindly", "again", "today", "so", "then", "also",
];

fn main() -> anyhow::Result<()> {
    let threads: Option<usize> =
        triage_benches::flag("--runtime-threads").map_err(anyhow::Error::msg)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let calls: usize = triage_benches::flag("--calls")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(200);
    let root = triage_benches::root();
    let mut settings = Settings::load(None)?;
    if let Some(spin) = triage_benches::flag("--spinning").map_err(anyhow::Error::msg)? {
        settings.encoder.intra_op_spinning = spin;
    }
    if let Some(n) = triage_benches::flag("--intra-threads").map_err(anyhow::Error::msg)? {
        settings.encoder.intra_op_threads = n;
    }
    println!(
        "spinning={} intra_op_threads={} runtime_threads={}",
        settings.encoder.intra_op_spinning,
        settings.encoder.intra_op_threads,
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    let engine = RoutingEngine::from_settings(&settings, &root)?;
    let server = triage_server::start(engine, &settings, "127.0.0.1:0".parse()?).await?;
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await
        .context("connect")?;
    let mut client = RouterClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let mut bare = OnnxEmbedder::load(&OnnxOptions::from_settings(&settings.encoder, &root))?;

    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>10}",
        "tokens",
        "route_p50",
        "route_p99",
        "bare_p50",
        "bare_p99",
        "x_p50",
        "x_p99",
        "rtt_p50",
        "excess_p50"
    );
    let mut prompts = Vec::new();
    for tokens in [16, 64, 256] {
        let base = triage_benches::prompt_of(tokens);
        let prompt = |i: usize| format!("{} {base}", FIRST[i % FIRST.len()]);
        for i in 0..10 {
            client.route(request(&prompt(i))).await?;
            embed(&mut bare, &prompt(i))?;
        }
        let (mut route, mut direct, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..calls {
            // A new prompt per call: the rotating word plus a counter the cache has not seen.
            let text = format!("{} {i}", prompt(i));
            let started = Instant::now();
            client.route(request(&text)).await?;
            route.push(micros(started));
            let started = Instant::now();
            embed(&mut bare, &text)?;
            direct.push(micros(started));
            let started = Instant::now();
            health.check(HealthCheckRequest::default()).await?;
            rtt.push(micros(started));
        }
        let (r50, r99, b50, b99, t50) = (
            pct(&mut route, 0.5),
            pct(&mut route, 0.99),
            pct(&mut direct, 0.5),
            pct(&mut direct, 0.99),
            pct(&mut rtt, 0.5),
        );
        println!(
            "{tokens:>6} {r50:>9} {r99:>9} {b50:>9} {b99:>9} {:>7.2} {:>7.2} {t50:>7} {:>10}",
            r50 as f64 / b50 as f64,
            r99 as f64 / b99 as f64,
            r50 as i64 - b50 as i64 - t50 as i64,
        );
        prompts.push(base);
    }

    // Cache hits: one prompt repeated.
    let repeated = request(&prompts[1]);
    client.route(repeated.clone()).await?;
    let (mut end_to_end, mut inside, mut lookup, mut decide) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..calls {
        let started = Instant::now();
        let reply = client.route(repeated.clone()).await?.into_inner();
        end_to_end.push(micros(started));
        let timings = reply.timings.unwrap_or_default();
        inside.push(timings.total_us);
        lookup.push(timings.encoder_us);
        decide.push(timings.policy_us);
    }
    println!(
        "cache hit (64 tokens, repeated): route p50 {} us, p99 {} us; inside the server p50 {} us \
         (cache lookup {} us, features to decision {} us)",
        pct(&mut end_to_end, 0.5),
        pct(&mut end_to_end, 0.99),
        pct(&mut inside, 0.5),
        pct(&mut lookup, 0.5),
        pct(&mut decide, 0.5)
    );
    let before = cpu_seconds();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    println!(
        "idle CPU in the second after the calls: {:.1}% of one core",
        100.0 * (cpu_seconds() - before)
    );
    server.shutdown().await?;
    Ok(())
}

fn request(text: &str) -> RouteRequest {
    RouteRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
        }],
        ..Default::default()
    }
}

fn embed(bare: &mut OnnxEmbedder, text: &str) -> anyhow::Result<()> {
    let input = EncoderInput {
        primary: text.into(),
        context: String::new(),
    };
    bare.embed_batch(&[&input])?;
    Ok(())
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The `p` quantile of `v` (sorted in place).
fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
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
