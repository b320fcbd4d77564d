//! `triage eval --live URL`: the evaluated prompts sent through a running gateway, once per
//! built-in mode, each asking for its routing trace, so that eval's decisions can be set beside
//! serving's (see `triage_train::eval::parity`).
//!
//! Each prompt goes as a one-turn chat completion to `model = "triage"`, with session affinity
//! off (an earlier mode's choice must not carry over) and no `max_tokens` (the table's prompts
//! carry none). The key, when the gateway wants one, comes from an environment variable so that
//! it never shows in the process list; it must be an admin key or one listed in
//! `gateway.explain_keys`, as the trace is only shown to those.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use triage_core::Mode;
use triage_train::eval::parity::{Scored, ServedDecision};

/// Where and how to reach the gateway.
pub struct Live {
    /// The gateway's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// The API key to send, if any.
    pub key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
}

/// One request's outcome: the decision, or why there is none.
type Answer = Result<ServedDecision, String>;

/// What the gateway decided for every text in every mode: `[mode][text]`.
pub fn fetch(live: &Live, texts: &[&str], modes: &[Mode]) -> anyhow::Result<Vec<Vec<Answer>>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    runtime.block_on(fetch_all(live, texts, modes))
}

async fn fetch_all(
    live: &Live,
    texts: &[&str],
    modes: &[Mode],
) -> anyhow::Result<Vec<Vec<Answer>>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .context("cannot build an HTTP client")?;
    let endpoint = format!("{}/v1/chat/completions", live.url.trim_end_matches('/'));
    // One request first: a wrong URL, key or missing trace permission is one clear error, not
    // thousands. Its answer is the first mode's first.
    let mut probe = match (texts.first(), modes.first()) {
        (Some(first), Some(mode)) => Some(
            ask(&client, &endpoint, live.key.as_deref(), first, *mode)
                .await
                .map_err(|e| anyhow::anyhow!("--live {}: {e}", live.url))?,
        ),
        _ => None,
    };
    let mut all = Vec::with_capacity(modes.len());
    for &mode in modes {
        let done: Vec<Answer> = probe.take().map(Ok).into_iter().collect();
        let rest: Vec<Answer> = futures::stream::iter(&texts[done.len()..])
            .map(|text| ask(&client, &endpoint, live.key.as_deref(), text, mode))
            .buffered(live.concurrency.max(1))
            .collect()
            .await;
        all.push(done.into_iter().chain(rest).collect());
    }
    Ok(all)
}

/// Times one request is sent while the gateway sheds it under load.
const MAX_SENDS: u32 = 8;

/// Sends `text` in `mode` and reads the decision from the routing trace. A request shed under
/// load (429) was not decided: it is sent again after the wait the gateway asks for (else a
/// doubling backoff), as the providers' SDKs do.
async fn ask(
    client: &reqwest::Client,
    endpoint: &str,
    key: Option<&str>,
    text: &str,
    mode: Mode,
) -> Answer {
    let body = json!({
        "model": "triage",
        "messages": [{"role": "user", "content": text}],
        "triage": {"mode": mode.to_string(), "explain": true, "no_session_affinity": true},
    });
    let mut shed = 0;
    loop {
        let mut request = client.post(endpoint).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let metered = header("x-triage-cost-usd");
        let retry_after = header("retry-after");
        let text = response.text().await.map_err(|e| e.to_string())?;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS && shed + 1 < MAX_SENDS {
            shed += 1;
            let backoff = 0.1 * f64::from(1u32 << shed.min(6));
            let wait = retry_after.unwrap_or(backoff).clamp(0.0, 5.0);
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            continue;
        }
        if !status.is_success() {
            let clipped: String = text.chars().take(300).collect();
            return Err(format!("HTTP {status}: {clipped}"));
        }
        let answer: Value =
            serde_json::from_str(&text).map_err(|e| format!("the answer is not JSON: {e}"))?;
        let mut decided = decision(&answer, metered)?;
        decided.shed = shed;
        return Ok(decided);
    }
}

/// The decision in a whole answer's `triage` trace.
fn decision(answer: &Value, metered_cost_usd: Option<f64>) -> Answer {
    let trace = answer.get("triage").ok_or(
        "the answer carries no routing trace: use an admin key or one listed in \
         gateway.explain_keys (set its environment variable with --live-key-env)",
    )?;
    let text = |field: &str| trace.get(field).and_then(Value::as_str).map(str::to_owned);
    let chosen = text("chosen").ok_or("the trace names no chosen model")?;
    let candidates = trace
        .get("candidates")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    Some(Scored {
                        model: c.get("model")?.as_str()?.to_owned(),
                        quality: c.get("quality")?.as_f64()?,
                        cost_usd: c.get("cost_usd")?.as_f64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ServedDecision {
        chosen,
        answered_by: text("answered_by"),
        input_tokens: trace
            .get("input_tokens")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok()),
        policy_version: text("policy_version").unwrap_or_default(),
        candidates,
        metered_cost_usd,
        shed: 0,
        explored: trace
            .get("explored")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_becomes_a_decision_and_its_absence_an_instruction() {
        let answer = json!({"triage": {"chosen": "a", "answered_by": "b", "input_tokens": 12,
            "policy_version": "v1", "candidates": [{"model": "a", "quality": 0.5, "cost_usd": 0.1}]}});
        let d = decision(&answer, Some(0.2)).expect("a decision");
        assert_eq!(
            (d.chosen.as_str(), d.answered_by.as_deref()),
            ("a", Some("b"))
        );
        assert_eq!((d.input_tokens, d.candidates.len()), (Some(12), 1));
        let missing = decision(&json!({"choices": []}), None).expect_err("no trace");
        assert!(missing.contains("explain_keys"), "{missing}");
    }
}
