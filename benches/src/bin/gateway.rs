//! The HTTP gateway's own cost, measured against the same local upstream called directly, in
//! one run:
//!
//! 1. **Overhead** (non-streaming, a new ~16-token prompt each pair, the exact-repeat cache
//!    off, calls interleaved so machine noise hits both paths alike), for a catalog model named
//!    directly (forwarded before the encoder runs: gateway end-to-end − the direct call) and for
//!    `model="triage"` (gateway end-to-end − its encoder time (Server-Timing) − the direct
//!    call). Printed as p50 / p99, beside the raw figures.
//! 2. **Time to first chunk** (streaming): the same two subtractions, p50 / p99.
//! 3. **`triage-verify`, drafts accepted**: both drafts answer the same recorded text, so the
//!    acceptor returns one; the gateway's cost beyond the encoder and one direct call (the
//!    drafts run in parallel): two upstream calls, the verdict, three log records.
//! 4. **Concurrency**: waves of `--streams` (default 1,000) streaming requests in flight at once
//!    against an upstream whose answers take about a second; prints how many were in flight at
//!    the peak, the process's threads and resident memory after each wave (flat memory and a
//!    constant thread count mean no per-request threads and nothing retained).
//!
//! `--chunk-ms N` spaces the upstream's streamed chunks (default 0: all at once).
//!
//!     cargo run --release -p triage-benches --bin gateway -- [--calls N] [--streams N] [--waves N]
//!         [--chunk-ms N]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use triage_core::Settings;
use triage_engine::RoutingEngine;
use triage_engine::startup::{self, Background};
use triage_gateway::Gateway;
use triage_testkit::{Behaviour, LocalUpstream, local_providers};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flag = |name| triage_benches::flag::<usize>(name).map_err(anyhow::Error::msg);
    let calls = flag("--calls")?.unwrap_or(300);
    let streams = flag("--streams")?.unwrap_or(1000);
    let waves = flag("--waves")?.unwrap_or(3);

    let chunk_ms = flag("--chunk-ms")?.unwrap_or(0);
    let fast = LocalUpstream::start(Behaviour {
        chunk_delay: Duration::from_millis(chunk_ms as u64),
        ..Behaviour::default()
    })
    .await?;
    // Every pair repeats its prompt: the encoder runs each time, as for new prompts.
    let (gateway, _keep) = router(&fast.base_url(), streams, false).await?;
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let prompt = triage_benches::prompt_of(16);
    let model = chosen_model(&client, &gateway, &prompt).await?;
    println!("16-token prompts routed to {model}; {calls} interleaved pairs per figure\n");
    for stream in [false, true] {
        for named in [true, false] {
            let pair = Pair {
                gateway: &gateway,
                upstream: &fast.base_url(),
                model: &model,
                named,
                stream,
            };
            compare(&client, &pair, &prompt, calls).await?;
        }
    }

    verify_overhead(&client, &gateway, &fast.base_url(), &prompt, calls).await?;

    let slow = LocalUpstream::start(Behaviour {
        chunk_delay: Duration::from_millis(55),
        ..Behaviour::default()
    })
    .await?;
    let (gateway, _keep_slow) = router(&slow.base_url(), streams, true).await?;
    for repeated in [false, true] {
        concurrency(&gateway, streams, waves, repeated).await?;
    }
    Ok(())
}

/// Both doors' engine with every provider at `upstream`, and the gateway's base URL.
async fn router(
    upstream: &str,
    streams: usize,
    cache: bool,
) -> anyhow::Result<(String, Background)> {
    let mut settings = Settings::load(None)?;
    if !cache {
        settings.encoder.cache_entries = 0;
    }
    // One directory per server: both stay up until the process ends, and a log directory
    // takes one server.
    settings.log.dir = std::env::temp_dir().join(format!(
        "triage-bench-gateway-{}-{}",
        std::process::id(),
        if cache { "cached" } else { "uncached" }
    ));
    // Bursts of `streams` requests queue for the encoder rather than being shed.
    settings.encoder.queue_capacity = streams.max(256) * 2;
    settings.encoder.max_queue_wait_ms = 0;
    settings.providers = local_providers(&settings, upstream);
    for p in &mut settings.providers {
        p.first_byte_ms = 60_000;
    }
    let engine = RoutingEngine::from_settings(&settings, &triage_benches::root())?;
    let service = startup::open(engine, &settings, None).await?;
    let background = Background::start(&service, &settings, None, None);
    let handle =
        triage_gateway::start(Gateway::new(service, &settings)?, "127.0.0.1:0".parse()?).await?;
    let url = format!("http://{}/v1", handle.addr);
    std::mem::forget(handle); // serves until the process ends
    Ok((url, background))
}

fn body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream})
}

async fn chosen_model(
    client: &reqwest::Client,
    gateway: &str,
    prompt: &str,
) -> anyhow::Result<String> {
    let r = client
        .post(format!("{gateway}/chat/completions"))
        .json(&body("triage", prompt, false))
        .send()
        .await?;
    Ok(r.headers()
        .get("x-triage-model")
        .context("x-triage-model")?
        .to_str()?
        .to_owned())
}

/// A `NAME;dur=` of a Server-Timing header, µs.
fn timing_us(r: &reqwest::Response, name: &str) -> f64 {
    let prefix = format!("{name};dur=");
    r.headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(", ").find_map(|p| p.strip_prefix(prefix.as_str())))
        .and_then(|ms| ms.parse::<f64>().ok())
        .map_or(0.0, |ms| ms * 1e3)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One call's times, µs.
#[derive(Clone, Copy)]
struct Timed {
    /// To the response's headers.
    headers: f64,
    first_chunk: f64,
    total: f64,
    /// From the gateway's Server-Timing (0 for direct calls).
    encoder: f64,
    policy: f64,
    route: f64,
    upstream: f64,
}

/// One call, timed to its first body chunk and to its end.
async fn timed(c: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Timed> {
    let t = Instant::now();
    let mut r = c.post(url).json(body).send().await?;
    let headers = t.elapsed().as_secs_f64() * 1e6;
    let (encoder, policy, route, upstream) = (
        timing_us(&r, "encoder"),
        timing_us(&r, "policy"),
        timing_us(&r, "route"),
        timing_us(&r, "upstream"),
    );
    r.chunk().await?;
    let first_chunk = t.elapsed().as_secs_f64() * 1e6;
    while r.chunk().await?.is_some() {}
    let total = t.elapsed().as_secs_f64() * 1e6;
    Ok(Timed {
        headers,
        first_chunk,
        total,
        encoder,
        policy,
        route,
        upstream,
    })
}

/// One figure's two sides: the upstream called directly, and the gateway with `model` named
/// (`named`) or `model="triage"` (which routes to `model`).
struct Pair<'a> {
    gateway: &'a str,
    upstream: &'a str,
    model: &'a str,
    named: bool,
    stream: bool,
}

/// Interleaved pairs of direct and gateway calls, each pair on a new prompt: the gateway's cost
/// beyond the upstream (and the encoder, when it routes), to the whole answer (non-streaming)
/// or to the first chunk (streaming).
async fn compare(
    c: &reqwest::Client,
    pair: &Pair<'_>,
    prompt: &str,
    calls: usize,
) -> anyhow::Result<()> {
    let (mut over, mut gw, mut direct, mut enc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut decide, mut leg, mut policy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gw_headers, mut direct_headers) = (Vec::new(), Vec::new());
    let pick = |t: Timed| if pair.stream { t.first_chunk } else { t.total };
    let asked = if pair.named { pair.model } else { "triage" };
    for i in 0..calls + 20 {
        let prompt = format!("{prompt} (case {i})");
        let d = timed(
            c,
            &format!("{}/chat/completions", pair.upstream),
            &body(pair.model, &prompt, pair.stream),
        )
        .await?;
        let g = timed(
            c,
            &format!("{}/chat/completions", pair.gateway),
            &body(asked, &prompt, pair.stream),
        )
        .await?;
        if i >= 20 {
            over.push(pick(g) - g.encoder - pick(d));
            gw.push(pick(g));
            direct.push(pick(d));
            enc.push(g.encoder);
            decide.push(g.route - g.encoder);
            policy.push(g.policy);
            gw_headers.push(g.headers);
            direct_headers.push(d.headers);
            leg.push(g.upstream);
        }
    }
    let what = match (pair.stream, pair.named) {
        (false, true) => "model named, non-streaming, whole answer",
        (false, false) => "model=\"triage\", non-streaming, whole answer",
        (true, true) => "model named, streaming, time to first chunk",
        (true, false) => "model=\"triage\", streaming, time to first chunk",
    };
    let overhead = if pair.named {
        "OVERHEAD (gw − direct)"
    } else {
        "OVERHEAD (gw − enc − direct)"
    };
    println!("{what}, µs");
    println!("  {:<34} {:>9} {:>9}", "", "p50", "p99");
    for (name, v) in [
        ("gateway end-to-end", &mut gw),
        ("  its response headers", &mut gw_headers),
        ("its encoder stage", &mut enc),
        ("  route beyond the encoder", &mut decide),
        ("    of which the engine's decision", &mut policy),
        ("  upstream leg, from the gateway", &mut leg),
        ("upstream directly", &mut direct),
        ("  its response headers", &mut direct_headers),
        (overhead, &mut over),
    ] {
        println!("  {name:<34} {:>9.0} {:>9.0}", pct(v, 0.5), pct(v, 0.99));
    }
    println!();
    Ok(())
}

/// Interleaved pairs of a direct call and a `triage-verify` call whose drafts agree: what
/// verifying adds beyond the encoder and one round trip to the upstream.
async fn verify_overhead(
    c: &reqwest::Client,
    gateway: &str,
    upstream: &str,
    prompt: &str,
    calls: usize,
) -> anyhow::Result<()> {
    let verify = body("triage-verify", prompt, false);
    let r = c
        .post(format!("{gateway}/chat/completions"))
        .json(&verify)
        .send()
        .await?;
    let drafts: Vec<String> = r
        .headers()
        .get("x-triage-drafts")
        .context("the bundled policy plans drafts for triage-verify")?
        .to_str()?
        .split(',')
        .map(str::to_owned)
        .collect();
    let answers: Vec<Value> = drafts
        .iter()
        .map(|m| json!({"model": m, "prompt": prompt, "text": "6 * 7 = 42.\nThe answer is 42."}))
        .collect();
    c.post(format!("{}/_record", upstream.trim_end_matches("/v1")))
        .json(&json!({"answers": answers}))
        .send()
        .await?
        .error_for_status()?;
    let (mut over, mut accepted) = (Vec::new(), 0usize);
    for i in 0..calls + 20 {
        let d = timed(
            c,
            &format!("{upstream}/chat/completions"),
            &body(&drafts[0], prompt, false),
        )
        .await?;
        let t = Instant::now();
        let r = c
            .post(format!("{gateway}/chat/completions"))
            .json(&verify)
            .send()
            .await?;
        let encoder = timing_us(&r, "encoder");
        let verdict = r
            .headers()
            .get("x-triage-verdict")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            == "accepted";
        r.bytes().await?;
        let total = t.elapsed().as_secs_f64() * 1e6;
        if i >= 20 {
            over.push(total - encoder - d.total);
            accepted += usize::from(verdict);
        }
    }
    println!(
        "triage-verify, drafts {} agreeing ({accepted} of {calls} accepted), µs   p50       p99",
        drafts.join(" + ")
    );
    println!(
        "  {:<30} {:>9.0} {:>9.0}\n",
        "OVERHEAD (gw − enc − direct)",
        pct(&mut over, 0.5),
        pct(&mut over, 0.99)
    );
    Ok(())
}

/// `VmRSS` (KiB) and `Threads` of this process.
fn rss_and_threads() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Waves of `streams` concurrent streams: each with its own prompt (the encoder bounds how
/// many get going per second), or all with one prompt, as agents and retries resend (the
/// exact-repeat cache answers all but the first, so all are in flight at once).
async fn concurrency(
    gateway: &str,
    streams: usize,
    waves: usize,
    repeated: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(streams)
        .build()?;
    let (rss, threads) = rss_and_threads();
    let kind = if repeated {
        "one repeated prompt"
    } else {
        "a new prompt each"
    };
    println!("concurrency: {streams} streams per wave, {kind}, upstream answers over ~1 s");
    println!("  before          rss {:>7} KiB  threads {threads}", rss);
    for wave in 1..=waves {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(streams);
        for i in 0..streams {
            let (client, url) = (client.clone(), format!("{gateway}/chat/completions"));
            let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
            tasks.push(tokio::spawn(async move {
                let prompt = format!(
                    "Question {i} of wave {wave}: {}",
                    triage_benches::prompt_of(12)
                );
                let mut r = client
                    .post(url)
                    .json(&body("triage", &prompt, true))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "status {}", r.status());
                r.chunk().await?;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                while r.chunk().await?.is_some() {}
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }));
        }
        let mut sampled = (0, 0);
        let sampler = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (r, t) = rss_and_threads();
                sampled = (sampled.0.max(r), sampled.1.max(t));
            }
        };
        let done = futures::future::join_all(tasks);
        let results = tokio::select! { r = done => r, () = sampler => unreachable!() };
        let failed = results.iter().filter(|r| !matches!(r, Ok(Ok(())))).count();
        let (rss, threads) = rss_and_threads();
        println!(
            "  wave {wave}: {:.1} s, peak in flight {:>5}, failed {failed}, peak rss {:>7} KiB, peak threads {}, after: rss {:>7} KiB threads {threads}",
            started.elapsed().as_secs_f64(),
            peak.load(Ordering::SeqCst),
            sampled.0,
            sampled.1,
            rss
        );
    }
    Ok(())
}
