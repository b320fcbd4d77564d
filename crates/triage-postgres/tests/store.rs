//! The PostgreSQL store against a real, throwaway PostgreSQL cluster: two stores on one
//! database stand for two replicas.

use std::time::Duration;

use triage_log::{
    DecisionRecord, DraftPlanRecord, EventStore, FeedbackAck, FeedbackRecord, LogError, LogRecord,
    Reserved, SpendReservation, VerificationAck, VerificationRecord, now_ms,
};
use triage_postgres::{PgEventStore, PgOptions};
use triage_testkit::postgres::PgCluster;
use triage_testkit::records;

async fn store(cluster: &PgCluster, queue_capacity: usize) -> PgEventStore {
    PgEventStore::connect(&PgOptions {
        url: cluster.url(),
        pool_size: 4,
        queue_capacity,
        retention_days: 35,
    })
    .await
    .expect("connects and migrates")
}

fn request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A decision between "big" and "small" (chosen) for `key`, with a prompt a text column could
/// not hold.
fn decision(request_id: &str, key: Option<&str>, predicted_usd: f64) -> DecisionRecord {
    let mut d = records::decision(request_id, &["big", "small"], predicted_usd);
    d.api_key = key.map(str::to_owned);
    d.prompt = Some("a prompt with a NUL \u{0} in it".into());
    d
}

fn report(request_id: &str, feedback_id: &str, key: Option<&str>, cost_usd: f64) -> FeedbackRecord {
    let mut f = records::report(request_id, feedback_id, "small", cost_usd);
    f.api_key = key.map(str::to_owned);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_decisions_reports_and_retries() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let (a, b) = (store(&cluster, 1024).await, store(&cluster, 1024).await);
    let id = request_id();
    a.record_decision(decision(&id, Some("k"), 0.002))
        .expect("queued");
    // Reported at the other replica at once: the decision is still on its way there.
    let ack = b
        .record_feedback(report(&id, "f1", Some("k"), 0.001))
        .await
        .expect("stored");
    assert!(matches!(ack, FeedbackAck::Stored(_)));
    let retry = a
        .record_feedback(report(&id, "f1", Some("k"), 0.001))
        .await
        .expect("a retry at either replica");
    assert!(matches!(retry, FeedbackAck::Duplicate(_)));
    let mut changed = report(&id, "f1", Some("k"), 0.001);
    changed.quality = Some(0.0);
    assert!(matches!(
        b.record_feedback(changed).await,
        Err(LogError::ConflictingFeedback(_))
    ));
    assert!(matches!(
        b.record_feedback(report(&id, "f2", Some("other"), 0.0))
            .await,
        Err(LogError::NotYourRequest(_))
    ));
    let mut wrong_model = report(&id, "f3", Some("k"), 0.0);
    wrong_model.model = "absent".into();
    match b.record_feedback(wrong_model).await {
        Err(LogError::InvalidRecord(m)) => assert!(m.contains("big, small"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.record_feedback(report("not-an-id\u{0}", "f4", Some("k"), 0.0))
            .await,
        Err(LogError::UnknownRequest(_))
    ));
    // Issued long ago and never stored: unknown at once, no waiting for lag.
    let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (now_ms() / 1000) - 3600,
        0,
    ))
    .to_string();
    let started = std::time::Instant::now();
    assert!(matches!(
        b.record_feedback(report(&old, "f5", Some("k"), 0.0)).await,
        Err(LogError::UnknownRequest(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    // Made up, recent: waited for briefly (it could be on its way from another replica), then
    // "not stored yet", never a hang.
    let started = std::time::Instant::now();
    match b
        .record_feedback(report(&request_id(), "f6", Some("k"), 0.0))
        .await
    {
        Err(LogError::Unavailable(m)) => assert!(m.contains("not stored yet"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // The gateway's own call records go in without waiting; a fresh store reads everything
    // back, each record once, the decision first.
    assert!(
        a.record_attempt(report(&id, "gateway:1", Some("k"), 0.0))
            .expect("queued")
    );
    a.close().await.expect("flushed");
    let reader = store(&cluster, 16).await;
    let mut seen = Vec::new();
    reader
        .history(None, &mut |r| seen.push(r))
        .await
        .expect("reads");
    let kinds: Vec<&str> = seen.iter().map(LogRecord::kind).collect();
    assert_eq!(kinds, ["decision", "feedback", "feedback"]);
    match &seen[0] {
        LogRecord::Decision(d) => {
            assert_eq!(d.prompt.as_deref(), Some("a prompt with a NUL \u{0} in it"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.counts().1, 1, "b stored one new report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_replicas_and_reports_settle_it() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let (a, b) = (
        std::sync::Arc::new(store(&cluster, 1024).await),
        std::sync::Arc::new(store(&cluster, 1024).await),
    );
    let reservation = |request_id: String| SpendReservation {
        api_key: "team".into(),
        request_id,
        usd: 0.03,
        daily_usd: Some(1.0),
        monthly_usd: Some(10.0),
        time_ms: now_ms(),
    };
    // 80 requests of $0.03 race for a $1 day on two replicas: at most 33 fit.
    let mut racing = Vec::new();
    for i in 0..80 {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        let r = reservation(request_id());
        racing.push(tokio::spawn(async move { replica.reserve_spend(r).await }));
    }
    let mut charged = 0;
    let mut highest = 0.0f64;
    for r in racing {
        match r.await.expect("task").expect("answers") {
            Reserved::Charged { day_usd, .. } => {
                charged += 1;
                highest = highest.max(day_usd);
            }
            Reserved::Refused { day_usd, .. } => assert!(day_usd + 0.03 > 1.0),
            Reserved::Local => panic!("a shared store keeps budgets"),
        }
    }
    assert_eq!(charged, 33, "exactly what fits is charged");
    assert!(highest <= 1.0 + 1e-9, "charged {highest}");

    // A report replaces its request's prediction with the real cost; a second adds its own.
    let id = request_id();
    let reserved = a
        .reserve_spend(reservation(id.clone()))
        .await
        .expect("answers");
    assert!(
        matches!(reserved, Reserved::Refused { .. }),
        "the day is full"
    );
    // A request whose decision could not be recorded gives its charge back, at any replica:
    // then the next one fits again.
    b.release_spend(reservation(request_id()))
        .await
        .expect("released");
    assert!(matches!(
        a.reserve_spend(reservation(request_id()))
            .await
            .expect("answers"),
        Reserved::Charged { day_usd, .. } if (day_usd - 0.99).abs() < 1e-9
    ));
    let c = store(&cluster, 64).await;
    let id2 = request_id();
    c.record_decision(decision(&id2, Some("team"), 0.03))
        .expect("queued");
    b.record_feedback(report(&id2, "s1", Some("team"), 0.01))
        .await
        .expect("stored");
    b.record_feedback(report(&id2, "s2", Some("team"), 0.005))
        .await
        .expect("stored");
    match a
        .reserve_spend(reservation(request_id()))
        .await
        .expect("answers")
    {
        Reserved::Refused { day_usd, .. } => {
            let expected = 33.0 * 0.03 - 0.03 + 0.01 + 0.005;
            assert!((day_usd - expected).abs() < 1e-9, "{day_usd} vs {expected}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_reports_buffers_decisions_and_loses_nothing() {
    let Some(mut cluster) = PgCluster::start() else {
        return;
    };
    let log = store(&cluster, 8).await;
    let before = request_id();
    log.record_decision(decision(&before, None, 0.001))
        .expect("queued");
    log.close().await.expect("written");
    cluster.stop();
    let refused = log.record_feedback(report(&before, "r1", None, 0.0)).await;
    assert!(
        matches!(refused, Err(LogError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(log.failure().is_some(), "health follows the outage");
    // Decisions wait in the bounded queue (the writer holds some in its group), then are shed.
    let mut buffered = Vec::new();
    let full = loop {
        let id = request_id();
        match log.record_decision(decision(&id, None, 0.001)) {
            Ok(_) => buffered.push(id),
            Err(e) => break e,
        }
        assert!(buffered.len() < 100, "the queue is bounded");
    };
    assert!(matches!(full, LogError::Full), "{full:?}");
    assert!(
        log.refuses_decisions().is_none(),
        "routing is shed by the queue, not stopped"
    );
    cluster.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.failure().is_some() {
        assert!(std::time::Instant::now() < deadline, "the writer recovers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log.close().await.expect("what waited is written");
    for (n, id) in buffered.iter().enumerate() {
        let ack = log
            .record_feedback(report(id, &format!("after{n}"), None, 0.0))
            .await
            .expect("its decision was kept");
        assert!(matches!(ack, FeedbackAck::Stored(_)));
    }
    let ack = log
        .record_feedback(report(&before, "r1", None, 0.0))
        .await
        .expect("the refused report, retried, is taken");
    assert!(matches!(ack, FeedbackAck::Stored(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_verified_once_from_any_replica() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let (a, b) = (store(&cluster, 64).await, store(&cluster, 64).await);
    let id = request_id();
    let mut planned = decision(&id, Some("k"), 0.001);
    planned.draft_plan = Some(DraftPlanRecord {
        drafts: vec!["small".into()],
        predicted_quality: vec![0.7],
        threshold: 0.5,
        escalation: vec!["big".into()],
    });
    a.record_decision(planned).expect("queued");
    let plan = a
        .planned(&id, Some("k"))
        .await
        .expect("its own, still queued");
    assert_eq!(plan.plan.drafts, ["small"]);
    assert!(!plan.verified);
    assert!(matches!(
        b.planned(&id, Some("x")).await,
        Err(LogError::NotYourRequest(_))
    ));
    let verdict = VerificationRecord {
        request_id: id.clone(),
        time_ms: now_ms(),
        drafts: Vec::new(),
        evidence: vec![1.0],
        probability: 0.2,
        threshold: 0.5,
        accepted: None,
        escalated_to: Some("big".into()),
        api_key: Some("k".into()),
    };
    let first = b
        .record_verification(verdict.clone())
        .await
        .expect("stored");
    assert!(matches!(first, VerificationAck::Stored(_)));
    let again = a
        .record_verification(verdict.clone())
        .await
        .expect("a retry");
    assert_eq!(again, VerificationAck::Duplicate);
    let mut other = verdict;
    other.accepted = Some("small".into());
    assert!(matches!(
        a.record_verification(other).await,
        Err(LogError::AlreadyVerified(_))
    ));
    assert!(b.planned(&id, Some("k")).await.expect("found").verified);
    let plain = request_id();
    a.record_decision(decision(&plain, Some("k"), 0.001))
        .expect("queued");
    assert!(matches!(
        b.planned(&plain, Some("k")).await,
        Err(LogError::NotPlanned(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_ids_are_scoped_to_their_request_and_reports_are_bounded() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let (a, b) = (store(&cluster, 1024).await, store(&cluster, 1024).await);
    let (ra, rb) = (request_id(), request_id());
    a.record_decision(decision(&ra, Some("tenant-a"), 0.001))
        .expect("queued");
    b.record_decision(decision(&rb, Some("tenant-b"), 0.001))
        .expect("queued");
    a.close().await.expect("flushed");
    b.close().await.expect("flushed");
    // One tenant's `fb-1` says nothing about another's.
    for (request, key) in [(&ra, "tenant-a"), (&rb, "tenant-b")] {
        let ack = b
            .record_feedback(report(request, "fb-1", Some(key), 0.0))
            .await
            .expect("stored");
        assert!(matches!(ack, FeedbackAck::Stored(_)), "{key}: {ack:?}");
    }
    for i in 2..=triage_log::MAX_REPORTS_PER_REQUEST {
        let ack = a
            .record_feedback(report(&ra, &format!("fb-{i}"), Some("tenant-a"), 0.0))
            .await
            .expect("within the bound");
        assert!(matches!(ack, FeedbackAck::Stored(_)));
    }
    assert!(matches!(
        b.record_feedback(report(&ra, "one-too-many", Some("tenant-a"), 0.0))
            .await,
        Err(LogError::TooManyReports(..))
    ));
    assert!(matches!(
        b.record_feedback(report(&ra, "fb-1", Some("tenant-a"), 0.0))
            .await,
        Ok(FeedbackAck::Duplicate(_))
    ));
}
