//! `triage train --from-log DIR --dry-run --json` counts what a real log holds, after
//! de-duplication; `triage log export` writes it as one table per record kind.

use std::process::Command;

mod common;

use common::dry_run_counts;

use triage_log::{
    DecisionRecord, DraftPlanRecord, ErrorKind, EventStore, FeedbackAck, FeedbackRecord,
    FileEventLog, LogOptions, LoggedDraft, VerificationRecord,
};

fn decision(request_id: &str) -> DecisionRecord {
    triage_testkit::records::decision(request_id, &["big", "small"], 0.001)
}

/// A log in `dir` with small queues, as the tests write it.
fn open_log(dir: &std::path::Path) -> FileEventLog {
    FileEventLog::open(&LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        queue_capacity: 64,
        queue_bytes: 64 << 20,
        retention: None,
        index_max_bytes: None,
        archive: None,
    })
    .expect("log opens")
}

fn report(
    request_id: &str,
    feedback_id: &str,
    model: &str,
    quality: Option<f64>,
) -> FeedbackRecord {
    let mut f = triage_testkit::records::report(request_id, feedback_id, model, 0.0001);
    f.quality = quality;
    if quality.is_none() {
        f.error = ErrorKind::RateLimited;
    }
    f
}

#[tokio::test]
async fn dry_run_prints_distinct_counts_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = open_log(dir.path());
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
                .await
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

#[tokio::test]
async fn log_export_writes_one_table_per_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    {
        let log = open_log(&log_dir);
        let mut planned = decision("r2");
        planned.draft_plan = Some(DraftPlanRecord {
            drafts: vec!["small".into()],
            predicted_quality: vec![0.6],
            threshold: 0.7,
            escalation: vec!["small".into()],
        });
        log.record_decision(decision("r1")).expect("decision");
        log.record_decision(planned).expect("decision");
        log.record_verification(VerificationRecord {
            request_id: "r2".into(),
            time_ms: 3,
            drafts: vec![LoggedDraft {
                model: "small".into(),
                answer: Some("num:4".into()),
                form: Some("number".into()),
                chars: 12,
                refuses: false,
                hedges: false,
            }],
            evidence: vec![1.0],
            probability: 0.8,
            threshold: 0.7,
            accepted: Some("small".into()),
            escalated_to: None,
            api_key: None,
        })
        .await
        .expect("verdict");
        let ack = log
            .record_feedback(report("r1", "f1", "small", Some(1.0)))
            .await
            .expect("feedback");
        log.wait_durable(ack.ticket()).await.expect("durable");
    }
    let out = dir.path().join("tables");
    let (from, to) = (log_dir.to_string_lossy(), out.to_string_lossy());
    let args = ["log", "export", "--from-log", &from, "--to", &to, "--json"];
    let report: serde_json::Value =
        serde_json::from_str(&common::triage(&args)).expect("JSON on stdout");
    assert_eq!(
        (
            &report["decisions"],
            &report["feedback"],
            &report["verifications"]
        ),
        (&2.into(), &1.into(), &1.into())
    );
    let table = |name: &str| {
        let file = std::fs::File::open(out.join(name)).expect("table written");
        polars::prelude::ParquetReader::new(file)
            .finish()
            .expect("parquet reads")
    };
    use polars::prelude::SerReader as _;
    let decisions = table("decisions.parquet");
    assert_eq!(decisions.height(), 2);
    assert!(decisions.column("candidate_model").is_ok() && decisions.column("quality").is_err());
    let plans = decisions
        .column("draft_plan")
        .expect("plans")
        .str()
        .expect("text")
        .clone();
    assert_eq!(plans.null_count(), 1, "only r2 was planned");
    let feedback = table("feedback.parquet");
    assert_eq!(feedback.height(), 1);
    assert!(feedback.column("chosen").is_err());
    let verdicts = table("verifications.parquet");
    assert_eq!(verdicts.height(), 1);
    let accepted = verdicts
        .column("accepted")
        .expect("accepted")
        .str()
        .expect("text")
        .get(0);
    assert_eq!(accepted, Some("small"));

    // An export is written once: a second one into the same place is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(["log", "export", "--from-log", &from, "--to", &to])
        .output()
        .expect("triage runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
}
