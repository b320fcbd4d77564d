//! `triage-verify` live: the gateway calls the plan's two drafts, which answer with their
//! recorded responses from the ZeroEval table (`zeroeval_responses.parquet`), asks the acceptor,
//! and returns the accepted draft or streams the escalation; every call is priced in the log.
//!
//! The acceptor trusts the drafts' agreement (`policy_trusting_agreement`), so what is checked is
//! the wiring and the generic answer extraction on real responses, not a trained head's
//! judgement of one example. Needs `../shared/data/` (or `$TRIAGE_SHARED_DATA`); skips, saying
//! so, where it is absent.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{header, root, sse_data, start_with, user};
use polars::prelude::*;
use serde_json::{Value, json};
use triage_core::answer::extract_answer;
use triage_log::{FeedbackRecord, LogRecord, VerificationRecord};
use triage_testkit::Behaviour;

const DRAFTS: [&str; 2] = ["deepseek-v2.5-0908", "gpt-4o-mini-2024-07-18"];
/// Prompts longer than this are passed over (the default request limits are far larger; short
/// prompts keep the test quick).
const MAX_PROMPT_CHARS: usize = 1500;

fn shared(name: &str) -> Option<PathBuf> {
    triage_testkit::shared_data_file(&root(), name)
}

/// One prompt with both drafts' recorded responses.
struct Recorded {
    prompt: String,
    responses: [String; 2],
}

/// A prompt whose two recorded drafts agree (by the benchmark's own key and by the generic
/// extraction) and one where they disagree by both.
fn recorded_pair(responses: PathBuf, table: PathBuf) -> (Recorded, Recorded) {
    let df = read(
        &responses,
        &["prompt_id", "model", "response", "final_answer"],
    );
    let text = |name: &str| -> Vec<String> {
        df.column(name)
            .expect("column")
            .str()
            .expect("text")
            .iter()
            .map(|v| v.unwrap_or_default().to_owned())
            .collect()
    };
    let (ids, models, texts, finals) = (
        text("prompt_id"),
        text("model"),
        text("response"),
        text("final_answer"),
    );
    let mut by_prompt: std::collections::BTreeMap<&str, [Option<usize>; 2]> = Default::default();
    for (row, model) in models.iter().enumerate() {
        if let Some(slot) = DRAFTS.iter().position(|m| m == model) {
            by_prompt.entry(ids[row].as_str()).or_default()[slot] = Some(row);
        }
    }
    let key = |row: usize| extract_answer(&texts[row]).map(|a| a.key);
    let prompts = prompt_texts(table);
    let mut agree = None;
    let mut differ = None;
    for (id, rows) in &by_prompt {
        let ([Some(a), Some(b)], Some(prompt)) = (rows, prompts.get(*id)) else {
            continue;
        };
        if prompt.chars().count() > MAX_PROMPT_CHARS
            || finals[*a].is_empty()
            || finals[*b].is_empty()
        {
            continue;
        }
        let same_final = finals[*a] == finals[*b];
        let (ka, kb) = (key(*a), key(*b));
        let recorded = || Recorded {
            prompt: prompt.clone(),
            responses: [texts[*a].clone(), texts[*b].clone()],
        };
        if same_final && ka.is_some() && ka == kb && agree.is_none() {
            agree = Some(recorded());
        } else if !same_final && ka.is_some() && kb.is_some() && ka != kb && differ.is_none() {
            differ = Some(recorded());
        }
    }
    (
        agree.expect("an agreeing pair in the table"),
        differ.expect("a disagreeing pair in the table"),
    )
}

/// `columns` of a Parquet file.
fn read(path: &std::path::Path, columns: &[&str]) -> DataFrame {
    let file = std::fs::File::open(path).expect("opens");
    ParquetReader::new(file)
        .with_columns(Some(columns.iter().map(|c| (*c).to_owned()).collect()))
        .finish()
        .expect("parquet reads")
}

/// Prompt text by prompt id.
fn prompt_texts(table: PathBuf) -> std::collections::HashMap<String, String> {
    let df = read(&table, &["prompt_id", "prompt"]);
    let ids = df
        .column("prompt_id")
        .expect("ids")
        .str()
        .expect("text")
        .clone();
    let prompts = df
        .column("prompt")
        .expect("prompts")
        .str()
        .expect("text")
        .clone();
    ids.iter()
        .zip(prompts.iter())
        .filter_map(|(i, p)| Some((i?.to_owned(), p?.to_owned())))
        .collect()
}

/// Both doors serving the bundled policy with the agreement-trusting acceptor, and the log's
/// directory.
async fn start_trusting_agreement() -> (common::Router, PathBuf) {
    let mut log_dir = PathBuf::new();
    let router = start_with(Behaviour::default(), |s| {
        s.policy.path = triage_testkit::policy_trusting_agreement(
            &root().join("models/policy.json"),
            DRAFTS,
            &s.log.dir,
        )
        .expect("test policy written");
        log_dir = s.log.dir.clone();
    })
    .await;
    (router, log_dir)
}

/// The log's records, once `done` says everything expected has been written.
async fn log_until(dir: &std::path::Path, done: impl Fn(&[LogRecord]) -> bool) -> Vec<LogRecord> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (records, _) = triage_log::read_log(dir).expect("log reads");
        if done(&records) || Instant::now() > until {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn calls_for<'a>(records: &'a [LogRecord], request_id: &str) -> Vec<&'a FeedbackRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Feedback(f) if f.request_id == request_id => Some(f),
            LogRecord::Feedback(_) | LogRecord::Decision(_) | LogRecord::Verification(_) => None,
        })
        .collect()
}

fn verdict_for<'a>(records: &'a [LogRecord], request_id: &str) -> Option<&'a VerificationRecord> {
    records.iter().find_map(|r| match r {
        LogRecord::Verification(v) if v.request_id == request_id => Some(v),
        LogRecord::Verification(_) | LogRecord::Decision(_) | LogRecord::Feedback(_) => None,
    })
}

#[tokio::test]
async fn triage_verify_accepts_agreeing_drafts_and_streams_the_escalation_otherwise() {
    let (Some(responses), Some(table)) = (
        shared("zeroeval_responses.parquet"),
        shared("zeroeval.parquet"),
    ) else {
        return;
    };
    let (agree, differ) = recorded_pair(responses, table);
    let (router, log_dir) = start_trusting_agreement().await;
    let answers: Vec<Value> = [&agree, &differ]
        .iter()
        .flat_map(|r| {
            DRAFTS
                .iter()
                .zip(&r.responses)
                .map(|(model, text)| json!({"model": model, "prompt": r.prompt, "text": text}))
        })
        .collect();
    let recorded = router
        .http
        .post(format!("http://{}/_record", router.upstream.addr))
        .json(&json!({"answers": answers}))
        .send()
        .await
        .expect("upstream answers");
    assert!(recorded.status().is_success());

    // Agreeing drafts: the accepted draft is the answer, and nothing else is called.
    let r = router
        .chat(
            json!({"model": "triage-verify", "messages": user(&agree.prompt),
                     "triage": {"mode": "quality"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-verdict"), "accepted");
    assert_eq!(header(&r, "x-triage-drafts"), DRAFTS.join(","));
    assert_eq!(header(&r, "x-triage-attempts"), "2");
    let accepted_id = header(&r, "x-triage-request-id").to_owned();
    let model = header(&r, "x-triage-model").to_owned();
    let slot = DRAFTS
        .iter()
        .position(|m| *m == model)
        .expect("a draft answered");
    let cost: f64 = header(&r, "x-triage-cost-usd").parse().expect("a cost");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["model"], model);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        agree.responses[slot]
    );
    for draft in DRAFTS {
        assert_eq!(router.calls(draft).await, 1, "{draft} drafted once");
    }

    // Disagreeing drafts, streamed: the escalation streams as it arrives.
    let r = router
        .chat(
            json!({"model": "triage", "messages": user(&differ.prompt), "stream": true,
                     "triage": {"mode": "quality", "strategy": "verify"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-verdict"), "escalated");
    assert_eq!(header(&r, "x-triage-attempts"), "3");
    let escalated_id = header(&r, "x-triage-request-id").to_owned();
    let escalation = header(&r, "x-triage-model").to_owned();
    assert!(!DRAFTS.contains(&escalation.as_str()), "{escalation}");
    let text = r.text().await.expect("stream");
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        streamed.starts_with(&format!("[{escalation}]")),
        "{streamed}"
    );
    assert_eq!(router.calls(&escalation).await, 1);

    // Every call wrote its own priced record; the verdicts kept the drafts' evidence.
    let records = log_until(&log_dir, |r| {
        calls_for(r, &accepted_id).len() == 2 && calls_for(r, &escalated_id).len() == 3
    })
    .await;
    let accepted_calls = calls_for(&records, &accepted_id);
    assert_eq!(accepted_calls.len(), 2);
    assert!(
        accepted_calls.iter().all(|f| f.cost_usd > 0.0),
        "{accepted_calls:?}"
    );
    let logged: f64 = accepted_calls.iter().map(|f| f.cost_usd).sum();
    assert!((logged - cost).abs() < 1e-7, "{logged} vs header {cost}");
    let escalated_calls = calls_for(&records, &escalated_id);
    let mut called: Vec<&str> = escalated_calls.iter().map(|f| f.model.as_str()).collect();
    called.sort_unstable();
    let mut expected = vec![DRAFTS[0], DRAFTS[1], escalation.as_str()];
    expected.sort_unstable();
    assert_eq!(called, expected);
    assert!(
        escalated_calls.iter().all(|f| f.cost_usd > 0.0),
        "{escalated_calls:?}"
    );
    let accepted = verdict_for(&records, &accepted_id).expect("verdict logged");
    assert_eq!(accepted.accepted.as_deref(), Some(model.as_str()));
    assert!(accepted.drafts.iter().all(|d| d.answer.is_some()));
    let escalated = verdict_for(&records, &escalated_id).expect("verdict logged");
    assert_eq!(escalated.escalated_to.as_deref(), Some(escalation.as_str()));
}

#[tokio::test]
async fn a_failed_draft_escalates_without_a_verdict() {
    let (router, log_dir) = start_trusting_agreement().await;
    router
        .script(DRAFTS[1], json!([{"kind": "status", "status": 503}]))
        .await;
    let r = router
        .chat(
            json!({"model": "triage-verify", "messages": user("What is 17 * 3?"),
                     "triage": {"mode": "quality"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-triage-verdict"), "unverified");
    let id = header(&r, "x-triage-request-id").to_owned();
    let model = header(&r, "x-triage-model").to_owned();
    assert!(!DRAFTS.contains(&model.as_str()));
    let records = log_until(&log_dir, |r| calls_for(r, &id).len() == 3).await;
    let calls = calls_for(&records, &id);
    assert_eq!(calls.len(), 3, "two drafts and the escalation: {calls:?}");
    assert!(
        calls
            .iter()
            .any(|f| f.model == DRAFTS[1] && f.cost_usd == 0.0)
    );
    assert!(verdict_for(&records, &id).is_none());
}
