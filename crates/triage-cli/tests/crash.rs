//! Crash safety of the feedback log: a real `triage serve` process is killed with SIGKILL while
//! clients stream feedback; after a restart on the same data directory every acknowledged report
//! is present exactly once.

#![cfg(unix)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use triage_log::{LogRecord, read_log};
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{Message, RouteRequest};

mod common;

use common::{report, route_request, spawn_server};

/// The drain test queues long prompts on purpose: no shedding by queue wait here.
const ENV: &[(&str, &str)] = &[("TRIAGE_ENCODER__MAX_QUEUE_WAIT_MS", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_feedback_and_duplicates_none() {
    let data = tempfile::tempdir().expect("tempdir");
    let (mut child, url) = spawn_server(data.path(), ENV);
    let client = RouterClient::connect(url).await.expect("connects");

    // Route a pool of requests first, then stream feedback on them from several clients.
    let mut routed = Vec::new();
    // Enough requests that the reports stay within MAX_REPORTS_PER_REQUEST on each.
    for i in 0..64 {
        let r = client
            .clone()
            .route(route_request(i))
            .await
            .expect("routes")
            .into_inner();
        routed.push((r.request_id, r.model));
    }
    let routed = Arc::new(routed);
    let acked = Arc::new(Mutex::new(Vec::<(String, String, String)>::new()));
    let mut streams = Vec::new();
    for worker in 0..4 {
        let (mut client, routed, acked) = (client.clone(), routed.clone(), acked.clone());
        streams.push(tokio::spawn(async move {
            for n in 0.. {
                let (request_id, model) = &routed[n % routed.len()];
                let feedback_id = format!("w{worker}-{n}");
                match client
                    .feedback(report(request_id, &feedback_id, model))
                    .await
                {
                    Ok(_) => acked.lock().expect("lock").push((
                        request_id.clone(),
                        feedback_id,
                        model.clone(),
                    )),
                    // The server died mid-call: this one was never acknowledged.
                    Err(_) => break,
                }
            }
        }));
    }
    // Kill once a few hundred reports are in, while the streams are still going.
    let streaming = std::time::Instant::now();
    for _ in 0..200 {
        if acked.lock().expect("lock").len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let seconds = streaming.elapsed().as_secs_f64();
    for s in streams {
        s.await.expect("stream task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 100,
        "only {} reports before the kill",
        acked.len()
    );
    eprintln!(
        "{} reports acknowledged (each fsynced) in {seconds:.2} s by 4 clients before SIGKILL",
        acked.len()
    );

    // Restart on the same directory: recovery, then every acknowledged report exactly once.
    let (mut child, url) = spawn_server(data.path(), ENV);
    let mut client = RouterClient::connect(url).await.expect("reconnects");
    let (records, _) = read_log(data.path()).expect("log reads");
    let mut seen = HashSet::new();
    for r in &records {
        if let LogRecord::Feedback(f) = r {
            assert!(
                seen.insert(f.feedback_id.clone()),
                "{} stored twice",
                f.feedback_id
            );
        }
    }
    for (_, feedback_id, _) in &acked {
        assert!(
            seen.contains(feedback_id),
            "acknowledged {feedback_id} was lost"
        );
    }
    // Clients retry what they are unsure of: the restarted server knows every stored id.
    for (request_id, feedback_id, model) in acked.iter().take(20) {
        let retry = client
            .feedback(report(request_id, feedback_id, model))
            .await
            .expect("retry accepted")
            .into_inner();
        assert!(retry.duplicate, "{feedback_id} counted twice after restart");
    }
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_flushes_the_log() {
    let data = tempfile::tempdir().expect("tempdir");
    let (mut child, url) = spawn_server(data.path(), ENV);
    let client = RouterClient::connect(url).await.expect("connects");
    let first = client
        .clone()
        .route(route_request(0))
        .await
        .expect("routes")
        .into_inner();
    client
        .clone()
        .feedback(report(&first.request_id, "before-term", &first.model))
        .await
        .expect("stored");

    // Long prompts queue behind one encoder worker, so they are in flight when SIGTERM lands.
    let long =
        "Prove that the sum of the first n odd numbers is n squared, step by step. ".repeat(60);
    let mut in_flight = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        let text = long.clone();
        in_flight.push(tokio::spawn(async move {
            c.route(RouteRequest {
                messages: vec![Message {
                    role: "user".into(),
                    content: text,
                }],
                ..Default::default()
            })
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    for call in in_flight {
        let result = call.await.expect("task");
        assert!(
            result.is_ok(),
            "an in-flight request was dropped: {result:?}"
        );
    }
    let status = child.wait().expect("exits");
    assert!(status.success(), "exit status {status:?}");
    let (records, report) = read_log(data.path()).expect("log reads");
    assert_eq!(report.torn_bytes, 0, "the log was flushed cleanly");
    let decisions = records
        .iter()
        .filter(|r| matches!(r, LogRecord::Decision(_)))
        .count();
    assert_eq!(
        decisions, 9,
        "every routed request's decision is in the log"
    );
    assert!(
        records
            .iter()
            .any(|r| matches!(r, LogRecord::Feedback(f) if f.feedback_id == "before-term"))
    );
}
