//! `POST /v1/chat/completions`: authenticate, parse, route through the engine, then call the
//! ranked models in order until one answers.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use triage_engine::{Charge, PlannedDrafts, RouteError, Routed, RoutingRequest};
use triage_guard::Caller;
use triage_log::ErrorKind;

use crate::Gateway;
use crate::call::{Answer, Failure, Reply, call};
use crate::error::{AttemptSummary, GatewayError};
use crate::holds::Holds;
use crate::judge::Pending;
use crate::openai::completion_text;
use crate::record::{Attempt, Outcome};
use crate::relay::{Relay, event_stream};
use crate::trace;
use crate::verify::{DraftsRun, draft_response, run_drafts, verify_headers};
use crate::wire::{self, ChatRequest, Target};

/// The handler.
pub async fn chat_completions(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    match answer(&gw, &headers, body, None, started).await {
        Ok(response) => response,
        Err(e) => gw.refuse("chat.completions", e),
    }
}

/// The handler at Azure's `/openai/deployments/{deployment}/chat/completions`: the deployment
/// names the model (whatever the body's `model` says).
pub async fn deployment_chat_completions(
    State(gw): State<Gateway>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    match answer(&gw, &headers, body, Some(&deployment), started).await {
        Ok(response) => response,
        Err(e) => gw.refuse("chat.completions", e),
    }
}

async fn answer(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
    deployment: Option<&str>,
    started: Instant,
) -> Result<Response, GatewayError> {
    let caller = gw.caller(headers)?;
    let mut body = gw.body(headers, body).await?;
    if let Some(model) = deployment {
        body = with_model(body, model);
    }
    answer_chat(gw, caller, &body, started).await
}

/// Answers a chat-completions `body` for `caller`: the one path every dialect's door takes
/// (the Messages and Responses doors translate into it and back out of it).
pub async fn answer_chat(
    gw: &Gateway,
    caller: Caller,
    body: &[u8],
    started: Instant,
) -> Result<Response, GatewayError> {
    let request = wire::parse(body, gw.service.limits(), &gw.aliases)?;
    if gw.upstreams.provider_count() == 0 {
        return Err(GatewayError::NoProviders);
    }
    if request.options.explain {
        trace::check(&caller, &gw.settings.explain_keys)?;
    }
    let routing = routing_request(gw, &request, caller)?;
    let routed = gw.service.route(&routing).await?;
    let response = serve_routed(gw, &request, &routing, &routed, started).await?;
    Ok(if request.options.explain {
        trace::attach(response, trace::trace(&routed)).await
    } else {
        response
    })
}

/// Calls the ranked models of a routed request in order (its drafts first, for a verify
/// request) until one answers.
async fn serve_routed(
    gw: &Gateway,
    request: &ChatRequest,
    routing: &RoutingRequest,
    routed: &Routed,
    started: Instant,
) -> Result<Response, GatewayError> {
    // Whatever way this returns, the holds no call took are given back (on drop).
    let mut holds = Holds::new(&gw.service, &routing.caller, routed, routing.charge);
    let order = attempt_order(gw, request, routed);
    let deadline = started + Duration::from_millis(gw.settings.deadline_ms);
    let mut failures = Vec::new();
    let mut upstream_time = Duration::ZERO;
    // A verify request runs its drafts first; the attempts below are its escalation.
    let mut drafted = drafts_first(gw, request, routing, routed, &mut holds, deadline).await;
    upstream_time += drafted
        .as_ref()
        .map_or(Duration::ZERO, |(_, run)| run.elapsed);
    let calls_before = drafted.as_ref().map_or(0, |(_, run)| run.calls);
    let exchange = Exchange {
        gw,
        request,
        routed,
        started,
    };
    if let Some((plan, run)) = &mut drafted
        && let Some(i) = run.returned.take()
    {
        return Ok(exchange.with_draft(plan, run, i));
    }
    for (i, model) in order.iter().enumerate() {
        if Instant::now() >= deadline {
            break;
        }
        // A model that already answered as a draft is not called again.
        if let Some((plan, run)) = &mut drafted
            && let Some(d) = run.answered.iter().position(|d| d.model == *model)
        {
            return Ok(exchange.with_draft(plan, run, d));
        }
        let Some(target) = gw.upstreams.target(model) else {
            continue;
        };
        let hold = match holds.call(model).await {
            Ok(hold) => hold,
            Err(e) => {
                // The key has no room left for this fallback's worst case: it is not made.
                failures.push(AttemptSummary {
                    model: model.clone(),
                    outcome: "budget_exhausted",
                    detail: e.to_string(),
                });
                break;
            }
        };
        let mut attempt = Attempt::start(
            &gw.service,
            &routing.caller,
            &routed.request_id,
            calls_before + i + 1,
            model,
            &target.provider.name,
            routed.outcome.input_tokens,
        );
        attempt.hold = hold.usd;
        let Answer { result, first_byte } = call(target, request, model, deadline, hold.cap).await;
        attempt.first_byte = first_byte;
        upstream_time += attempt.elapsed();
        let reply = match result {
            Ok(reply) => reply,
            Err(failure) => {
                failures.push(failed(&attempt, failure, &routed.request_id));
                continue;
            }
        };
        if i > 0 {
            gw.service.metrics().fallbacks.inc();
        }
        let judged = gw
            .judge
            .as_ref()
            .and_then(|j| j.sample(&routing.caller, routed, request, model));
        let mut response = respond(reply, attempt, routed, request.include_usage, judged);
        time_headers(gw, &mut response, routed, started, upstream_time);
        if let Some((plan, run)) = &drafted {
            verify_headers(&mut response, plan, run);
        }
        return Ok(response);
    }
    let unavailable = failures.iter().all(|f| f.outcome != "bad_response");
    Err(GatewayError::AllAttemptsFailed {
        attempts: failures,
        unavailable,
    })
}

/// `body` with its `model` set to `model` (a body that is not a JSON object is left for the
/// parser to refuse).
fn with_model(body: Bytes, model: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("model".into(), model.into());
            serde_json::to_vec(&fields).map_or(body, Bytes::from)
        }
        _ => body,
    }
}

/// The drafts of a verify request with a plan, called and judged.
async fn drafts_first<'r>(
    gw: &Gateway,
    request: &ChatRequest,
    routing: &RoutingRequest,
    routed: &'r Routed,
    holds: &mut Holds,
    deadline: Instant,
) -> Option<(&'r PlannedDrafts, DraftsRun)> {
    let plan = routed.outcome.drafts.as_ref()?.as_ref().ok()?;
    let run = run_drafts(gw, request, &routing.caller, routed, plan, holds, deadline).await;
    Some((plan, run))
}

/// Records a failed attempt and sums it up for the error a client sees if every attempt fails.
fn failed(attempt: &Attempt, failure: Failure, request_id: &str) -> AttemptSummary {
    attempt.finish(&Outcome::failed(&failure));
    tracing::info!(%request_id, model = %attempt.model, outcome = failure.outcome,
        detail = %failure.detail, "upstream attempt failed; trying the next model");
    AttemptSummary {
        model: attempt.model.clone(),
        outcome: failure.outcome,
        detail: failure.detail,
    }
}

/// Counts the gateway's own overhead and says where the time went (the W3C `Server-Timing`
/// header, for clients and benchmarks).
fn time_headers(
    gw: &Gateway,
    response: &mut Response,
    routed: &Routed,
    started: Instant,
    upstream_time: Duration,
) {
    let overhead = started
        .elapsed()
        .saturating_sub(upstream_time)
        .saturating_sub(Duration::from_micros(routed.outcome.encoder_us));
    gw.service
        .metrics()
        .gateway_overhead_seconds
        .observe(overhead.as_secs_f64());
    let timing = format!(
        "encoder;dur={:.3}, policy;dur={:.3}, route;dur={:.3}, upstream;dur={:.3}",
        routed.outcome.encoder_us as f64 / 1e3,
        routed.outcome.policy_us as f64 / 1e3,
        routed.total_us as f64 / 1e3,
        upstream_time.as_secs_f64() * 1e3,
    );
    if let Ok(v) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", v);
    }
}

/// The engine request: virtual models route in their mode; a model named by the caller is
/// pinned, with fallback only when the caller allows it (`triage.fallback`).
fn routing_request(
    gw: &Gateway,
    request: &ChatRequest,
    caller: Caller,
) -> Result<RoutingRequest, GatewayError> {
    let catalog = gw.service.engine().catalog();
    let (mode, pinned) = match &request.target {
        Target::Route(mode, _) => (*mode, None),
        Target::Named(model) => {
            if catalog.get(model).is_none() {
                return Err(RouteError::unknown_model(model).into());
            }
            if !caller.may_use(model) {
                return Err(RouteError::ModelNotPermitted {
                    key: caller.name().to_owned(),
                    model: model.clone(),
                }
                .into());
            }
            if gw.upstreams.target(model).is_none() {
                return Err(GatewayError::NotServed(model.clone()));
            }
            (Default::default(), Some(model.clone()))
        }
    };
    let mut preferences = request.options.preferences(mode);
    // What the request needs is required, said or not: no model without it is chosen or
    // falls back.
    for need in &request.needs {
        if !preferences.required_capabilities.contains(need) {
            preferences.required_capabilities.push(*need);
        }
    }
    if let (Some(model), false) = (&pinned, request.options.fallback) {
        preferences.allowed_models = vec![model.clone()];
    }
    preferences.validate(catalog, "triage.")?;
    Ok(RoutingRequest {
        conversation: request.conversation.clone(),
        preferences,
        session_id: request.options.session_id.clone().unwrap_or_default(),
        metadata: Default::default(),
        caller,
        session_affinity: !request.options.no_session_affinity,
        pinned,
        reachable: Some(gw.upstreams.reachable().clone()),
        strategy: request.strategy(),
        // The gateway makes the calls: a key with limits holds their worst case.
        charge: Charge::WorstCase {
            max_output_tokens: request.max_output_tokens(),
            max_input_tokens: request.max_input_tokens,
        },
        // A trace shows the predictions, so a request that asks for one waits for them.
        pass_through: !request.options.explain,
    })
}

/// The eligible candidates in ranked order, at most `gateway.max_attempts`.
fn attempt_order(gw: &Gateway, request: &ChatRequest, routed: &Routed) -> Vec<String> {
    let pinned_only = matches!(request.target, Target::Named(_)) && !request.options.fallback;
    let limit = if pinned_only {
        1
    } else {
        gw.settings.max_attempts
    };
    routed
        .outcome
        .decision
        .candidates
        .iter()
        .take_while(|c| c.exclusion.is_none())
        .take(limit)
        .map(|c| c.model.clone())
        .collect()
}

/// The client's response to `reply`; a whole answer goes to the judge (`judged`) now, a
/// streamed one when its stream ends.
fn respond(
    reply: Reply,
    attempt: Attempt,
    routed: &Routed,
    include_usage: bool,
    judged: Option<Pending>,
) -> Response {
    let (model, attempts) = (attempt.model.clone(), attempt.number);
    let mut response = match reply {
        Reply::Complete { body, usage } => {
            let cost = attempt.finish(&Outcome::answered(usage, completion_text(&body)));
            if let Some(judged) = judged {
                judged.answered(completion_text(&body).to_owned());
            }
            let mut r = axum::Json(body).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{cost:.8}")) {
                r.headers_mut().insert("x-triage-cost-usd", v);
            }
            r
        }
        Reply::Refused { status, body } => {
            // The caller's own request was refused: its fault, not the model's.
            attempt.finish(&Outcome::unbilled(ErrorKind::Other, "client_error", None));
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Reply::Stream {
            first,
            rest,
            translator,
            usage,
        } => {
            let relay =
                Relay::new(first, rest, translator, usage, attempt, include_usage).judged(judged);
            event_stream(Body::from_stream(relay.into_stream()))
        }
    };
    identity_headers(&mut response, routed, &model, attempts);
    response
}

/// Who answered a routed request: its id, the model, the policy, the calls made, stickiness, and
/// how familiar the prompt was to the policy (and how far it trusted itself there).
fn identity_headers(response: &mut Response, routed: &Routed, model: &str, calls: usize) {
    let h = response.headers_mut();
    if let Some(f) = routed.outcome.familiarity {
        for (name, value) in [
            ("x-triage-familiarity", format!("{f:.4}")),
            ("x-triage-trust", format!("{:.4}", routed.outcome.trust)),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    for (name, value) in [
        ("x-triage-request-id", routed.request_id.as_str()),
        ("x-triage-model", model),
        (
            "x-triage-policy-version",
            routed.outcome.policy_version.as_str(),
        ),
        ("x-triage-attempts", &calls.to_string()),
        (
            "x-triage-sticky",
            if routed.outcome.sticky {
                "true"
            } else {
                "false"
            },
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
}

/// One request being answered, for the answers that come from its drafts.
struct Exchange<'a> {
    gw: &'a Gateway,
    request: &'a ChatRequest,
    routed: &'a Routed,
    /// When the request arrived.
    started: Instant,
}

impl Exchange<'_> {
    /// The answer of draft `i` (accepted, or the escalation model's own draft).
    fn with_draft(&self, plan: &PlannedDrafts, run: &mut DraftsRun, i: usize) -> Response {
        let draft = run.answered.swap_remove(i);
        let model = draft.model.clone();
        let request = self.request;
        let mut response = draft_response(draft, request.stream, request.include_usage);
        identity_headers(&mut response, self.routed, &model, run.calls);
        time_headers(
            self.gw,
            &mut response,
            self.routed,
            self.started,
            run.elapsed,
        );
        verify_headers(&mut response, plan, run);
        if let Ok(v) = HeaderValue::from_str(&format!("{:.8}", run.cost_usd)) {
            response.headers_mut().insert("x-triage-cost-usd", v);
        }
        response
    }
}
