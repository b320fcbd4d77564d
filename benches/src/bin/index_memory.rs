//! Memory under sustained traffic: a million decisions (or `--requests N`) through one gRPC
//! server with the file log, exact repeats of a few prompts so that the encoder's cache makes
//! them fast. Prints the process's resident memory as the decisions go by, the decisions the
//! log's index holds against its bound (`--index-mib`, `log.index_max_bytes`), and whether a
//! report on the oldest request the index still holds is taken while one on the first request
//! is refused as evicted.
//!
//!     cargo run --release -p triage-benches --bin index_memory -- [--requests N] [--index-mib M]
//!
//! The server, the clients and the log writer share the machine's cores; the bench's own memory
//! is allocated before the first sample (a fixed ring of recent request ids).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use triage_core::Settings;
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{FeedbackRequest, RouteResponse};
use triage_server::RoutingEngine;

/// Concurrent clients.
const CLIENTS: usize = 16;
/// Distinct prompts (every other request is an exact repeat, answered from the cache).
const PROMPTS: usize = 64;
/// Recent requests the bench remembers (allocated up front, 32 bytes each, so that the bench's
/// own memory is flat from the start).
const RING: usize = 800_000;

/// Resident memory of this process, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn report(request_id: &str, model: &str, id: &str) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.to_owned(),
        feedback_id: id.to_owned(),
        model: model.to_owned(),
        quality: Some(1.0),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = triage_benches::flag("--requests")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(1_000_000);
    let index_mib: usize = triage_benches::flag("--index-mib")
        .map_err(anyhow::Error::msg)?
        .unwrap_or(64);
    let scratch = std::env::temp_dir().join(format!("triage-index-memory-{}", std::process::id()));
    let mut settings = Settings::load(None)?;
    settings.log.dir = scratch.join("log");
    settings.log.compact_after_segments = 0;
    settings.log.index_max_bytes = index_mib * 1024 * 1024;
    let engine = RoutingEngine::from_settings(&settings, &triage_benches::root())?;
    let server = triage_server::start(engine, &settings, "127.0.0.1:0".parse()?).await?;
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await
        .context("connect")?;
    let client = RouterClient::new(channel);
    let ring: Arc<Mutex<Recent>> = Arc::new(Mutex::new(Recent {
        routed: VecDeque::with_capacity(RING),
        models: Vec::new(),
    }));
    let first: Arc<Mutex<Option<(String, String)>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    println!(
        "{requests} decisions over gRPC, {CLIENTS} clients, {PROMPTS} distinct prompts, \
         log.index_max_bytes = {index_mib} MiB"
    );
    println!("{:>10} {:>9} {:>10}", "decisions", "RSS MiB", "routes/s");
    let started = Instant::now();
    let mut last = (Instant::now(), 0usize);
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (client, ring, first, next) =
            (client.clone(), ring.clone(), first.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, tonic::Status>(());
                }
                let r: RouteResponse = loop {
                    match client
                        .clone()
                        .route(triage_benches::case_request(i, PROMPTS))
                        .await
                    {
                        Ok(r) => break r.into_inner(),
                        // Shed load (the encoder's queue): back off and retry, as a client would.
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        Err(s) => return Err(s),
                    }
                };
                if i == 0 {
                    *first.lock().await = Some((r.request_id.clone(), r.model.clone()));
                }
                ring.lock().await.push(&r.request_id, &r.model);
            }
        }));
    }
    let step = (requests / 20).max(1);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let done = next.load(Ordering::Relaxed).min(requests);
        if done >= last.1 + step || done >= requests {
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            println!("{done:>10} {:>9.1} {rate:>10.0}", rss_mib());
            last = (Instant::now(), done);
        }
        if done >= requests {
            break;
        }
    }
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{requests} decisions in {elapsed:.1} s ({:.0}/s); RSS at the end {:.1} MiB",
        requests as f64 / elapsed,
        rss_mib()
    );
    late_reports(client, &ring, &first).await?;
    server.shutdown().await?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Recent requests, compactly: (request id, index of its model).
struct Recent {
    routed: VecDeque<(u128, u16)>,
    models: Vec<String>,
}

impl Recent {
    fn push(&mut self, request_id: &str, model: &str) {
        let Ok(id) = uuid::Uuid::parse_str(request_id) else {
            return;
        };
        let m = match self.models.iter().position(|m| m == model) {
            Some(m) => m,
            None => {
                self.models.push(model.to_owned());
                self.models.len() - 1
            }
        };
        if self.routed.len() == RING {
            self.routed.pop_front();
        }
        self.routed
            .push_back((id.as_u128(), u16::try_from(m).unwrap_or(u16::MAX)));
    }

    /// The request `age` decisions before the newest: (id, model).
    fn back(&self, age: usize) -> (String, String) {
        let (id, m) = self.routed[self.routed.len() - 1 - age];
        let model = self.models.get(usize::from(m)).cloned().unwrap_or_default();
        (uuid::Uuid::from_u128(id).to_string(), model)
    }
}

/// Finds the oldest remembered request the index still takes a report on, and shows that the
/// very first request is refused as evicted.
async fn late_reports(
    client: RouterClient<Channel>,
    ring: &Mutex<Recent>,
    first: &Mutex<Option<(String, String)>>,
) -> anyhow::Result<()> {
    let recent = ring.lock().await;
    let len = recent.routed.len();
    // Bisection on a request's age: a report is taken below the oldest retained, refused above.
    let (mut taken, mut refused) = (0usize, len);
    let mut probe = len / 2;
    let mut n = 0;
    while refused - taken > len / 1000 + 1 && n < 40 {
        n += 1;
        let (id, model) = recent.back(probe);
        let sent = client
            .clone()
            .feedback(report(&id, &model, &format!("late-{n}")))
            .await;
        match sent {
            Ok(_) => taken = probe,
            Err(s) if s.code() == tonic::Code::NotFound => refused = probe,
            Err(s) => anyhow::bail!("unexpected refusal: {s}"),
        }
        probe = (taken + refused) / 2;
    }
    println!(
        "late reports: taken on a request {taken} decisions old (the oldest the index holds, \
         to within {}), refused as evicted from {refused} decisions old (the bench remembers \
         the last {len})",
        len / 1000 + 1
    );
    if let Some((id, model)) = first.lock().await.clone() {
        match client.clone().feedback(report(&id, &model, "first")).await {
            Err(s) if s.code() == tonic::Code::NotFound => {
                println!("the first request: {}", s.message())
            }
            other => println!("the first request: {other:?}"),
        }
    }
    Ok(())
}
