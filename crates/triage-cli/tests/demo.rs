//! `triage serve --demo`: a first run without provider keys. The built-in local upstream
//! answers for every provider, in every dialect; each answer and response says it is a demo
//! (the start-up line, `[demo:MODEL]`, `x-triage-demo`, `/readyz`), and routing and records
//! are real.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod common;

use common::KillOnDrop;

/// Starts `triage serve --demo` with no configuration; returns it and its stdout lines.
fn serve_demo(data_dir: &std::path::Path) -> (KillOnDrop, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .current_dir(common::root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("triage serve starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let child = KillOnDrop(child);
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reads a start-up line");
        lines.push(line.trim().to_owned());
    }
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, lines)
}

#[tokio::test]
async fn a_demo_answers_every_dialect_without_keys_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, lines) = serve_demo(dir.path());
    let http = lines[1]
        .strip_prefix("gateway on ")
        .unwrap_or_else(|| panic!("unexpected {lines:?} (run scripts/setup.sh first)"))
        .to_owned();
    assert!(lines[2].starts_with("demo: "), "{lines:?}");
    let client = reqwest::Client::new();
    let calls = [
        (
            "/v1/chat/completions",
            json!({"model": "triage", "messages": [{"role": "user", "content": "What is 2+2?"}]}),
            "/choices/0/message/content",
        ),
        (
            "/v1/messages",
            json!({"model": "model-router", "max_tokens": 100,
                   "messages": [{"role": "user", "content": "What is 2+2?"}]}),
            "/content/0/text",
        ),
        (
            "/v1/responses",
            json!({"model": "triage", "input": "What is 2+2?"}),
            "/output/0/content/0/text",
        ),
    ];
    for (path, body, text_at) in calls {
        let r = client
            .post(format!("{http}{path}"))
            .json(&body)
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("x-triage-demo"), "true", "{path}");
        let model = header("x-triage-model");
        assert!(!header("x-triage-request-id").is_empty(), "a real decision");
        let answer: Value = r.json().await.expect("json");
        let text = answer
            .pointer(text_at)
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            text.starts_with(&format!("[demo:{model}]")),
            "{path}: {text}"
        );
    }
    let ready: Value = client
        .get(format!("{http}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["demo"], true);
}
