//! `triage-verify` (or `"triage": {"strategy": "verify"}`): the plan's cheap drafts first, in
//! parallel, then the acceptor's verdict through the engine's `Service::verify` (the same call
//! gRPC `Verify` makes, so the verdict is logged alike), then either the accepted draft or the
//! escalation, which the handler's ordinary attempt loop answers (streamed as it arrives).
//!
//! Drafts are always asked for whole (a draft is judged as a whole; a streaming client gets an
//! accepted draft replayed as chunks). Each draft call writes its own feedback record and is
//! charged like any other call. A draft that fails, comes back empty or is refused leaves
//! nothing to judge: the request escalates without a verdict (`x-triage-verdict: unverified`).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use triage_engine::{PlannedDrafts, Routed};
use triage_guard::Caller;
use triage_log::ErrorKind;
use triage_policy::verify::DraftAnswer;

use crate::Gateway;
use crate::call::{Answer, Reply, call};
use crate::holds::{CallHold, Holds};
use crate::openai::{Usage, chunk, completion_text, now_secs, usage_chunk};
use crate::record::{Attempt, Outcome};
use crate::relay::{DONE, event_stream, sse};
use crate::wire::ChatRequest;

/// A draft that answered.
pub struct Drafted {
    /// The model.
    pub model: String,
    /// Its chat completion (named after the catalog model).
    pub body: Value,
    /// Its answer text.
    pub text: String,
    /// Its token counts.
    pub usage: Usage,
}

/// What the drafts came to.
pub struct DraftsRun {
    /// The drafts that answered, in the plan's order.
    pub answered: Vec<Drafted>,
    /// Upstream calls made (each with its own feedback record).
    pub calls: usize,
    /// What they cost together, USD.
    pub cost_usd: f64,
    /// Wall time of the drafts (they run in parallel).
    pub elapsed: Duration,
    /// The verdict: `accepted`, `escalated`, or `unverified` (a draft left nothing to judge).
    pub verdict: &'static str,
    /// The draft to return, when one is (accepted, or the escalation model was a draft).
    pub returned: Option<usize>,
    /// The acceptor's probability, when it judged.
    pub probability: Option<f64>,
}

/// Calls the planned drafts in parallel and asks the acceptor about them.
pub async fn run_drafts(
    gw: &Gateway,
    request: &ChatRequest,
    caller: &Caller,
    routed: &Routed,
    plan: &PlannedDrafts,
    holds: &mut Holds,
    deadline: Instant,
) -> DraftsRun {
    let started = Instant::now();
    let whole = request.unstreamed();
    // Each draft takes the share the decision held for it.
    let held: Vec<CallHold> = plan
        .drafts
        .iter()
        .map(|model| holds.planned(model).unwrap_or_default())
        .collect();
    let calls = plan
        .drafts
        .iter()
        .zip(held)
        .enumerate()
        .map(|(i, (model, hold))| {
            let draft = Draft {
                number: i + 1,
                model,
                hold,
            };
            call_draft(gw, &whole, caller, routed, draft, deadline)
        });
    let results = futures::future::join_all(calls).await;
    let cost_usd = results.iter().map(|(_, cost)| cost).sum();
    let answered: Vec<Drafted> = results.into_iter().filter_map(|(d, _)| d).collect();
    let mut run = DraftsRun {
        calls: plan.drafts.len(),
        cost_usd,
        elapsed: started.elapsed(),
        verdict: "unverified",
        returned: None,
        probability: None,
        answered: Vec::new(),
    };
    if answered.len() < plan.drafts.len() || answered.iter().any(|d| d.text.trim().is_empty()) {
        run.answered = answered;
        return run;
    }
    let drafts: Vec<DraftAnswer<'_>> = answered
        .iter()
        .map(|d| DraftAnswer {
            model: &d.model,
            text: &d.text,
        })
        .collect();
    match gw.service.verify(caller, &routed.request_id, &drafts).await {
        Ok(verdict) => {
            run.probability = Some(verdict.probability);
            let returned = verdict
                .accepted
                .as_ref()
                .or(verdict.escalation.first().filter(|_| verdict.drafted));
            run.returned = returned.and_then(|m| answered.iter().position(|d| d.model == *m));
            run.verdict = verdict.outcome();
        }
        Err(e) => {
            // A draft the acceptor cannot read (too long, say) is no reason to fail the
            // request: the escalation answers it.
            tracing::info!(request_id = %routed.request_id, error = %e,
                "drafts could not be judged; escalating");
        }
    }
    run.answered = answered;
    run
}

/// One draft to call: its number among the request's calls, its model and its hold.
struct Draft<'a> {
    number: usize,
    model: &'a str,
    hold: CallHold,
}

/// One draft call: its answer (when it gave one) and its cost.
async fn call_draft(
    gw: &Gateway,
    request: &ChatRequest,
    caller: &Caller,
    routed: &Routed,
    draft: Draft<'_>,
    deadline: Instant,
) -> (Option<Drafted>, f64) {
    let Draft {
        number,
        model,
        hold,
    } = draft;
    let Some(target) = gw.upstreams.target(model) else {
        return (None, 0.0);
    };
    let mut attempt = Attempt::start(
        &gw.service,
        caller,
        &routed.request_id,
        number,
        model,
        &target.provider.name,
        routed.outcome.input_tokens,
    );
    attempt.hold = hold.usd;
    let Answer { result, first_byte } = call(target, request, model, deadline, hold.cap).await;
    attempt.first_byte = first_byte;
    match result {
        Ok(Reply::Complete { body, usage }) => {
            let text = completion_text(&body).to_owned();
            let cost = attempt.finish(&Outcome::answered(usage, &text));
            let drafted = Drafted {
                model: model.to_owned(),
                body,
                text,
                usage,
            };
            (Some(drafted), cost)
        }
        Ok(Reply::Refused { .. }) => {
            attempt.finish(&Outcome::unbilled(ErrorKind::Other, "client_error", None));
            (None, 0.0)
        }
        Ok(Reply::Stream { .. }) => {
            // Drafts are asked for whole; a stream here means the upstream ignored that.
            attempt.finish(&Outcome::unbilled(ErrorKind::Other, "bad_response", None));
            (None, 0.0)
        }
        Err(failure) => {
            attempt.finish(&Outcome::failed(&failure));
            (None, 0.0)
        }
    }
}

/// A draft as the client's answer: its completion, or replayed as chunks when streaming.
pub fn draft_response(draft: Drafted, stream: bool, include_usage: bool) -> Response {
    if !stream {
        return axum::Json(draft.body).into_response();
    }
    let id = draft
        .body
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("chatcmpl-triage")
        .to_owned();
    let created = now_secs();
    let finish = draft
        .body
        .pointer("/choices/0/finish_reason")
        .cloned()
        .unwrap_or_else(|| "stop".into());
    let mut events = vec![
        chunk(
            &id,
            &draft.model,
            created,
            serde_json::json!({"role": "assistant", "content": draft.text}),
            Value::Null,
        ),
        chunk(&id, &draft.model, created, serde_json::json!({}), finish),
    ];
    if include_usage {
        events.push(usage_chunk(&id, &draft.model, created, &draft.usage));
    }
    let mut frames: Vec<Result<Bytes, Infallible>> = events.iter().map(|e| Ok(sse(e))).collect();
    frames.push(Ok(Bytes::from_static(DONE)));
    event_stream(Body::from_stream(futures::stream::iter(frames)))
}

/// The verify headers: the drafts, the verdict and the acceptor's probability.
pub fn verify_headers(response: &mut Response, plan: &PlannedDrafts, run: &DraftsRun) {
    let h = response.headers_mut();
    let probability = run.probability.map(|p| format!("{p:.4}"));
    let cost = format!("{:.8}", run.cost_usd);
    for (name, value) in [
        ("x-triage-drafts", Some(plan.drafts.join(","))),
        ("x-triage-verdict", Some(run.verdict.to_owned())),
        ("x-triage-accept-probability", probability),
        ("x-triage-drafts-cost-usd", Some(cost)),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
}
