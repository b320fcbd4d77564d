//! Feedback over gRPC against the real server: validation, idempotency, durability, and what the
//! decision log keeps.

mod common;

use common::{FRANCE, request, settings, start_with};
use tonic::Code;
use triage_log::{LogRecord, decode_features, read_log};
use triage_proto::v1::{ErrorKind, FeedbackRequest, Preferences};

fn report(request_id: &str, feedback_id: &str, model: &str, quality: f64) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.into(),
        feedback_id: feedback_id.into(),
        model: model.into(),
        quality: Some(quality),
        input_tokens: 12,
        output_tokens: 30,
        cost_usd: 0.0002,
        latency_ms: 800,
        error: ErrorKind::ErrorUnspecified as i32,
        retry_after_ms: None,
    }
}

#[tokio::test]
async fn feedback_is_validated_stored_once_and_joined_to_its_decision() {
    let s = settings();
    let dir = s.log.dir.clone();
    let (server, mut client) = start_with(s).await;
    let routed = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    let id = routed.request_id.clone();
    assert_eq!(routed.propensity, 1.0);
    assert!(!routed.explored);

    let first = client
        .feedback(report(&id, "fb-1", &routed.model, 1.0))
        .await
        .expect("stored")
        .into_inner();
    assert!(!first.duplicate);
    let retry = client
        .feedback(report(&id, "fb-1", &routed.model, 1.0))
        .await
        .expect("retry acknowledged")
        .into_inner();
    assert!(retry.duplicate);

    // A fallback model from the candidate list is fine.
    let fallback = &routed.candidates[1].model;
    let mut failed = report(&id, "fb-2", fallback, 0.0);
    failed.quality = None;
    failed.error = ErrorKind::ErrorRateLimited as i32;
    client.feedback(failed).await.expect("error report stored");

    let cases = [
        (
            report("no-such-request", "fb-3", &routed.model, 1.0),
            Code::NotFound,
            "request_id",
        ),
        (
            report(&id, "fb-1", &routed.model, 0.0),
            Code::AlreadyExists,
            "fb-1",
        ),
        (
            report(&id, "fb-4", &routed.model, 1.5),
            Code::InvalidArgument,
            "quality",
        ),
        (
            report(&id, "fb-4", &routed.model, f64::NAN),
            Code::InvalidArgument,
            "quality",
        ),
        (
            report(&id, "", &routed.model, 1.0),
            Code::InvalidArgument,
            "feedback_id",
        ),
        (
            report("", "fb-4", &routed.model, 1.0),
            Code::InvalidArgument,
            "request_id",
        ),
        (
            report(&"r".repeat(100_000), "fb-4", &routed.model, 1.0),
            Code::InvalidArgument,
            "request_id",
        ),
        (
            report(&id, "fb-4", &"m".repeat(100_000), 1.0),
            Code::InvalidArgument,
            "model",
        ),
        (
            report(&id, "fb-4", "gpt-99", 1.0),
            Code::InvalidArgument,
            "gpt-99",
        ),
        (
            FeedbackRequest {
                cost_usd: -1.0,
                ..report(&id, "fb-4", &routed.model, 1.0)
            },
            Code::InvalidArgument,
            "cost_usd",
        ),
        (
            FeedbackRequest {
                cost_usd: 1e308,
                ..report(&id, "fb-4", &routed.model, 1.0)
            },
            Code::InvalidArgument,
            "max_reported_cost_usd",
        ),
        (
            FeedbackRequest {
                error: 42,
                ..report(&id, "fb-4", &routed.model, 1.0)
            },
            Code::InvalidArgument,
            "ERROR_RATE_LIMITED",
        ),
    ];
    for (bad, code, mentions) in cases {
        let status = client.feedback(bad).await.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(mentions), "{status:?}");
        assert!(status.message().len() < 600, "echoes too much: {status:?}");
    }
    server.shutdown().await.expect("clean shutdown");

    let (records, report) = read_log(&dir).expect("log reads");
    assert_eq!(report.torn_bytes, 0);
    let decisions: Vec<_> = records.iter().filter_map(LogRecord::as_decision).collect();
    let feedback: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Feedback(f) => Some(f),
            LogRecord::Decision(_) | LogRecord::Verification(_) => None,
        })
        .collect();
    assert_eq!(decisions.len(), 1);
    let d = decisions[0];
    assert_eq!(d.request_id, id);
    assert_eq!(d.chosen, routed.model);
    assert_eq!(d.policy_version, routed.policy_version);
    assert_eq!(d.candidates.len(), routed.candidates.len());
    assert_eq!(d.knob, "balanced");
    assert_eq!(d.prompt, None, "prompts are not stored by default");
    let features = decode_features(&d.features).expect("features decode");
    assert_eq!(
        features.len(),
        384 + triage_core::features::HAND_FEATURE_NAMES.len()
    );
    let ids: Vec<&str> = feedback.iter().map(|f| f.feedback_id.as_str()).collect();
    assert_eq!(ids, ["fb-1", "fb-2"]);
}

#[tokio::test]
async fn prompts_are_logged_only_when_configured() {
    let mut s = settings();
    s.log.store_prompts = true;
    let dir = s.log.dir.clone();
    let (server, mut client) = start_with(s).await;
    client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes");
    server.shutdown().await.expect("clean shutdown");
    let (records, _) = read_log(&dir).expect("log reads");
    assert!(matches!(&records[0], LogRecord::Decision(d) if d.prompt.as_deref() == Some(FRANCE)));
}
