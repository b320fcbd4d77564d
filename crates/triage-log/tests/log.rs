//! The file log against real files: durability, idempotency, recovery, rotation.

use std::io::Write;

use triage_log::{
    DecisionRecord, ErrorKind, EventStore, FeedbackAck, FeedbackRecord, FileEventLog, LogError,
    LogOptions, LogRecord, LoggedCandidate, read_log, segment_file,
};

fn options(dir: &std::path::Path) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        queue_capacity: 1024,
        queue_bytes: 64 << 20,
        retention: None,
        index_max_bytes: None,
        archive: None,
    }
}

fn decision(request_id: &str) -> DecisionRecord {
    DecisionRecord {
        request_id: request_id.into(),
        time_ms: 1,
        policy_version: "p1".into(),
        features: triage_log::encode_features(&[0.5, -0.25]),
        input_tokens: 12,
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
        familiarity: None,
        held_usd: None,
    }
}

fn feedback(request_id: &str, feedback_id: &str, quality: f64) -> FeedbackRecord {
    FeedbackRecord {
        request_id: request_id.into(),
        feedback_id: feedback_id.into(),
        time_ms: 2,
        model: "small".into(),
        quality: Some(quality),
        input_tokens: 12,
        output_tokens: 40,
        cost_usd: 0.0001,
        latency_ms: 300,
        error: ErrorKind::None,
        retry_after_ms: None,
        first_byte_ms: None,
        tokens_estimated: false,
        api_key: None,
        hold_usd: None,
        source: Default::default(),
        judged: None,
    }
}

fn feedback_count(dir: &std::path::Path) -> usize {
    let (records, _) = read_log(dir).expect("reads");
    records
        .iter()
        .filter(|r| matches!(r, LogRecord::Feedback(_)))
        .count()
}

#[tokio::test]
async fn feedback_is_durable_once_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileEventLog::open(&options(dir.path())).expect("opens");
        log.record_decision(decision("r1")).expect("decision");
        let ack = log
            .record_feedback(feedback("r1", "f1", 1.0))
            .await
            .expect("feedback");
        assert!(matches!(ack, FeedbackAck::Stored(_)));
        log.wait_durable(ack.ticket()).await.expect("durable");
        // Acknowledged means on disk: a reader sees it while the log is still open.
        assert_eq!(feedback_count(dir.path()), 1);
        let retry = log
            .record_feedback(feedback("r1", "f1", 1.0))
            .await
            .expect("retry");
        assert_eq!(retry, FeedbackAck::Duplicate(ack.ticket()));
        assert!(matches!(
            log.record_feedback(feedback("r1", "f1", 0.0)).await,
            Err(LogError::ConflictingFeedback(_))
        ));
        assert!(matches!(
            log.record_feedback(feedback("nope", "f2", 1.0)).await,
            Err(LogError::UnknownRequest(_))
        ));
        let mut wrong_model = feedback("r1", "f3", 1.0);
        wrong_model.model = "other".into();
        assert!(matches!(
            log.record_feedback(wrong_model).await,
            Err(LogError::InvalidRecord(m)) if m.contains("big, small")
        ));
    }
    let log = FileEventLog::open(&options(dir.path())).expect("reopens");
    assert_eq!(log.counts(), (1, 1));
    // Only the key that routed a request reports on it, before and after a restart.
    let mut other_key = feedback("r1", "f9", 0.0);
    other_key.api_key = Some("mallory".into());
    assert!(matches!(
        log.record_feedback(other_key).await,
        Err(LogError::NotYourRequest(id)) if id == "r1"
    ));
    let mut keyed = decision("r2");
    keyed.api_key = Some("team".into());
    log.record_decision(keyed).expect("decision");
    assert!(
        matches!(
            log.record_feedback(feedback("r2", "f10", 1.0)).await,
            Err(LogError::NotYourRequest(_))
        ),
        "an anonymous report on a keyed request is refused too"
    );
    // The index was rebuilt: a retry after restart is still a duplicate.
    let retry = log
        .record_feedback(feedback("r1", "f1", 1.0))
        .await
        .expect("retry");
    assert!(matches!(retry, FeedbackAck::Duplicate(_)));
    let ack = log
        .record_feedback(feedback("r1", "f4", 0.0))
        .await
        .expect("new");
    log.wait_durable(ack.ticket()).await.expect("durable");
    assert_eq!(feedback_count(dir.path()), 2);
}

#[tokio::test]
async fn history_reads_back_what_was_written_since_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileEventLog::open(&options(dir.path())).expect("opens");
    let mut early = decision("r1");
    early.time_ms = 1_000;
    let mut late = decision("r2");
    late.time_ms = 5_000;
    log.record_decision(early).expect("queued");
    log.record_decision(late).expect("queued");
    let mut report = feedback("r2", "f1", 1.0);
    report.time_ms = 6_000;
    let ack = log.record_feedback(report).await.expect("stored");
    log.wait_durable(ack.ticket()).await.expect("durable");
    let mut all = Vec::new();
    log.history(None, &mut |r| all.push(r))
        .await
        .expect("reads");
    assert_eq!(all.len(), 3);
    let mut recent = Vec::new();
    log.history(Some(5_000), &mut |r| recent.push(r))
        .await
        .expect("reads");
    let ids: Vec<u64> = recent.iter().map(LogRecord::time_ms).collect();
    assert_eq!(ids, [5_000, 6_000]);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_appends_continue_after_valid_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileEventLog::open(&options(dir.path())).expect("opens");
        log.record_decision(decision("r1")).expect("decision");
        let ack = log
            .record_feedback(feedback("r1", "f1", 1.0))
            .await
            .expect("feedback");
        log.wait_durable(ack.ticket()).await.expect("durable");
    }
    let segment = segment_file(dir.path(), 1);
    let intact = std::fs::metadata(&segment).expect("segment").len();
    // A crash in the middle of a frame: a header promising more bytes than follow.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
        .expect("write");
    drop(file);
    let (_, report) = read_log(dir.path()).expect("reads");
    assert_eq!(report.torn_bytes, 10);
    assert_eq!(report.records, 2);

    let log = FileEventLog::open(&options(dir.path())).expect("recovers");
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), intact);
    let ack = log
        .record_feedback(feedback("r1", "f2", 0.0))
        .await
        .expect("feedback");
    log.wait_durable(ack.ticket()).await.expect("durable");
    let (records, report) = read_log(dir.path()).expect("reads");
    assert_eq!((records.len(), report.torn_bytes), (3, 0));
}

#[tokio::test]
async fn a_flipped_byte_fails_the_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileEventLog::open(&options(dir.path())).expect("opens");
        for i in 0..3 {
            let t = log
                .record_decision(decision(&format!("r{i}")))
                .expect("decision");
            log.wait_durable(t).await.expect("durable");
        }
    }
    let segment = segment_file(dir.path(), 1);
    let mut bytes = std::fs::read(&segment).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&segment, bytes).expect("write");
    let (records, report) = read_log(dir.path()).expect("reads");
    assert_eq!(records.len(), 2);
    assert!(report.torn_bytes > 0);
}

#[tokio::test]
async fn segments_rotate_and_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = LogOptions {
        segment_bytes: 2_000,
        ..options(dir.path())
    };
    let log = FileEventLog::open(&small).expect("opens");
    let mut last = None;
    for i in 0..40 {
        let t = log
            .record_decision(decision(&format!("r{i}")))
            .expect("decision");
        // Wait on some so that groups stay small enough to rotate between them.
        if i % 4 == 0 {
            log.wait_durable(t).await.expect("durable");
        }
        last = Some(t);
    }
    log.wait_durable(last.expect("written"))
        .await
        .expect("durable");
    let (records, report) = read_log(dir.path()).expect("reads");
    assert!(report.segments > 1, "{report:?}");
    let ids: Vec<String> = records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Decision(d) => Some(d.request_id.clone()),
            LogRecord::Feedback(_) | LogRecord::Verification(_) => None,
        })
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn concurrent_reports_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(FileEventLog::open(&options(dir.path())).expect("opens"));
    // Spread over requests: one request takes at most MAX_REPORTS_PER_REQUEST.
    for r in 0..4 {
        log.record_decision(decision(&format!("r{r}")))
            .expect("decision");
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = std::sync::Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let ack = log
                .record_feedback(feedback(&format!("r{}", i % 4), &format!("f{i}"), 1.0))
                .await
                .expect("feedback");
            log.wait_durable(ack.ticket()).await.expect("durable");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(feedback_count(dir.path()), 200);
}

#[tokio::test]
async fn a_record_too_large_for_a_frame_is_refused_before_it_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileEventLog::open(&options(dir.path())).expect("opens");
        log.record_decision(decision("r1")).expect("decision");
        let mut huge = decision("r2");
        huge.prompt = Some("x".repeat(65 << 20));
        assert!(matches!(
            log.record_decision(huge),
            Err(LogError::InvalidRecord(m)) if m.contains("frame limit")
        ));
        log.record_decision(decision("r3"))
            .expect("decision after it");
        let ack = log
            .record_feedback(feedback("r3", "f1", 1.0))
            .await
            .expect("feedback");
        log.wait_durable(ack.ticket()).await.expect("durable");
    }
    // Nothing after the refused record was cut off at the next start.
    let log = FileEventLog::open(&options(dir.path())).expect("reopens");
    assert_eq!(log.counts(), (2, 1));
}

#[test]
fn a_second_log_on_the_same_directory_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = FileEventLog::open(&options(dir.path())).expect("opens");
    let second = FileEventLog::open(&options(dir.path()));
    let pid = std::process::id().to_string();
    assert!(
        matches!(&second, Err(LogError::Locked { holder, .. }) if holder.contains(&pid)),
        "{:?}",
        second.err()
    );
    drop(first);
    FileEventLog::open(&options(dir.path())).expect("free again once the first is closed");
}

#[tokio::test]
async fn damage_in_the_middle_costs_one_record_and_the_file_is_kept_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileEventLog::open(&options(dir.path())).expect("opens");
        for i in 0..3 {
            log.record_decision(decision(&format!("r{i}")))
                .expect("decision");
        }
        let ack = log
            .record_feedback(feedback("r2", "f1", 1.0))
            .await
            .expect("feedback");
        log.wait_durable(ack.ticket()).await.expect("durable");
    }
    let segment = segment_file(dir.path(), 1);
    let mut bytes = std::fs::read(&segment).expect("read");
    // A byte inside the second frame's payload (the first is about a third of the file).
    let second = bytes.len() * 2 / 5;
    bytes[second] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write");

    // Readers skip the damaged frame and read on.
    let (records, report) = read_log(dir.path()).expect("reads");
    assert_eq!(records.len(), 3, "r0, r2 and the acknowledged report");
    assert!(
        report.damaged_bytes > 0 && report.torn_bytes == 0,
        "{report:?}"
    );

    // The server keeps every intact record and moves the damaged file aside.
    let log = FileEventLog::open(&options(dir.path())).expect("recovers");
    assert_eq!(log.counts(), (2, 1));
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .expect("lists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(dir.path().join(&aside[0])).expect("aside"),
        bytes,
        "kept as found"
    );
    let ack = log
        .record_feedback(feedback("r0", "f2", 0.0))
        .await
        .expect("appends after the intact records");
    log.wait_durable(ack.ticket()).await.expect("durable");
    drop(log);
    let (records, report) = read_log(dir.path()).expect("reads");
    assert_eq!((records.len(), report.damaged_bytes), (4, 0));
}

#[tokio::test]
async fn decisions_past_the_retention_are_forgotten_and_not_read_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = 86_400_000u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let retained = LogOptions {
        retention: Some(std::time::Duration::from_secs(35 * 86_400)),
        index_max_bytes: None,
        segment_bytes: 1,
        ..options(dir.path())
    };
    // A request issued 40 days ago, with a UUIDv7 id as the server issues them.
    let stamp = uuid::Timestamp::from_unix(uuid::NoContext, (now - 40 * day) / 1000, 0);
    let old_id = uuid::Uuid::new_v7(stamp).to_string();
    {
        let log = FileEventLog::open(&retained).expect("opens");
        let mut old = decision(&old_id);
        old.time_ms = now - 40 * day;
        let t = log.record_decision(old).expect("queued");
        log.wait_durable(t).await.expect("durable");
        let mut recent = decision("recent");
        recent.time_ms = now - day;
        let t = log.record_decision(recent).expect("queued");
        log.wait_durable(t).await.expect("durable");
        assert_eq!(
            log.counts().0,
            1,
            "the old decision is not kept in the index"
        );
        assert!(matches!(
            log.record_feedback(feedback(&old_id, "late", 1.0)).await,
            Err(LogError::ExpiredRequest(id, 35)) if id == old_id
        ));
        assert!(matches!(
            log.record_feedback(feedback("never-issued", "f", 1.0))
                .await,
            Err(LogError::UnknownRequest(_))
        ));
    }
    // Segments last written before the cutoff are not even read at start (one segment per
    // record here: make the first one look 40 days old).
    let first = segment_file(dir.path(), 1);
    std::fs::File::options()
        .write(true)
        .open(&first)
        .and_then(|f| {
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now - 40 * day))
        })
        .expect("set mtime");
    let mut visited = 0;
    let log = FileEventLog::open_visiting(&retained, |_| visited += 1).expect("reopens");
    assert_eq!((visited, log.counts().0), (1, 1));
    drop(log);
    // Without a retention, everything is read and kept.
    let log = FileEventLog::open(&options(dir.path())).expect("reopens");
    assert_eq!(log.counts().0, 2);
}

#[tokio::test]
async fn feedback_ids_are_scoped_to_their_request_and_reports_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileEventLog::open(&options(dir.path())).expect("opens");
    for (request, key) in [("ra", "tenant-a"), ("rb", "tenant-b")] {
        let mut d = decision(request);
        d.api_key = Some(key.into());
        log.record_decision(d).expect("decision");
    }
    let report = |request: &str, key: &str, id: &str| {
        let mut f = feedback(request, id, 1.0);
        f.api_key = Some(key.into());
        f
    };
    // One tenant's `fb-1` says nothing about another's.
    for (request, key) in [("ra", "tenant-a"), ("rb", "tenant-b")] {
        let ack = log
            .record_feedback(report(request, key, "fb-1"))
            .await
            .expect("stored");
        assert!(matches!(ack, FeedbackAck::Stored(_)), "{request}: {ack:?}");
    }
    // A request takes a bounded number of reports; a retry of one stored still answers.
    for i in 2..=triage_log::MAX_REPORTS_PER_REQUEST {
        let ack = log
            .record_feedback(report("ra", "tenant-a", &format!("fb-{i}")))
            .await
            .expect("within the bound");
        assert!(matches!(ack, FeedbackAck::Stored(_)));
    }
    assert!(matches!(
        log.record_feedback(report("ra", "tenant-a", "one-too-many")).await,
        Err(LogError::TooManyReports(id, n)) if id == "ra" && n == triage_log::MAX_REPORTS_PER_REQUEST
    ));
    let retry = log
        .record_feedback(report("ra", "tenant-a", "fb-1"))
        .await
        .expect("a retry is not a new report");
    assert!(matches!(retry, FeedbackAck::Duplicate(_)));
    let reports = 1 + triage_log::MAX_REPORTS_PER_REQUEST;
    assert_eq!(log.counts(), (2, reports));
    drop(log);
    // Rebuilt from disk, the same bound and the same scoping hold.
    let log = FileEventLog::open(&options(dir.path())).expect("reopens");
    assert_eq!(log.counts(), (2, reports));
    assert!(matches!(
        log.record_feedback(report("ra", "tenant-a", "one-too-many"))
            .await,
        Err(LogError::TooManyReports(..))
    ));
    assert!(matches!(
        log.record_feedback(report("rb", "tenant-b", "fb-1")).await,
        Ok(FeedbackAck::Duplicate(_))
    ));
}

#[tokio::test]
async fn the_index_keeps_within_its_memory_bound_and_says_evicted_for_older_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bounded = LogOptions {
        index_max_bytes: Some(64 * 1024),
        ..options(dir.path())
    };
    let ids: Vec<String> = (0..5_000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    {
        let log = FileEventLog::open(&bounded).expect("opens");
        for id in &ids {
            let mut d = decision(id);
            d.time_ms = triage_log::now_ms();
            log.record_decision(d).expect("decision");
        }
        let (held, _) = log.counts();
        assert!(
            held > 100 && held < 1_000,
            "{held} decisions held in 64 KiB"
        );
        let newest = ids.last().expect("ids");
        let ack = log
            .record_feedback(feedback(newest, "late", 1.0))
            .await
            .expect("a recent request takes a report");
        log.wait_durable(ack.ticket()).await.expect("durable");
        match log
            .record_feedback(feedback(&ids[0], "too-late", 1.0))
            .await
        {
            Err(LogError::Evicted(id, bound)) => {
                assert_eq!((id.as_str(), bound), (ids[0].as_str(), 64 * 1024))
            }
            other => panic!("{other:?}"),
        }
    }
    // Rebuilt from disk, the same bound holds.
    let log = FileEventLog::open(&bounded).expect("reopens");
    let (held, reports) = log.counts();
    assert!(
        held < 1_000 && reports == 1,
        "{held} decisions, {reports} reports"
    );
    assert!(matches!(
        log.record_feedback(feedback(&ids[10], "too-late", 1.0))
            .await,
        Err(LogError::Evicted(..))
    ));
}
