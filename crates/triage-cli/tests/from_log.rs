//! `triage train --from-log DIR --dry-run --json` counts what a real log holds, after
//! de-duplication.

use std::process::Command;

mod common;

use common::dry_run_counts;

use triage_log::{
    DecisionRecord, ErrorKind, EventStore, FeedbackAck, FeedbackRecord, FileEventLog, LogOptions,
    LoggedCandidate, encode_features,
};

fn decision(request_id: &str) -> DecisionRecord {
    DecisionRecord {
        request_id: request_id.into(),
        time_ms: 1,
        policy_version: "p".into(),
        features: encode_features(&[0.0; 4]),
        input_tokens: 10,
        knob: "balanced".into(),
        cost_weight: None,
        candidates: ["big", "small"]
            .iter()
            .map(|m| LoggedCandidate {
                model: (*m).into(),
                predicted_quality: 0.5,
                base_quality: None,
                predicted_cost_usd: 0.001,
                eligible: true,
            })
            .collect(),
        chosen: "small".into(),
        propensity: 1.0,
        explored: false,
        session_id: String::new(),
        prompt: None,
        api_key: None,
        draft_plan: None,
    }
}

fn report(
    request_id: &str,
    feedback_id: &str,
    model: &str,
    quality: Option<f64>,
) -> FeedbackRecord {
    FeedbackRecord {
        request_id: request_id.into(),
        feedback_id: feedback_id.into(),
        time_ms: 2,
        model: model.into(),
        quality,
        input_tokens: 10,
        output_tokens: 20,
        cost_usd: 0.0001,
        latency_ms: 100,
        error: if quality.is_some() {
            ErrorKind::None
        } else {
            ErrorKind::RateLimited
        },
        retry_after_ms: None,
        first_byte_ms: None,
        tokens_estimated: false,
        api_key: None,
    }
}

#[tokio::test]
async fn dry_run_prints_distinct_counts_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileEventLog::open(&LogOptions {
            dir: dir.path().to_path_buf(),
            segment_bytes: 1 << 20,
            queue_capacity: 64,
            queue_bytes: 64 << 20,
            retention: None,
            archive: None,
        })
        .expect("log opens");
        for id in ["r1", "r2", "r3", "r3"] {
            log.record_decision(decision(id)).expect("decision");
        }
        let mut last = None;
        for (request, feedback, model, quality) in [
            ("r1", "f1", "small", Some(1.0)),
            ("r2", "f2", "small", None),
            ("r1", "f3", "big", Some(0.0)),
            ("r1", "f4", "small", Some(0.5)),
            ("r1", "f1", "small", Some(1.0)),
        ] {
            let ack = log
                .record_feedback(report(request, feedback, model, quality))
                .expect("feedback");
            if feedback == "f1" && last.is_some() {
                assert!(matches!(ack, FeedbackAck::Duplicate(_)));
            }
            last = Some(ack.ticket());
        }
        log.wait_durable(last.expect("written"))
            .await
            .expect("durable");
    }
    let counts = dry_run_counts(dir.path());
    // r3 was decided twice (one request), f1 was retried (one report), r2's report has no
    // quality, and r1/small was reported twice (one outcome: the latest).
    assert_eq!(
        counts,
        serde_json::json!({"decisions": 3, "feedback": 4, "outcomes": 2, "verifications": 0})
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args([
            "train",
            "--from-log",
            "/nonexistent/log",
            "--dry-run",
            "--json",
        ])
        .output()
        .expect("triage runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such log directory"));
}
