//! Acknowledged feedback per second over gRPC from 32 concurrent clients, through the embedded
//! file log and through the PostgreSQL store, in the same run on the same machine (the server,
//! the clients and the database share its cores). A report counts once `Feedback` answered:
//! fsynced by the file log, committed by PostgreSQL.
//!
//!     cargo run --release -p triage-benches --bin feedback_load -- [--seconds S] [--clients N]
//!
//! PostgreSQL is a throwaway cluster (`triage_testkit::postgres`, Debian's `postgresql`
//! package); without it only the file log is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use triage_core::Settings;
use triage_core::config::LogBackend;
use triage_proto::v1::FeedbackRequest;
use triage_proto::v1::router_client::RouterClient;
use triage_server::RoutingEngine;
use triage_testkit::postgres::PgCluster;

/// Decisions the reports refer to: enough that a request keeps within the
/// `MAX_REPORTS_PER_REQUEST` reports it may take over a 10-second run.
const DECISIONS: usize = 16_384;

/// Distinct prompts among them (the rest are exact repeats, routed from the encoder's cache).
const PROMPTS: usize = 256;

struct Measured {
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Starts a server on `settings`, routes [`DECISIONS`] requests, then streams reports on them
/// from `clients` callers for `seconds`.
async fn measure(settings: &Settings, clients: usize, seconds: f64) -> anyhow::Result<Measured> {
    let engine = RoutingEngine::from_settings(settings, &triage_benches::root())?;
    let server = triage_server::start(engine, settings, "127.0.0.1:0".parse()?).await?;
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await
        .context("connect")?;
    let client = RouterClient::new(channel);
    let mut routed = Vec::with_capacity(DECISIONS);
    for i in 0..DECISIONS {
        let r = client
            .clone()
            .route(triage_benches::case_request(i, PROMPTS))
            .await?
            .into_inner();
        routed.push((r.request_id, r.model));
    }
    let routed = Arc::new(routed);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    for c in 0..clients {
        let (client, routed, stop, errors, latencies) = (
            client.clone(),
            routed.clone(),
            stop.clone(),
            errors.clone(),
            latencies.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (request_id, model) = &routed[(c * 7919 + n) % routed.len()];
                let started = Instant::now();
                let sent = client
                    .clone()
                    .feedback(FeedbackRequest {
                        request_id: request_id.clone(),
                        feedback_id: format!("c{c}-{n}"),
                        model: model.clone(),
                        quality: Some(1.0),
                        output_tokens: 100,
                        cost_usd: 0.0001,
                        ..Default::default()
                    })
                    .await;
                match sent {
                    Ok(_) => mine.push(started.elapsed().as_micros() as u64),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            latencies.lock().await.extend(mine);
        }));
    }
    let window = Duration::from_secs_f64(seconds);
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await?;
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort_unstable();
    server.shutdown().await?;
    Ok(Measured {
        per_second: latencies.len() as f64 / window.as_secs_f64(),
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        errors: errors.load(Ordering::Relaxed),
    })
}

fn show(what: &str, m: &Measured) {
    println!(
        "{what:<22} {:>8.0} acknowledged reports/s   p50 {:>6} us   p99 {:>7} us   errors {}",
        m.per_second, m.p50_us, m.p99_us, m.errors
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = triage_benches::flag("--seconds")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(10.0);
    let clients: usize = triage_benches::flag("--clients")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(32);
    let mut settings = Settings::load(None)?;
    let scratch = tempfile_dir()?;
    settings.log.dir = scratch.join("log");
    settings.log.compact_after_segments = 0;
    println!("feedback over gRPC, {clients} concurrent clients, {seconds} s per store");
    let file = measure(&settings, clients, seconds).await?;
    show("file log (fsync)", &file);
    let Some(cluster) = PgCluster::start() else {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    };
    settings.log.backend = LogBackend::Postgres;
    settings.log.url = Some(cluster.url());
    let pg = measure(&settings, clients, seconds).await?;
    show("PostgreSQL (commit)", &pg);
    println!(
        "PostgreSQL / file log: {:.2}x the acknowledged rate",
        pg.per_second / file.per_second.max(1.0)
    );
    let written = decision_write_rate(&cluster.url(), 20_000).await?;
    println!("PostgreSQL decision writes (the store alone, no encoder): {written:.0} decisions/s");
    storage_per_row(&cluster.url()).await?;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Decisions a store writes per second, queued as fast as it takes them (what the database
/// sustains, apart from the encoder that bounds a replica).
async fn decision_write_rate(url: &str, n: usize) -> anyhow::Result<f64> {
    use triage_log::EventStore;
    let store = triage_postgres::PgEventStore::connect(&triage_postgres::PgOptions {
        url: url.to_owned(),
        pool_size: 4,
        queue_capacity: 65_536,
        retention_days: 35,
    })
    .await?;
    let template = triage_benches::sample_decision();
    let started = Instant::now();
    for _ in 0..n {
        let mut d = template.clone();
        d.request_id = uuid::Uuid::now_v7().to_string();
        loop {
            match store.record_decision(d.clone()) {
                Ok(_) => break,
                Err(triage_log::LogError::Full) => tokio::task::yield_now().await,
                Err(e) => return Err(e.into()),
            }
        }
    }
    store.close().await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// What a decision and a report take in the database (table, indexes and TOAST together).
async fn storage_per_row(url: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for table in ["decisions", "feedback"] {
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {table}),
                            (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::int8
                               FROM pg_inherits WHERE inhparent = '{table}'::regclass)"
                ),
                &[],
            )
            .await?;
        let (rows, bytes): (i64, i64) = (row.get(0), row.get(1));
        println!(
            "PostgreSQL {table}: {rows} rows, {:.0} bytes a row on disk",
            bytes as f64 / rows.max(1) as f64
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("triage-feedback-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
