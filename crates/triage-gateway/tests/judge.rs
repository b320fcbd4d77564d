//! The judge over real servers: the gateway serves traffic with `[judge]` on, the local upstream
//! answers both the routed models and the judge (its verdicts scripted by the answer it is
//! shown), and the durable log is read back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{FRANCE, PROOF, Router, header, sse_data, start_with, user};
use serde_json::{Value, json};
use triage_core::Settings;
use triage_log::{FeedbackRecord, FeedbackSource, LogRecord};
use triage_testkit::Behaviour;

/// The judge's name at the upstream (not a catalog model: its faults touch nothing else).
const JUDGE: &str = "judge-model";

fn judge_on(s: &mut Settings, shadow_rate: f64) {
    s.judge.provider = Some("openai".into());
    s.judge.upstream_model = Some(JUDGE.into());
    s.judge.input_usd_per_1m = 0.15;
    s.judge.output_usd_per_1m = 0.6;
    s.judge.sample_rate = 1.0;
    s.judge.shadow_rate = shadow_rate;
    s.judge.keys = vec!["*".into()];
    s.judge.timeout_ms = 2_000;
}

async fn start(tweak: impl FnOnce(&mut Settings)) -> (Router, PathBuf) {
    let mut dir = PathBuf::new();
    let router = start_with(Behaviour::default(), |s| {
        tweak(s);
        dir = s.log.dir.clone();
    })
    .await;
    (router, dir)
}

/// Scripts the judge: an answer by `model` (the upstream's answers start with `[model]`; `""`:
/// any model) gets `verdict`.
async fn verdict_for(router: &Router, model: &str, verdict: &str) {
    let shown = match model {
        "" => "[Answer]\n[".to_owned(),
        model => format!("[Answer]\n[{model}]"),
    };
    let r = router
        .http
        .post(format!("http://{}/_record", router.upstream.addr))
        .json(&json!({"answers": [{"model": JUDGE, "contains": shown, "text": verdict}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// The judge's records in the log once `done` says so (or after 10 s).
async fn judge_records(
    dir: &Path,
    done: impl Fn(&[FeedbackRecord]) -> bool,
) -> Vec<FeedbackRecord> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (records, _) = triage_log::read_log(dir).expect("log reads");
        let judged: Vec<FeedbackRecord> = records
            .into_iter()
            .filter_map(|r| match r {
                LogRecord::Feedback(f) if f.source.is_judge() => Some(f),
                LogRecord::Feedback(_) | LogRecord::Decision(_) | LogRecord::Verification(_) => {
                    None
                }
            })
            .collect();
        if done(&judged) || Instant::now() > until {
            return judged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(router: &Router, line_start: &str) -> f64 {
    router
        .metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A quality-mode request (the chosen model has cheaper candidates to shadow); the answer's
/// text and the response's request id and model.
async fn ask(router: &Router, prompt: &str, stream: bool) -> (String, String, String) {
    let r = router
        .chat(json!({"model": "triage-quality", "messages": user(prompt), "stream": stream}))
        .await;
    assert_eq!(r.status(), 200);
    let (id, model) = (
        header(&r, "x-triage-request-id").to_owned(),
        header(&r, "x-triage-model").to_owned(),
    );
    let body = r.text().await.unwrap();
    let text = if stream {
        sse_data(&body)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    } else {
        let v: Value = serde_json::from_str(&body).unwrap();
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (text, id, model)
}

#[tokio::test]
async fn verdicts_and_shadow_answers_land_on_their_decisions_and_never_reach_a_client() {
    let (router, dir) = start(|s| judge_on(s, 1.0)).await;
    let catalog = router.model_names();
    // Every model's answer is rated 8 of 10 (quality 7/9), except the frontier one's: 10.
    for m in &catalog {
        let score = if m == "gpt-4o-2024-08-06" { 10 } else { 8 };
        verdict_for(
            &router,
            m,
            &format!("{{\"score\": {score}, \"reason\": \"ok\"}}"),
        )
        .await;
    }
    let mut asked = Vec::new();
    for (prompt, stream) in [
        (FRANCE, false),
        (PROOF, false),
        ("Write a haiku about rain.", true),
    ] {
        let (text, id, model) = ask(&router, prompt, stream).await;
        // The client sees the chosen model's answer, never a shadow's.
        assert!(
            text.starts_with(&format!("[{model}]")),
            "{text:?} from {model}"
        );
        asked.push((id, model));
    }
    let records = judge_records(&dir, |r| r.len() >= 2 * asked.len()).await;
    for (id, model) in &asked {
        let on: Vec<&FeedbackRecord> = records.iter().filter(|f| f.request_id == *id).collect();
        let judged = on
            .iter()
            .find(|f| f.source == FeedbackSource::Judge)
            .unwrap_or_else(|| panic!("no verdict on {id}: {records:?}"));
        assert_eq!(judged.model, *model);
        let expected = if model == "gpt-4o-2024-08-06" {
            1.0
        } else {
            7.0 / 9.0
        };
        assert!((judged.quality.unwrap() - expected).abs() < 1e-9);
        assert_eq!(judged.cost_usd, 0.0, "the judge never charges the caller");
        let mark = judged.judged.as_ref().unwrap();
        assert_eq!(mark.judge_model, JUDGE);
        assert_eq!(mark.rubric.len(), 16);
        assert!(mark.spend_usd > 0.0);
        // The shadow: another model, cheaper by the decision's predictions, with its real
        // cost and the probability it was picked with.
        let shadow = on
            .iter()
            .find(|f| f.source == FeedbackSource::Shadow)
            .unwrap_or_else(|| panic!("no shadow on {id}: {records:?}"));
        assert_ne!(shadow.model, *model);
        assert!(shadow.cost_usd > 0.0 && shadow.output_tokens > 0);
        let p = shadow.judged.as_ref().unwrap().propensity.unwrap();
        assert!(p > 0.0 && p <= 1.0, "{p}");
    }
    assert!(metric(&router, "triage_judge_verdicts_total{source=\"judge\"}") >= 3.0);
    assert!(metric(&router, "triage_judge_verdicts_total{source=\"shadow\"}") >= 3.0);
    assert!(metric(&router, "triage_judge_spend_usd_total") > 0.0);
}

#[tokio::test]
async fn a_judge_that_fails_hangs_or_babbles_changes_nothing_for_callers() {
    let (router, dir) = start(|s| {
        judge_on(s, 0.0);
        s.judge.timeout_ms = 300;
        s.judge.max_in_flight = 1;
        s.judge.queue = 1;
    })
    .await;
    // A 500, then an answer after the judge's timeout, then (unscripted) prose with no verdict.
    router
        .script(
            JUDGE,
            json!([{"kind": "status", "status": 500}, {"kind": "slow_first_byte", "ms": 1500}]),
        )
        .await;
    for i in 0..8 {
        let started = Instant::now();
        let (text, _, model) = ask(&router, &format!("{FRANCE} ({i})"), i % 2 == 1).await;
        assert!(text.starts_with(&format!("[{model}]")));
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "the judge added latency"
        );
    }
    let until = Instant::now() + Duration::from_secs(10);
    while metric(&router, "triage_judge_dropped_total{reason=\"failed\"}") < 2.0
        || metric(&router, "triage_judge_unparsable_total") < 1.0
    {
        assert!(Instant::now() < until, "{}", router.metrics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The queue holds one job and one judge call runs at a time: a burst overflows it.
    assert!(metric(&router, "triage_judge_dropped_total{reason=\"queue_full\"}") >= 1.0);
    let records = judge_records(&dir, |_| false).await;
    assert!(
        records.is_empty(),
        "unreadable verdicts recorded: {records:?}"
    );
}

#[tokio::test]
async fn the_daily_cap_stops_judging() {
    let (router, dir) = start(|s| {
        judge_on(s, 0.0);
        s.judge.daily_usd = 1e-9;
        s.judge.max_in_flight = 1;
    })
    .await;
    verdict_for(&router, "", "{\"score\": 7}").await;
    ask(&router, FRANCE, false).await;
    judge_records(&dir, |r| !r.is_empty()).await;
    for i in 0..3 {
        ask(&router, &format!("{PROOF} ({i})"), false).await;
    }
    let until = Instant::now() + Duration::from_secs(10);
    while metric(&router, "triage_judge_dropped_total{reason=\"daily_cap\"}") < 3.0 {
        assert!(Instant::now() < until, "{}", router.metrics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        judge_records(&dir, |_| false).await.len(),
        1,
        "{}",
        router.metrics()
    );
    assert_eq!(router.calls(JUDGE).await, 1);
}
