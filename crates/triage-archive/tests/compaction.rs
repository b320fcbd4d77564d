//! Compaction against real files: segments written by the real log, compacted to Parquet, read
//! back by readers and by a reopened log.

use std::path::Path;
use std::sync::Arc;

use triage_archive::ParquetArchive;
use triage_log::{
    ArchiveFormat, DecisionRecord, DraftPlanRecord, ErrorKind, EventStore, FeedbackAck,
    FeedbackRecord, FileEventLog, LogOptions, LogRecord, LoggedCandidate, LoggedDraft,
    VerificationRecord, compact, read_log, read_log_with,
};

fn options(dir: &Path, archive: bool) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 3_000,
        queue_capacity: 1024,
        queue_bytes: 64 << 20,
        retention: None,
        index_max_bytes: None,
        archive: archive.then(|| Arc::new(ParquetArchive) as Arc<dyn ArchiveFormat>),
    }
}

/// A decision whose optional fields are set on odd ids, so both forms round-trip.
fn decision(i: usize) -> DecisionRecord {
    let odd = i % 2 == 1;
    DecisionRecord {
        request_id: format!("r{i}"),
        time_ms: 1_700_000_000_000 + i as u64,
        policy_version: "p1".into(),
        features: triage_log::encode_features(&[0.5, -0.25, i as f32 * 1e-3, f32::MIN_POSITIVE]),
        input_tokens: 12 + i as u32,
        knob: if odd { "lambda" } else { "balanced" }.into(),
        cost_weight: odd.then_some(250.0),
        candidates: ["big", "small", "vision"]
            .iter()
            .enumerate()
            .map(|(k, m)| LoggedCandidate {
                model: (*m).into(),
                predicted_quality: 0.1 + 0.2 * k as f64 + i as f64 * 1e-9,
                base_quality: (k != 1).then_some(0.3 + k as f64 * 0.01),
                predicted_cost_usd: 0.001 / (k + 1) as f64,
                eligible: k != 2,
            })
            .collect(),
        chosen: "small".into(),
        propensity: if odd { 0.05 } else { 1.0 },
        explored: odd,
        session_id: format!("s{}", i % 3),
        prompt: odd.then(|| format!("prompt {i} with ünïcode")),
        api_key: odd.then(|| "team-a".into()),
        draft_plan: i.is_multiple_of(3).then(|| DraftPlanRecord {
            drafts: vec!["small".into(), "vision".into()],
            predicted_quality: vec![0.61, 0.4 + i as f64 * 1e-9],
            threshold: 0.7,
            escalation: vec!["small".into(), "big".into()],
        }),
        familiarity: None,
        held_usd: None,
    }
}

/// A verdict on request `i`'s drafts: accepted on even ids, escalated on odd ones.
fn verification(i: usize) -> VerificationRecord {
    let accepted = i.is_multiple_of(2);
    VerificationRecord {
        request_id: format!("r{i}"),
        time_ms: 1_700_000_000_200 + i as u64,
        drafts: vec![
            LoggedDraft {
                model: "small".into(),
                answer: Some(format!("{i}")),
                form: Some("number".into()),
                chars: 120,
                refuses: false,
                hedges: !accepted,
            },
            LoggedDraft {
                model: "vision".into(),
                answer: None,
                form: None,
                chars: 0,
                refuses: true,
                hedges: false,
            },
        ],
        evidence: vec![0.25, -1.5, 1.0],
        probability: 0.5 + i as f64 * 1e-3,
        threshold: 0.7,
        accepted: accepted.then(|| "small".into()),
        escalated_to: (!accepted).then(|| "big".into()),
        api_key: (i % 2 == 1).then(|| "team-a".into()),
    }
}

fn feedback(i: usize) -> FeedbackRecord {
    FeedbackRecord {
        request_id: format!("r{i}"),
        feedback_id: format!("f{i}"),
        time_ms: 1_700_000_000_500 + i as u64,
        model: "small".into(),
        quality: (!i.is_multiple_of(5)).then_some(i as f64 / 100.0),
        input_tokens: 12,
        output_tokens: 40 + i as u32,
        cost_usd: 0.0001 * i as f64,
        latency_ms: 300,
        error: if i.is_multiple_of(7) {
            ErrorKind::RateLimited
        } else {
            ErrorKind::None
        },
        retry_after_ms: i.is_multiple_of(7).then_some(1500),
        first_byte_ms: i.is_multiple_of(3).then_some(120 + i as u32),
        tokens_estimated: i.is_multiple_of(5),
        api_key: (i % 2 == 1).then(|| "team-a".into()),
        hold_usd: None,
        source: Default::default(),
        judged: None,
    }
}

async fn write_log(dir: &Path, range: std::ops::Range<usize>, archive: bool) {
    let log = FileEventLog::open(&options(dir, archive)).expect("log opens");
    // Waiting for each report keeps group commits small, so segments roll as they fill.
    for i in range {
        log.record_decision(decision(i)).expect("decision queued");
        let ack = log
            .record_feedback(feedback(i))
            .await
            .expect("feedback queued");
        log.wait_durable(ack.ticket()).await.expect("durable");
    }
}

fn files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir lists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn parquet_round_trips_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<LogRecord> = (0..20)
        .flat_map(|i| {
            [
                LogRecord::Decision(decision(i)),
                LogRecord::Verification(verification(i)),
                LogRecord::Feedback(feedback(i)),
            ]
        })
        .collect();
    let path = dir.path().join("a.parquet");
    ParquetArchive.write(&records, &path).expect("writes");
    assert_eq!(ParquetArchive.read(&path).expect("reads"), records);
    // An archive never overwrites a file.
    assert!(ParquetArchive.write(&records, &path).is_err());
}

#[tokio::test]
async fn compacted_log_reads_and_reopens_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 0..40, false).await;
    let (before, _) = read_log(dir.path()).expect("reads");
    let segments_before = files(dir.path(), "segment-").len();
    assert!(segments_before >= 5, "{segments_before} segments");

    // Too few sealed segments for the threshold: nothing happens.
    let none = compact(dir.path(), &ParquetArchive, 1000).expect("compacts");
    assert_eq!(none.archives, 0);
    let report = compact(dir.path(), &ParquetArchive, 2).expect("compacts");
    assert_eq!(report.archives, 1);
    assert_eq!(report.segments, segments_before - 1, "all but the open one");
    assert_eq!(files(dir.path(), "segment-").len(), 1);
    assert_eq!(files(dir.path(), "archive-").len(), 1);
    assert!(report.archive_bytes < report.segment_bytes, "{report:?}");

    // Readers see one log, in the same order.
    let (after, read) = read_log_with(dir.path(), Some(&ParquetArchive)).expect("reads");
    assert_eq!(after, before);
    assert_eq!((read.archives, read.segments), (1, 1));
    // A reader that cannot read archives says so instead of returning part of the log.
    let refused = read_log(dir.path()).expect_err("archives need a format");
    assert!(refused.to_string().contains("archive"), "{refused}");
    assert!(FileEventLog::open(&options(dir.path(), false)).is_err());

    // A reopened log knows archived requests and feedback, and appends after them.
    {
        let log = FileEventLog::open(&options(dir.path(), true)).expect("reopens");
        assert_eq!(log.counts(), (40, 40));
        let retried = log.record_feedback(feedback(3)).await.expect("retry taken");
        assert!(matches!(retried, FeedbackAck::Duplicate(_)), "{retried:?}");
        let late = FeedbackRecord {
            feedback_id: "late".into(),
            ..feedback(5)
        };
        let ack = log
            .record_feedback(late)
            .await
            .expect("archived request is known");
        log.wait_durable(ack.ticket()).await.expect("durable");
    }
    write_log(dir.path(), 40..60, true).await;
    let (all, _) = read_log_with(dir.path(), Some(&ParquetArchive)).expect("reads");
    assert_eq!(all.len(), 40 * 2 + 1 + 20 * 2);
    assert_eq!(all[..before.len()], before[..]);

    // Compacting again adds a second archive after the first.
    let second = compact(dir.path(), &ParquetArchive, 1).expect("compacts again");
    assert_eq!(second.archives, 1);
    let (again, _) = read_log_with(dir.path(), Some(&ParquetArchive)).expect("reads");
    assert_eq!(again, all);
}

#[tokio::test]
async fn an_interrupted_compaction_neither_loses_nor_doubles_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 0..40, false).await;
    let (before, _) = read_log(dir.path()).expect("reads");
    // Simulate a crash after the archive was renamed into place but before the segments were
    // deleted: compact a copy, then put the archive beside the original segments.
    let copy = tempfile::tempdir().expect("tempdir");
    for name in files(dir.path(), "segment-") {
        std::fs::copy(dir.path().join(&name), copy.path().join(&name)).expect("copies");
    }
    compact(copy.path(), &ParquetArchive, 1).expect("compacts");
    let archive = files(copy.path(), "archive-").remove(0);
    std::fs::copy(copy.path().join(&archive), dir.path().join(&archive)).expect("copies");
    // And a half-written temporary from another attempt.
    std::fs::write(dir.path().join(format!("{archive}.tmp")), b"PAR1 torn").expect("writes");

    let (read, _) = read_log_with(dir.path(), Some(&ParquetArchive)).expect("reads");
    assert_eq!(
        read, before,
        "covered segments are skipped, the temporary ignored"
    );
    let log = FileEventLog::open(&options(dir.path(), true)).expect("reopens");
    assert_eq!(log.counts(), (40, 40));
    drop(log);

    let segments = files(dir.path(), "segment-").len();
    let report = compact(dir.path(), &ParquetArchive, 1).expect("compacts");
    assert_eq!(report.leftovers_deleted, segments - 1, "{report:?}");
    assert_eq!(report.archives, 0, "{report:?}");
    assert_eq!(files(dir.path(), "segment-").len(), 1);
    assert!(
        files(dir.path(), "archive-")
            .iter()
            .all(|n| !n.ends_with(".tmp"))
    );
    let (after, _) = read_log_with(dir.path(), Some(&ParquetArchive)).expect("reads");
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_damaged_sealed_segment_stays_and_splits_the_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 0..40, false).await;
    let segments = files(dir.path(), "segment-");
    assert!(segments.len() >= 5);
    // Flip a byte in the middle of the second segment: its later frames are unreadable.
    let damaged = dir.path().join(&segments[1]);
    let mut bytes = std::fs::read(&damaged).expect("reads");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("writes");
    let (before, _) = read_log(dir.path()).expect("reads");

    let report = compact(dir.path(), &ParquetArchive, 1).expect("compacts");
    assert_eq!(report.damaged_kept, 1);
    assert_eq!(
        report.archives, 2,
        "one run before the damaged segment, one after"
    );
    assert!(damaged.exists(), "a damaged segment is kept for inspection");
    let (after, _) = read_log_with(dir.path(), Some(&ParquetArchive)).expect("reads");
    assert_eq!(after, before);
}
