//! Reasoning models get only what their provider accepts: against an upstream that refuses
//! what real providers refuse (OpenAI's reasoning models `max_tokens`, `temperature`, `top_p`;
//! other models `reasoning_effort`; Anthropic's thinking beside sampling settings), requests
//! written for either kind are answered by both kinds, in every dialect, and hidden reasoning
//! tokens are priced as output.

mod common;

use common::{FRANCE, Router, header, start_with};
use serde_json::{Value, json};
use triage_testkit::{Behaviour, HIDDEN_REASONING_TOKENS};

const O_MINI: &str = "gpt-4o-mini-2024-07-18";
const GPT4O: &str = "gpt-4o-2024-08-06";
const HAIKU: &str = "claude-3-haiku-20240307";
const SONNET: &str = "claude-3-5-sonnet-20241022";

/// A gateway whose catalog marks two models as reasoning models, over a strict upstream.
async fn strict() -> Router {
    let behaviour = Behaviour {
        reasoning_models: vec![O_MINI.into(), HAIKU.into()],
        ..Behaviour::default()
    };
    start_with(behaviour, |s| {
        for m in &mut s.models {
            m.reasoning = m.name == O_MINI || m.name == HAIKU;
        }
    })
    .await
}

#[tokio::test]
async fn every_model_receives_only_the_parameters_its_provider_accepts() {
    let router = strict().await;
    for model in [O_MINI, GPT4O, HAIKU, SONNET] {
        for effort in [None, Some("high")] {
            let mut body = json!({"model": model, "max_tokens": 5000, "temperature": 0.3,
                "top_p": 0.9, "messages": [{"role": "user", "content": FRANCE}]});
            if let Some(effort) = effort {
                body["reasoning_effort"] = effort.into();
            }
            let r = router.chat(body).await;
            let status = r.status();
            let said = r.text().await.unwrap_or_default();
            assert_eq!(status, 200, "{model} {effort:?}: {said}");
        }
    }
    // The Responses door's reasoning.effort, routed to whichever model.
    let r = router
        .http
        .post(router.url("/v1/responses"))
        .json(
            &json!({"model": "triage", "input": FRANCE, "temperature": 0.2,
                      "max_output_tokens": 300, "reasoning": {"effort": "low"}}),
        )
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hidden_reasoning_tokens_are_priced_as_output() {
    let router = strict().await;
    let r = router
        .chat(json!({"model": O_MINI, "messages": [{"role": "user", "content": FRANCE}]}))
        .await;
    assert_eq!(r.status(), 200);
    let cost: f64 = header(&r, "x-triage-cost-usd").parse().expect("a cost");
    let body: Value = r.json().await.expect("json");
    let input = body["usage"]["prompt_tokens"].as_f64().unwrap_or_default();
    let output = body["usage"]["completion_tokens"]
        .as_f64()
        .unwrap_or_default();
    let answer_tokens = output - HIDDEN_REASONING_TOKENS as f64;
    assert!(answer_tokens > 0.0);
    let spec = router
        .service
        .engine()
        .catalog()
        .get(O_MINI)
        .cloned()
        .expect("in the catalog");
    let priced = spec.cost_usd(input, output);
    assert!((cost - priced).abs() < 1e-8, "{cost} vs {priced}");
    assert!(cost > spec.cost_usd(input, answer_tokens));
}
