//! `triage collect` against the local upstream: every (prompt, model) pair is asked and judged
//! once, rows land as they come, a second run resumes without asking again, `--max-usd` stops
//! the spend, and a Parquet table comes out whole.

#![cfg(unix)]

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use triage_testkit::{Behaviour, LocalUpstream};

mod common;

use common::{providers_at, root};

const CHEAP: &str = "Meta-Llama-3.1-8B-Instruct";
const DEAR: &str = "gpt-4o-2024-08-06";

/// Runs `triage collect` with `args`; its status and stderr.
async fn collect(config: &Path, args: Vec<String>) -> (bool, String) {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_triage"))
            .arg("--config")
            .arg(&config)
            .arg("collect")
            .args(&args)
            .current_dir(root())
            .env("RUST_LOG", "warn")
            .output()
            .expect("triage runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("joins")
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn calls(upstream: &LocalUpstream, model: &str) -> u64 {
    let v: Value = reqwest::get(format!("http://{}/_calls", upstream.addr))
        .await
        .expect("upstream answers")
        .json()
        .await
        .expect("json");
    v.get(model).and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_are_asked_judged_resumed_and_capped() {
    let upstream = LocalUpstream::start(Behaviour::default())
        .await
        .expect("upstream");
    // The scripted judge rates the cheap model's answers 9 of 10 and the dear one's 3.
    let judged = |model: &str, score: u32| {
        json!({"model": "judge-model", "contains": format!("[{model}]"),
               "text": format!("{{\"score\": {score}, \"reason\": \"scripted\"}}")})
    };
    reqwest::Client::new()
        .post(format!("http://{}/_record", upstream.addr))
        .json(&json!({"answers": [judged(CHEAP, 9), judged(DEAR, 3)]}))
        .send()
        .await
        .expect("records");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("triage.toml");
    let mut text = "[judge]\nprovider = \"openai\"\nupstream_model = \"judge-model\"\n\
        input_usd_per_1m = 0.15\noutput_usd_per_1m = 0.6\n\n"
        .to_owned();
    text.push_str(&providers_at(&upstream.base_url()));
    std::fs::write(&config, text).expect("config");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "Translate 'good morning' into Spanish.\n\nWhat is 2+2?\nWrite a haiku about autumn.\nWhat is 2+2?\n",
    )
    .expect("prompts");
    let table = dir.path().join("table.jsonl");
    let args = |out: &Path, max_usd: &str| -> Vec<String> {
        let p = prompts.to_string_lossy();
        let o = out.to_string_lossy();
        let models = format!("{CHEAP},{DEAR}");
        [
            "--prompts",
            &p,
            "--models",
            &models,
            "--out",
            &o,
            "--max-usd",
            max_usd,
        ]
        .map(str::to_owned)
        .to_vec()
    };

    let (ok, said) = collect(&config, args(&table, "1")).await;
    assert!(ok, "{said}");
    let got = rows(&table);
    assert_eq!(got.len(), 6, "3 distinct prompts x 2 models: {said}");
    for row in &got {
        let expected = if row["model"] == CHEAP {
            8.0 / 9.0
        } else {
            2.0 / 9.0
        };
        let quality = row["quality"].as_f64().unwrap_or(-1.0);
        assert!((quality - expected).abs() < 1e-9, "{row}");
        assert!(row["cost_usd"].as_f64() > Some(0.0) && row["judge_usd"].as_f64() > Some(0.0));
        let model = row["model"].as_str().unwrap_or_default();
        assert!(
            row["response"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("[{model}]")))
        );
    }

    // Resumed: nothing is asked again.
    let before = calls(&upstream, CHEAP).await;
    let (ok, said) = collect(&config, args(&table, "1")).await;
    assert!(ok, "{said}");
    assert!(said.contains("0 to ask"), "{said}");
    assert_eq!(rows(&table).len(), 6);
    assert_eq!(calls(&upstream, CHEAP).await, before);

    // A cap below one pair's spend stops after the first pairs, saying how to go on.
    let capped = dir.path().join("capped.jsonl");
    let (ok, said) = collect(&config, args(&capped, "0.0000001")).await;
    assert!(ok, "{said}");
    assert!(said.contains("--max-usd"), "{said}");
    assert!(rows(&capped).len() < 6);

    // A Parquet table, whole, with the rows of the JSON lines.
    let parquet = dir.path().join("table.parquet");
    let (ok, said) = collect(&config, args(&parquet, "1")).await;
    assert!(ok, "{said}");
    let file = std::fs::File::open(&parquet).expect("written");
    use polars::prelude::{ParquetReader, SerReader};
    let frame = ParquetReader::new(file).finish().expect("a table");
    assert_eq!(frame.height(), 6);
    for column in [
        "prompt_id",
        "prompt",
        "model",
        "quality",
        "cost_usd",
        "response",
    ] {
        assert!(frame.column(column).is_ok(), "{column}");
    }
    assert!(!dir.path().join("table.parquet.partial.jsonl").exists());
}
