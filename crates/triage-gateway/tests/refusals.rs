//! Bad input, keys, budgets and the small endpoints: each refusal has its status and an
//! OpenAI-shaped error naming what is wrong, and leaves nothing in the log.

mod common;

use common::{FRANCE, header, start, start_with, user};
use serde_json::{Value, json};
use triage_guard::{KeySpec, hash_key};
use triage_testkit::Behaviour;

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("an OpenAI error body");
    (status, body["error"].clone())
}

#[tokio::test]
async fn malformed_requests_get_a_400_naming_the_field() {
    let router = start_with(Behaviour::default(), |s| s.gateway.max_body_bytes = 4096).await;
    let post = |body: Vec<u8>| {
        router
            .http
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"model\": \"triage\", \"messages\": [".to_vec(), 400, "body"),
        (vec![0xff, 0xfe, 0x00], 400, "body"),
        (br#"{"model":"triage","messages":[]}"#.to_vec(), 400, "messages"),
        (br#"{"model":"triage","messages":[{"role":"robot","content":"x"}]}"#.to_vec(), 400, "messages[0].role"),
        (br#"{"model":"triage","n":3,"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "n"),
        (br#"{"model":"triage","triage":{"max_cost_usd":-1},"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "triage.max_cost_usd"),
        (br#"{"model":"triage","triage":{"allowed_models":["gpt-9"]},"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "triage.allowed_models[0]"),
        (br#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 404, "model"),
        (format!(r#"{{"model":"triage","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(5000)).into_bytes(), 413, ""),
    ];
    for (body, status, param) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (got, error) = error_of(post(body).await.expect("answers")).await;
        assert_eq!(got, status, "{shown}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{shown}: {error}");
        }
    }
    // A hostile model name is not echoed back whole.
    let name = "x".repeat(3000);
    let body = format!(r#"{{"model":"{name}","messages":[{{"role":"user","content":"x"}}]}}"#);
    let (status, error) = error_of(post(body.into_bytes()).await.expect("answers")).await;
    assert_eq!(status, 404);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.len() < 400 && message.contains('…'), "{message}");
    assert_eq!(
        router.service.log_counts(),
        (0, 0),
        "refusals leave no record"
    );
}

#[tokio::test]
async fn keys_allow_lists_and_budgets_apply_as_over_grpc() {
    let router = start_with(Behaviour::default(), |s| {
        s.auth.allow_anonymous = Some(false);
        s.auth.keys = vec![
            KeySpec {
                name: "team-a".into(),
                sha256: hash_key("key-a"),
                allowed_models: vec![
                    "gpt-4o-mini-2024-07-18".into(),
                    "claude-3-haiku-20240307".into(),
                ],
                daily_usd: None,
                monthly_usd: None,
                admin: false,
            },
            KeySpec {
                name: "broke".into(),
                sha256: hash_key("key-broke"),
                allowed_models: vec![],
                daily_usd: Some(1e-12),
                monthly_usd: None,
                admin: false,
            },
        ];
    })
    .await;
    let send = |key: Option<(&str, &str)>, model: &str| {
        let mut r = router
            .http
            .post(router.url("/v1/chat/completions"))
            .json(&json!({"model": model, "messages": user(FRANCE)}));
        if let Some((name, value)) = key {
            r = r.header(name, value);
        }
        r.send()
    };
    let (status, error) = error_of(send(None, "triage").await.expect("answers")).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (status, _) = error_of(
        send(Some(("authorization", "Bearer wrong")), "triage")
            .await
            .expect("answers"),
    )
    .await;
    assert_eq!(status, 401);

    let r = send(Some(("authorization", "Bearer key-a")), "triage")
        .await
        .expect("answers");
    assert_eq!(r.status(), 200);
    assert!(
        ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"]
            .contains(&header(&r, "x-triage-model"))
    );
    let r = send(Some(("api-key", "key-a")), "triage")
        .await
        .expect("answers");
    assert_eq!(r.status(), 200, "Azure-style api-key header");

    let (status, error) = error_of(
        send(Some(("api-key", "key-a")), "gpt-4o-2024-08-06")
            .await
            .expect("answers"),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("model_not_permitted"))
    );

    let r = send(Some(("api-key", "key-broke")), "triage")
        .await
        .expect("answers");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let (_, error) = error_of(r).await;
    assert_eq!(error["code"], "budget_exhausted");

    let models: Value = router
        .http
        .get(router.url("/v1/models"))
        .header("authorization", "Bearer key-a")
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "triage",
            "triage-quality",
            "triage-cost",
            "triage-verify",
            "model-router",
            "gpt-4o-mini-2024-07-18",
            "claude-3-haiku-20240307"
        ]
    );
}

#[tokio::test]
async fn health_readiness_and_a_gateway_without_providers() {
    let router = start().await;
    let ok = router
        .http
        .get(router.url("/healthz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ok.status(), 200);
    let ready = router
        .http
        .get(router.url("/readyz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ready.status(), 200);

    let bare = start_with(Behaviour::default(), |s| s.providers.clear()).await;
    let ready = bare
        .http
        .get(bare.url("/readyz"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    // Without an admin key: ready or not and reason codes, never paths or database errors.
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reasons"], json!(["no_providers"]), "{body}");
    assert!(body.get("details").is_none(), "{body}");
    let (status, error) = error_of(
        bare.chat(json!({"model": "triage", "messages": user(FRANCE)}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (503, Some("no_providers"))
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let router = start_with(Behaviour::default(), |s| s.gateway.header_read_ms = 300).await;
    let mut slow = tokio::net::TcpStream::connect(router.gateway.addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while slow.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "closed after gateway.header_read_ms");
    // Well-behaved clients are served as before.
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE)}))
        .await;
    assert_eq!(r.status(), 200);
}
