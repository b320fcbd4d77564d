//! Log compaction end to end: a real `triage serve` with small segments compacts them into
//! Parquet archives by itself; after a SIGKILL and a restart the server still knows every
//! archived decision and report, and `triage train --from-log` counts the same log.

#![cfg(unix)]

use std::path::Path;
use std::time::Duration;

use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{FeedbackRequest, Message, RouteRequest};

mod common;

use common::{spawn_server, triage};

/// Segments of a few records, compacted as soon as two are sealed.
const ENV: &[(&str, &str)] = &[
    ("TRIAGE_LOG__SEGMENT_BYTES", "8000"),
    ("TRIAGE_LOG__COMPACT_AFTER_SEGMENTS", "2"),
    ("TRIAGE_LOG__COMPACT_INTERVAL_MS", "100"),
];

fn report(request_id: &str, feedback_id: &str, model: &str, quality: f64) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.into(),
        feedback_id: feedback_id.into(),
        model: model.into(),
        quality: Some(quality),
        output_tokens: 10,
        cost_usd: 0.0001,
        ..Default::default()
    }
}

fn names(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("lists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_compacts_its_log_and_still_knows_it_after_a_crash() {
    let data = tempfile::tempdir().expect("tempdir");
    let (mut child, url) = spawn_server(data.path(), ENV);
    let mut client = RouterClient::connect(url).await.expect("connects");
    let mut routed = Vec::new();
    for i in 0..24 {
        let r = client
            .route(RouteRequest {
                messages: vec![Message {
                    role: "user".into(),
                    content: format!("Question {i}: what is {i} times 7?"),
                }],
                ..Default::default()
            })
            .await
            .expect("routes")
            .into_inner();
        client
            .feedback(report(&r.request_id, &format!("f{i}"), &r.model, 0.5))
            .await
            .expect("feedback taken");
        routed.push((r.request_id, r.model));
    }
    // The server compacts by itself once two sealed segments wait.
    let mut waited = 0;
    while names(data.path(), "archive-").is_empty() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(
        !names(data.path(), "archive-").is_empty(),
        "no archive after 10 s: {:?}",
        names(data.path(), "")
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let (mut child, url) = spawn_server(data.path(), ENV);
    let mut client = RouterClient::connect(url).await.expect("reconnects");
    let (first_id, first_model) = &routed[0];
    // The first decision and its report now live in an archive: a retry is still recognised
    // (acknowledged, not stored again), a different report under its id is refused, and new
    // feedback on the archived request is taken.
    client
        .feedback(report(first_id, "f0", first_model, 0.5))
        .await
        .expect("a retry of an archived report is acknowledged");
    let conflict = client
        .feedback(report(first_id, "f0", first_model, 0.9))
        .await
        .expect_err("a different report under an archived feedback_id");
    assert!(conflict.message().contains("f0"), "{conflict:?}");
    client
        .feedback(report(first_id, "late", first_model, 1.0))
        .await
        .expect("feedback on an archived request");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let dir = data.path().to_str().expect("utf-8 path");
    let manual = triage(&["log", "compact", "--data-dir", dir, "--json"]);
    let manual: serde_json::Value = serde_json::from_str(&manual).expect("json report");
    assert!(manual["segments"].as_u64().is_some(), "{manual}");
    let counts = triage(&["train", "--from-log", dir, "--dry-run", "--json"]);
    let counts: serde_json::Value = serde_json::from_str(&counts).expect("json counts");
    assert_eq!(counts["decisions"], 24, "{counts}");
    assert_eq!(counts["feedback"], 25, "{counts}");
    assert_eq!(counts["outcomes"], 24, "{counts}");
}
