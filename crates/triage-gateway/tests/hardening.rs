//! What a caller holding a valid key (or none) cannot do to the gateway: take the ids of the
//! gateway's own records, hold connection slots by saying nothing, or make errors large.

mod common;

use std::time::Duration;

use common::{FRANCE, header, start_with, user};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use triage_testkit::Behaviour;

#[tokio::test]
async fn a_caller_cannot_take_the_id_of_the_gateways_own_record() {
    // Streamed slowly, so that the caller reports before the gateway's record is written.
    let behaviour = Behaviour {
        chunk_delay: Duration::from_millis(30),
        ..Behaviour::default()
    };
    let router = start_with(behaviour, |_| {}).await;
    let r = router
        .chat(json!({"model": "triage", "messages": user(FRANCE), "stream": true}))
        .await;
    assert_eq!(r.status(), 200);
    let (request_id, model) = (
        header(&r, "x-triage-request-id").to_owned(),
        header(&r, "x-triage-model").to_owned(),
    );
    let taken = router
        .http
        .post(router.url("/v1/feedback"))
        .json(
            &json!({"request_id": request_id, "feedback_id": format!("gateway:{request_id}:1"),
                      "model": model, "cost_usd": 0.0}),
        )
        .send()
        .await
        .expect("answers");
    assert_eq!(taken.status(), 400);
    let error: Value = taken.json().await.expect("json");
    assert_eq!(error["error"]["param"], "feedback_id", "{error}");
    let _ = r.text().await.expect("the stream ends");
    // The gateway's record landed, with its real cost.
    let metrics = router.metrics();
    let recorded = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "triage_reported_cost_usd_total{{model=\"{model}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(recorded.is_some_and(|c| c > 0.0), "{metrics}");
}

/// Whether the gateway closes `socket` within `within` (reads until EOF or an error).
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn silent_connections_cannot_hold_the_slots() {
    let router = start_with(Behaviour::default(), |s| {
        s.gateway.max_connections = 4;
        s.gateway.header_read_ms = 300;
        s.gateway.body_read_ms = 300;
        s.gateway.idle_ms = 500;
    })
    .await;
    let addr = router.gateway.addr;
    // Four ways to say nothing: no bytes at all, half an HTTP/2 preface, a whole preface then
    // silence, and a head promising a body that never comes.
    let mut silent = Vec::new();
    for opening in [
        &b""[..],
        &b"PRI * HTTP/2.0\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(opening).await.expect("send");
        silent.push(s);
    }
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "silent connection {i} was not closed"
        );
    }
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        router.http.get(router.url("/healthz")).send(),
    )
    .await
    .expect("a slot is free again")
    .expect("answers");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_body_that_never_comes_gets_408_and_a_bad_key_is_refused_before_any_body() {
    let router = start_with(Behaviour::default(), |s| {
        s.gateway.body_read_ms = 300;
        s.auth.allow_anonymous = Some(false);
        s.auth.keys = vec![triage_guard::KeySpec {
            name: "team".into(),
            sha256: triage_guard::hash_key("key"),
            allowed_models: vec![],
            daily_usd: None,
            monthly_usd: None,
            admin: false,
        }];
    })
    .await;
    let head = |key: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\""
        )
    };
    for (key, status) in [("wrong", "401"), ("key", "408")] {
        let mut s = TcpStream::connect(router.gateway.addr)
            .await
            .expect("connect");
        s.write_all(head(key).as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{key}: no answer while the body is missing");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{key}: {answer}"
        );
    }
}

#[tokio::test]
async fn errors_that_quote_the_request_stay_small() {
    let router = start_with(Behaviour::default(), |s| {
        s.gateway.max_body_bytes = 1 << 20;
    })
    .await;
    let huge = "9".repeat(100_000);
    let mode = "m".repeat(100_000);
    for body in [
        format!(r#"{{"model":"triage","n":{huge},"messages":[{{"role":"user","content":"x"}}]}}"#),
        format!(
            r#"{{"model":"triage","n":"{mode}","messages":[{{"role":"user","content":"x"}}]}}"#
        ),
        format!(
            r#"{{"model":"triage","triage":{{"mode":"{mode}"}},"messages":[{{"role":"user","content":"x"}}]}}"#
        ),
        format!(
            r#"{{"model":"triage","triage":{{"{mode}":1}},"messages":[{{"role":"user","content":"x"}}]}}"#
        ),
    ] {
        let r = router
            .http
            .post(router.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 400);
        let text = r.text().await.expect("body");
        assert!(text.len() < 2048, "{} bytes: {}", text.len(), &text[..200]);
    }
}
