//! The gateway records its own feedback durably: N chat completions through a real
//! `triage serve`, one quality score over gRPC (acknowledged once durable, which makes every
//! record queued before it durable too), then SIGKILL; `train --from-log` counts N decisions
//! and at least N feedback records, and the score joined its decision.

#![cfg(unix)]

use triage_proto::v1::FeedbackRequest;
use triage_proto::v1::router_client::RouterClient;
use triage_testkit::{Behaviour, LocalUpstream};

mod common;

use common::{dry_run_counts, providers_at, spawn_with_gateway};

const CALLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_calls_survive_sigkill_with_their_feedback() {
    let upstream = LocalUpstream::start(Behaviour::default())
        .await
        .expect("upstream");
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("triage.toml");
    std::fs::write(&config, providers_at(&upstream.base_url())).expect("config written");
    let log = data.path().join("log");
    let (mut child, grpc, http) = spawn_with_gateway(&log, &config);

    let client = reqwest::Client::new();
    let mut last = None;
    for i in 0..CALLS {
        let stream = i % 2 == 1;
        let r = client
            .post(format!("{http}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "triage",
                "messages": [{"role": "user", "content": format!("What is {i} times 7?")}],
                "stream": stream,
            }))
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-triage-request-id"]
            .to_str()
            .expect("id")
            .to_owned();
        let model = r.headers()["x-triage-model"]
            .to_str()
            .expect("model")
            .to_owned();
        let body = r.text().await.expect("body");
        assert!(!stream || body.ends_with("data: [DONE]\n\n"), "{body}");
        last = Some((id, model));
    }
    let (request_id, model) = last.expect("answered");
    let mut grpc = RouterClient::connect(grpc).await.expect("gRPC connects");
    let ack = grpc
        .feedback(FeedbackRequest {
            request_id,
            feedback_id: "score".into(),
            model,
            quality: Some(1.0),
            ..Default::default()
        })
        .await
        .expect("the gRPC door takes a score for a gateway request")
        .into_inner();
    assert!(!ack.duplicate);

    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let counts = dry_run_counts(&log);
    assert_eq!(counts["decisions"], CALLS, "{counts}");
    assert!(
        counts["feedback"].as_u64() >= Some(CALLS as u64 + 1),
        "{counts}"
    );
    assert_eq!(counts["outcomes"], 1, "the one scored answer: {counts}");
}
