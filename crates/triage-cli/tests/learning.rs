//! Learning from the traffic it serves, end to end on real servers: `triage serve` with its
//! gateway, the judge and shadow answers on, and `[learning]` retraining inside the process.
//! The local upstream answers every model and the judge, which rates every answer alike: a
//! class of prompts where a cheaper model does as well as the one chosen. The retrain inside
//! `serve` must leave its record in `/readyz` and the metrics and, promoted through the gate,
//! be hot-reloaded (a new `x-triage-policy-version`) and send that class to cheaper models.

#![cfg(unix)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use triage_testkit::{Behaviour, LocalUpstream};

mod common;

use common::{KillOnDrop, providers_at, root, spawn_with_gateway};

/// Requests before the retrain is due (each brings a verdict and a shadow verdict).
const REQUESTS: usize = 400;

fn config(upstream: &str, policy: &std::path::Path) -> String {
    let mut c = format!(
        "[policy]\npath = \"{}\"\nreload_interval_ms = 200\n\n\
         [judge]\nprovider = \"openai\"\nupstream_model = \"judge-model\"\n\
         input_usd_per_1m = 0.15\noutput_usd_per_1m = 0.6\nsample_rate = 1.0\n\
         shadow_rate = 1.0\nkeys = [\"*\"]\n\n\
         [learning]\nretrain_every_outcomes = {}\ncheck_secs = 1\n\n",
        policy.display(),
        2 * REQUESTS
    );
    c.push_str(&providers_at(upstream));
    c
}

/// One balanced request; the answering model, the policy version and the cost.
async fn ask(client: &reqwest::Client, http: &str, i: usize) -> (String, String, f64) {
    let r = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&json!({
            "model": "triage",
            "messages": [{"role": "user", "content": format!("Translate 'good morning number {i}' into Spanish.")}],
        }))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(r.status(), 200);
    let h = |name: &str| r.headers()[name].to_str().expect("header").to_owned();
    let cost = h("x-triage-cost-usd").parse().expect("cost");
    (h("x-triage-model"), h("x-triage-policy-version"), cost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_inside_serve_learns_from_the_judge_and_is_hot_reloaded() {
    let upstream = LocalUpstream::start(Behaviour::default())
        .await
        .expect("upstream");
    let client = reqwest::Client::new();
    // The judge rates every answer 9 of 10, whoever wrote it.
    let scripted = client
        .post(format!("http://{}/_record", upstream.addr))
        .json(
            &json!({"answers": [{"model": "judge-model", "contains": "[Answer]",
                                   "text": "{\"score\": 9, \"reason\": \"correct\"}"}]}),
        )
        .send()
        .await
        .expect("upstream answers");
    assert!(scripted.status().is_success());
    let data = tempfile::tempdir().expect("tempdir");
    let policy = data.path().join("policy.json");
    std::fs::copy(root().join("models/policy.json"), &policy).expect("policy copied");
    let config_file = data.path().join("triage.toml");
    std::fs::write(&config_file, config(&upstream.base_url(), &policy)).expect("config");
    let (child, _grpc, http) = spawn_with_gateway(&data.path().join("log"), &config_file);
    let _child = KillOnDrop(child);

    let mut before = Vec::new();
    for i in 0..REQUESTS {
        before.push(ask(&client, &http, i).await);
    }
    let first_version = before[0].1.clone();
    // The retrain runs once the verdicts are in; its record shows in /readyz.
    let until = Instant::now() + Duration::from_secs(300);
    let retrain = loop {
        let ready: Value = client
            .get(format!("{http}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json");
        if let Some(r) = ready.get("last_retrain") {
            break r.clone();
        }
        assert!(Instant::now() < until, "no retrain in time: {ready}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(retrain["outcome"], "promoted", "{retrain:#}");
    assert!(
        retrain["log"]["outcomes"].as_u64() >= Some(REQUESTS as u64),
        "{retrain:#}"
    );
    // Hot-reloaded: new requests name the new version and cost less for the same verdicts.
    let version = retrain["version"].as_str().expect("version").to_owned();
    let until = Instant::now() + Duration::from_secs(30);
    let mut after = Vec::new();
    while after.len() < REQUESTS {
        let answer = ask(&client, &http, 1000 + after.len()).await;
        if answer.1 == first_version {
            assert!(Instant::now() < until, "the new policy was not reloaded");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(answer.1, version);
        after.push(answer);
    }
    let mean = |a: &[(String, String, f64)]| a.iter().map(|x| x.2).sum::<f64>() / a.len() as f64;
    let share = |a: &[(String, String, f64)]| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for x in a {
            *counts.entry(x.0.clone()).or_default() += 1;
        }
        counts
    };
    println!(
        "gate: {}\nbefore: ${:.6}/request {:?}\nafter:  ${:.6}/request {:?}",
        retrain["gate"]["reason"],
        mean(&before),
        share(&before),
        mean(&after),
        share(&after)
    );
    assert!(
        mean(&after) < mean(&before),
        "cost per request {} before, {} after: {:?} → {:?}",
        mean(&before),
        mean(&after),
        before.iter().map(|x| &x.0).collect::<Vec<_>>(),
        after.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
}
