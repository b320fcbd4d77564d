//! A report is applied once it is durable, even when its caller stops waiting first (a client
//! deadline, a dropped connection): its retry would be a duplicate, so nothing else would ever
//! apply it.

use std::future::Future;
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use triage_core::{Conversation, Preferences, Settings};
use triage_engine::{RoutingEngine, RoutingRequest, startup};
use triage_guard::Caller;
use triage_log::{ErrorKind, FeedbackRecord};

#[tokio::test]
async fn a_report_whose_caller_gave_up_is_still_applied() {
    let mut settings = Settings::load(None).expect("defaults");
    let dir = tempfile::tempdir().expect("tempdir");
    settings.log.dir = dir.path().to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let engine = RoutingEngine::from_settings(&settings, &root).expect("engine");
    let service = startup::open(engine, &settings, None).await.expect("opens");
    let request = RoutingRequest::anonymous(
        Conversation::single_user("What is the capital of France?").expect("valid"),
        Preferences::default(),
    );
    let routed = service.route(&request).await.expect("routes");
    let model = routed.outcome.decision.chosen().model.clone();
    let report = FeedbackRecord {
        request_id: routed.request_id.clone(),
        feedback_id: "gave-up".into(),
        time_ms: triage_engine::feedback::now_ms(),
        model: model.clone(),
        quality: None,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
        latency_ms: 0,
        error: ErrorKind::RateLimited,
        retry_after_ms: Some(60_000),
        first_byte_ms: None,
        tokens_estimated: false,
        api_key: None,
        hold_usd: None,
        source: Default::default(),
        judged: None,
    };
    // Polled once (the report is queued), then dropped before it is durable.
    let caller = Caller::default();
    {
        let mut call = std::pin::pin!(service.feedback(&caller, report.clone()));
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "not durable at once: {first:?}");
    }
    let health = &service.engine().controls().health;
    let mut state = health.state(&model);
    for _ in 0..100 {
        if state == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        state = health.state(&model);
    }
    assert_eq!(state, "open", "the rate limit was applied once durable");
    let duplicate = service.feedback(&caller, report).await.expect("retry");
    assert!(duplicate, "the retry finds it stored");
}
