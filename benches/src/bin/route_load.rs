//! Load test of `Route` on loopback, bounded in time: measures the unloaded latency, the
//! throughput the server sustains, then offers about three times that rate open-loop and reports
//! how much was shed with RESOURCE_EXHAUSTED, the p99 of the accepted requests against the
//! unloaded p99, and the process's resident memory before and after.
//!
//!     cargo run --release -p triage-benches --bin route_load -- [--seconds S] [--factor F]
//!
//! The server runs in this process with the configured settings (so `TRIAGE_ENCODER__*`
//! variables tune queue capacity, batch size and `max_queue_wait_ms`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Mutex;
use tonic::Code;
use tonic::transport::Channel;
use triage_core::Settings;
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{Message, RouteRequest};
use triage_server::RoutingEngine;

fn request(i: usize) -> RouteRequest {
    // Distinct prompts of ~16-40 tokens, so nothing is served from a cache.
    let text = format!("{} (case {i})", triage_benches::prompt_of(16 + i % 24));
    RouteRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text,
        }],
        ..Default::default()
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Resident set size of this process, KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = triage_benches::flag("--seconds")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(10.0);
    let factor: f64 = triage_benches::flag("--factor")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(3.0);
    let mut settings = Settings::load(None)?;
    // Every call repeats its prompt: measure the encoder, not the exact-repeat cache.
    settings.encoder.cache_entries = 0;
    let log_dir = std::env::temp_dir().join(format!("triage-load-{}", std::process::id()));
    settings.log.dir = log_dir.clone();
    let engine = RoutingEngine::from_settings(&settings, &triage_benches::root())?;
    let server = triage_server::start(engine, &settings, "127.0.0.1:0".parse()?).await?;
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await
        .context("connect")?;
    let client = RouterClient::new(channel);
    println!(
        "encoder: workers {}, queue {}, batch {}, max_queue_wait_ms {}",
        settings.encoder.workers,
        settings.encoder.queue_capacity,
        settings.encoder.max_batch,
        settings.encoder.max_queue_wait_ms
    );

    // 1. Unloaded: one caller at a time.
    let mut unloaded = Vec::new();
    for i in 0..300 {
        let started = Instant::now();
        client.clone().route(request(i)).await?;
        if i >= 20 {
            unloaded.push(started.elapsed().as_micros() as u64);
        }
    }
    unloaded.sort_unstable();
    let unloaded_p99 = percentile(&unloaded, 0.99);
    println!(
        "unloaded: p50 {} us, p99 {} us ({} calls)",
        percentile(&unloaded, 0.5),
        unloaded_p99,
        unloaded.len()
    );

    // 2. Sustainable throughput: closed loop, 16 callers.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..16 {
        let (client, done, stop) = (client.clone(), done.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut i = c * 100_000;
            while !stop.load(Ordering::Relaxed) {
                if client.clone().route(request(i)).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let window = Duration::from_secs_f64(seconds / 2.0);
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await?;
    }
    let capacity = done.load(Ordering::Relaxed) as f64 / window.as_secs_f64();
    println!("sustained: {capacity:.0} requests/s (closed loop, 16 callers)");

    // 3. Overload: open loop at factor × capacity.
    let rate = capacity * factor;
    let total = (rate * seconds) as usize;
    let rss_before = rss_kib();
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let (shed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, accepted, shed, failed) = (
            client.clone(),
            accepted.clone(),
            shed.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            match client.clone().route(request(1_000_000 + i)).await {
                Ok(_) => accepted
                    .lock()
                    .await
                    .push(sent.elapsed().as_micros() as u64),
                Err(s) if s.code() == Code::ResourceExhausted => {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = rss_kib();
    let mut ok = accepted.lock().await.clone();
    ok.sort_unstable();
    let p99 = percentile(&ok, 0.99);
    println!(
        "offered: {total} requests at {rate:.0}/s ({factor}x) over {elapsed:.1} s\n\
         accepted: {} ({:.0}/s), shed with RESOURCE_EXHAUSTED: {}, other errors: {}\n\
         accepted latency: p50 {} us, p99 {} us = {:.2}x the unloaded p99\n\
         resident memory: {} MiB before, {} MiB after",
        ok.len(),
        ok.len() as f64 / elapsed,
        shed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        percentile(&ok, 0.5),
        p99,
        p99 as f64 / unloaded_p99.max(1) as f64,
        rss_before / 1024,
        rss_after / 1024
    );
    server.shutdown().await?;
    let _ = std::fs::remove_dir_all(log_dir);
    Ok(())
}
