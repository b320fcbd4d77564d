//! Clients written for Azure call the gateway unchanged: `model-router` and other aliases,
//! and Azure's paths (`/openai/deployments/{deployment}/…`, `/openai/v1/…`, the server root).

mod common;

use common::{FRANCE, Router, header, start_with, user};
use serde_json::{Value, json};
use triage_testkit::Behaviour;

async fn post(router: &Router, path: &str, body: Value) -> reqwest::Response {
    router
        .http
        .post(router.url(path))
        .header("api-key", "any")
        .json(&body)
        .send()
        .await
        .expect("answers")
}

#[tokio::test]
async fn azure_paths_and_aliases_are_answered_like_chat_completions() {
    let router = start_with(Behaviour::default(), |s| {
        s.gateway
            .aliases
            .insert("cheap".into(), "gpt-4o-mini-2024-07-18".into());
    })
    .await;
    let routed = json!({"model": "model-router", "messages": user(FRANCE)});
    for path in [
        "/v1/chat/completions",
        "/openai/v1/chat/completions",
        "/chat/completions?api-version=2024-05-01-preview",
        "/models/chat/completions?api-version=2024-05-01-preview",
        "/openai/deployments/model-router/chat/completions?api-version=2024-10-21",
    ] {
        let r = post(&router, path, routed.clone()).await;
        assert_eq!(r.status(), 200, "{path}");
        let model = header(&r, "x-triage-model").to_owned();
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            body["model"], model,
            "{path}: the answer names the model that answered"
        );
        assert_ne!(model, "model-router");
    }
    // The deployment names the model, whatever the body says; an alias of a catalog model
    // pins it.
    for (deployment, expected) in [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),
        ("cheap", "gpt-4o-mini-2024-07-18"),
    ] {
        let r = post(
            &router,
            &format!("/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21"),
            json!({"messages": user(FRANCE)}),
        )
        .await;
        assert_eq!(r.status(), 200, "{deployment}");
        assert_eq!(header(&r, "x-triage-model"), expected);
    }
    let r = post(
        &router,
        "/openai/deployments/gpt-9/chat/completions?api-version=2024-10-21",
        json!({"messages": user(FRANCE)}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let error: Value = r.json().await.expect("json");
    assert_eq!(error["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn an_alias_that_names_nothing_or_hides_a_model_stops_the_gateway() {
    let upstream = triage_testkit::LocalUpstream::start(Behaviour::default())
        .await
        .expect("upstream");
    for (alias, target) in [("router", "gpt-9"), ("triage", "gpt-4o-mini-2024-07-18")] {
        let mut settings = common::settings(&upstream.base_url());
        settings.gateway.aliases.insert(alias.into(), target.into());
        let engine = triage_engine::RoutingEngine::from_settings(&settings, &common::root())
            .expect("engine");
        let service = triage_engine::startup::open(engine, &settings, None)
            .await
            .expect("log");
        let refused = triage_gateway::Gateway::new(service, &settings).err();
        let said = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            said.contains("gateway.aliases") && said.contains(alias),
            "{said}"
        );
    }
}
