//! Two real `triage serve` replicas on one throwaway PostgreSQL database: reports reach either
//! replica, one replica is SIGKILLed mid-stream, the database restarts under load, and every
//! acknowledged report is in the database exactly once; a key's daily budget holds across both.

#![cfg(unix)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use triage_proto::v1::router_client::RouterClient;
use triage_testkit::postgres::PgCluster;

mod common;

use common::{report, route_request};

const LOAD_KEY: &str = "load-secret";
const TEAM_KEY: &str = "team-secret";
const TEAM_DAILY_USD: f64 = 0.02;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("replica.toml");
    let hash = |k: &str| triage_guard::hash_key(k);
    std::fs::write(
        &path,
        format!(
            "[log]\nbackend = \"postgres\"\n\n\
             [[auth.keys]]\nname = \"load\"\nsha256 = \"{}\"\n\n\
             [[auth.keys]]\nname = \"team\"\nsha256 = \"{}\"\ndaily_usd = {TEAM_DAILY_USD}\n",
            hash(LOAD_KEY),
            hash(TEAM_KEY)
        ),
    )
    .expect("config written");
    path
}

/// A replica: its own data directory (unused by the store), the shared database from the
/// environment (`TRIAGE_LOG__URL`, as a deployment keeps its password out of files).
fn replica(
    dir: &std::path::Path,
    config: &std::path::Path,
    url: &str,
) -> (std::process::Child, String) {
    common::spawn_with_config(dir, config, &[("TRIAGE_LOG__URL", url)])
}

fn with_key<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii"),
    );
    request
}

async fn health(url: &str) -> Option<i32> {
    let channel = Channel::from_shared(url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(answer.into_inner().status)
}

async fn wait_for_health(url: &str, wanted: ServingStatus) {
    for _ in 0..150 {
        if health(url).await == Some(wanted as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never reported {wanted:?}");
}

/// Every feedback id in the database with how many rows it has.
async fn stored_feedback(url: &str) -> HashMap<String, i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("test connects");
    tokio::spawn(connection);
    client
        .query(
            "SELECT feedback_id, count(*) FROM feedback GROUP BY feedback_id",
            &[],
        )
        .await
        .expect("reads")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lose_no_acknowledged_report_through_a_kill_and_a_database_restart() {
    let Some(mut cluster) = PgCluster::start() else {
        return;
    };
    let url = cluster.url();
    let dirs = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let config = config(dirs.0.path());
    let (mut a, a_url) = replica(dirs.0.path(), &config, &url);
    let (mut b, b_url) = replica(dirs.1.path(), &config, &url);
    let router_a = RouterClient::connect(a_url.clone()).await.expect("a");
    let router_b = RouterClient::connect(b_url.clone()).await.expect("b");

    // Routed on A; reported on B (and A): each replica checks against the shared decisions.
    let mut routed = Vec::new();
    // Enough requests that the reports stay within MAX_REPORTS_PER_REQUEST on each.
    for i in 0..64 {
        let r = router_a
            .clone()
            .route(with_key(LOAD_KEY, route_request(i)))
            .await
            .expect("routes")
            .into_inner();
        routed.push((r.request_id, r.model));
    }
    let first = router_b
        .clone()
        .feedback(with_key(
            LOAD_KEY,
            report(&routed[0].0, "first", &routed[0].1),
        ))
        .await
        .expect("B takes a report on A's decision")
        .into_inner();
    assert!(!first.duplicate);

    let routed = Arc::new(routed);
    let acked = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let clients = [router_a.clone(), router_b.clone()];
        let (routed, acked, stop) = (routed.clone(), acked.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut b_alive = true;
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let pick = usize::from(b_alive && n % 2 == 1);
                let which = n % routed.len();
                let (request_id, model) = &routed[which];
                let feedback_id = format!("w{worker}-{n}");
                let sent = clients[pick]
                    .clone()
                    .feedback(with_key(LOAD_KEY, report(request_id, &feedback_id, model)))
                    .await;
                match sent {
                    Ok(_) => acked.lock().expect("lock").push((which, feedback_id)),
                    // B was killed: this one was never acknowledged; go on with A.
                    Err(_) if pick == 1 => b_alive = false,
                    // The database is restarting: not acknowledged, not counted.
                    Err(s) => {
                        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let count = || acked.lock().expect("lock").len();
    let wait_for = |n: usize| async move {
        for _ in 0..600 {
            if count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("only {} reports acknowledged", count());
    };
    wait_for(200).await;
    b.kill().expect("SIGKILL B mid-stream");
    b.wait().expect("reaped");
    wait_for(count() + 100).await;

    // The database goes away under load: reports are refused, routing goes on, health says so.
    cluster.stop();
    wait_for_health(&a_url, ServingStatus::NotServing).await;
    let during = router_a
        .clone()
        .route(with_key(LOAD_KEY, route_request(99)))
        .await
        .expect("routing goes on while decisions fit the buffer")
        .into_inner();
    cluster.resume();
    wait_for_health(&a_url, ServingStatus::Serving).await;
    let before_restart = count();
    wait_for(before_restart + 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    // The decision routed during the outage was written when the database came back.
    let late = router_a
        .clone()
        .feedback(with_key(
            LOAD_KEY,
            report(&during.request_id, "late", &during.model),
        ))
        .await
        .expect("its decision was kept through the outage")
        .into_inner();
    assert!(!late.duplicate);

    let acked = acked.lock().expect("lock").clone();
    let stored = stored_feedback(&url).await;
    for (_, id) in &acked {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "acknowledged {id} stored {:?} times",
            stored.get(id)
        );
    }
    eprintln!(
        "{} reports acknowledged across two replicas, a SIGKILL and a database restart; all \
         stored exactly once",
        acked.len()
    );
    // A retry of any acknowledged report, at the surviving replica, is a duplicate.
    for (which, id) in acked.iter().take(20) {
        let (request_id, model) = &routed[*which];
        let retry = router_a
            .clone()
            .feedback(with_key(LOAD_KEY, report(request_id, id, model)))
            .await
            .expect("retry taken")
            .into_inner();
        assert!(retry.duplicate, "{id} counted twice");
    }

    // A key's daily budget holds across replicas: concurrent traffic to A and a restarted B.
    let (mut b, b_url) = replica(dirs.1.path(), &config, &url);
    let router_b = RouterClient::connect(b_url).await.expect("b again");
    let mut racing = Vec::new();
    for i in 0..60 {
        let client = if i % 2 == 0 {
            router_a.clone()
        } else {
            router_b.clone()
        };
        racing.push(tokio::spawn(async move {
            client
                .clone()
                .route(with_key(TEAM_KEY, route_request(1000 + i)))
                .await
        }));
    }
    let (mut charged, mut largest, mut refused) = (0.0, 0.0f64, 0);
    for r in racing {
        match r.await.expect("task") {
            Ok(r) => {
                let r = r.into_inner();
                let cost = r
                    .candidates
                    .iter()
                    .find(|c| c.model == r.model)
                    .map_or(0.0, |c| c.predicted_cost_usd);
                charged += cost;
                largest = largest.max(cost);
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the traffic was meant to pass the limit");
    assert!(
        charged <= TEAM_DAILY_USD + largest + 1e-9,
        "charged {charged} against a limit of {TEAM_DAILY_USD} (largest request {largest})"
    );
    eprintln!(
        "team key: ${charged:.5} charged of ${TEAM_DAILY_USD} across two replicas; {refused} refused"
    );
    for child in [&mut a, &mut b] {
        child.kill().expect("stop");
        child.wait().expect("reaped");
    }

    // Training and export read every replica's records from the database.
    let counts: serde_json::Value = serde_json::from_str(&common::triage(&[
        "train",
        "--from-log",
        &url,
        "--dry-run",
        "--json",
    ]))
    .expect("JSON");
    // Every acknowledged report, "first" and "late"; at most one more per client: a report
    // committed whose answer the kill or the outage cut off (never acknowledged, rightly).
    let reports = (acked.len() + 2) as u64;
    let counted = counts["feedback"].as_u64().unwrap_or_default();
    assert!(
        (reports..=reports + 4).contains(&counted),
        "{counts} vs {reports} acknowledged"
    );
    assert!(
        counts["decisions"].as_u64().is_some_and(|d| d >= 17),
        "{counts}"
    );
    let tables = tempfile::tempdir().expect("dir");
    let out = tables.path().join("t");
    let exported: serde_json::Value = serde_json::from_str(&common::triage(&[
        "log",
        "export",
        "--from-log",
        &url,
        "--to",
        &out.to_string_lossy(),
        "--json",
    ]))
    .expect("JSON");
    assert_eq!(exported["feedback"].as_u64(), Some(counted), "{exported}");
    assert!(out.join("decisions.parquet").is_file());
}
