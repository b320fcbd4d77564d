//! Offline/online parity (`triage eval --live`): a table shaped like the ones where eval and
//! serving have disagreed (long few-shot prompts, short answers, and `input_tokens` that count
//! only the question, so the table's counts and the encoder's disagree several times over) is
//! built from the shared MMLU-Pro table; a policy is trained on it; `triage serve` serves that
//! policy with a catalog priced from the table's rows and the local upstream answering; and
//! `triage eval --live` must find every decision of every mode the same both ways.
//!
//! Needs `../shared/data/mmlupro.parquet` (or `$TRIAGE_SHARED_DATA`); skips, saying so, where it
//! is absent.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use polars::prelude::*;
use serde_json::{Value, json};
use triage_testkit::{Behaviour, LocalUpstream, shared_data_file};

mod common;

use common::{KillOnDrop, providers_at, root, spawn_with_gateway};

/// Prompts in the constructed tables, and the worked examples before each question in the
/// few-shot one.
const PROMPTS: usize = 360;
const SHOTS: usize = 4;

/// One row of the source table.
struct Row {
    id: String,
    task: String,
    text: String,
    model: String,
    quality: f64,
    input_tokens: f64,
    output_tokens: f64,
    prices: (f64, f64),
}

fn read_source(path: &Path) -> Vec<Row> {
    let columns = [
        "prompt_id",
        "task",
        "prompt",
        "model",
        "quality",
        "input_tokens",
        "output_tokens",
        "input_usd_per_1m",
        "output_usd_per_1m",
    ];
    let df = ParquetReader::new(std::fs::File::open(path).expect("opens"))
        .with_columns(Some(columns.iter().map(|c| (*c).to_owned()).collect()))
        .finish()
        .expect("read mmlupro");
    let s = |name: &str| df.column(name).expect(name).str().expect(name).clone();
    let f = |name: &str| {
        let c = df.column(name).expect(name).cast(&DataType::Float64);
        c.expect(name).f64().expect(name).clone()
    };
    let (ids, tasks, texts, models) = (s("prompt_id"), s("task"), s("prompt"), s("model"));
    let (q, inp, out, pi, po) = (
        f("quality"),
        f("input_tokens"),
        f("output_tokens"),
        f("input_usd_per_1m"),
        f("output_usd_per_1m"),
    );
    (0..df.height())
        .filter_map(|i| {
            Some(Row {
                id: ids.get(i)?.to_owned(),
                task: tasks.get(i)?.to_owned(),
                text: texts.get(i)?.to_owned(),
                model: models.get(i)?.to_owned(),
                quality: q.get(i)?,
                input_tokens: inp.get(i)?,
                output_tokens: out.get(i)?,
                prices: (pi.get(i)?, po.get(i)?),
            })
        })
        .collect()
}

/// Writes the few-shot table (JSONL) and returns each model's (input, output) price and the
/// model whose rows cost least in all.
fn write_fewshot_table(
    source: &Path,
    out: &Path,
    shots: usize,
) -> (BTreeMap<String, (f64, f64)>, String) {
    let rows = read_source(source);
    let models: BTreeMap<String, (f64, f64)> =
        rows.iter().map(|r| (r.model.clone(), r.prices)).collect();
    // Prompts with an outcome from every model, in the table's order, a few tasks only.
    let mut by_prompt: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by_prompt.entry(r.id.as_str()).or_default().push(r);
    }
    let chosen: Vec<&Vec<&Row>> = by_prompt
        .values()
        .filter(|v| v.len() == models.len())
        .filter(|v| ["law", "physics", "history", "economics"].contains(&v[0].task.as_str()))
        .take(PROMPTS)
        .collect();
    let mut jsonl = String::new();
    let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
    for (i, cells) in chosen.iter().enumerate() {
        let task = &cells[0].task;
        // The worked examples: earlier questions of the same task, as a few-shot harness lays
        // them out. The table's `input_tokens` still counts the question alone.
        let shots: Vec<&str> = chosen[..i]
            .iter()
            .rev()
            .filter(|c| c[0].task == *task)
            .take(shots)
            .map(|c| c[0].text.as_str())
            .collect();
        let mut prompt = format!(
            "The following are multiple choice questions about {task}. Think step by step, then \
             finish with \"the answer is (X)\".\n\n"
        );
        for shot in shots {
            let _ = write!(prompt, "Question: {shot}\nAnswer: the answer is (A).\n\n");
        }
        let _ = write!(prompt, "Question: {}\nAnswer:", cells[0].text);
        let split = ["train", "train", "train", "dev", "test"][i % 5];
        for r in cells.iter() {
            // Short answers: a letter and a line of reasoning.
            let output_tokens = r.output_tokens.clamp(8.0, 48.0);
            let cost = (r.input_tokens * r.prices.0 + output_tokens * r.prices.1) / 1_000_000.0;
            *spent.entry(r.model.as_str()).or_default() += cost;
            let row = json!({"prompt_id": r.id, "prompt": prompt, "model": r.model,
                "task": task, "quality": r.quality, "input_tokens": r.input_tokens,
                "output_tokens": output_tokens, "input_usd_per_1m": r.prices.0,
                "output_usd_per_1m": r.prices.1, "cost_usd": cost, "split": split});
            let _ = writeln!(jsonl, "{row}");
        }
    }
    std::fs::write(out, jsonl).expect("write the table");
    let cheapest = spent
        .iter()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(m, _)| (*m).to_owned())
        .expect("models");
    (models, cheapest)
}

/// The serving config: every model of the table at its table price, answered by the local
/// upstream; every caller may see routing traces.
fn write_config(path: &Path, models: &BTreeMap<String, (f64, f64)>, policy: &Path, upstream: &str) {
    let mut text = format!(
        "[policy]\npath = \"{}\"\n\n[gateway]\nexplain_keys = [\"*\"]\n\n\
         [[providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"{upstream}\"\n\n",
        policy.display()
    );
    for (name, (input, output)) in models {
        let _ = write!(
            text,
            "[[models]]\nname = \"{name}\"\nprovider = \"local\"\ninput_usd_per_1m = {input}\n\
             output_usd_per_1m = {output}\ncontext_window = 128000\n\
             latency = {{ first_token_ms = 500.0, output_tokens_per_s = 80.0 }}\n\n"
        );
    }
    std::fs::write(path, text).expect("write config");
}

fn triage(args: &[&str], config: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_triage"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("triage runs")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `triage eval ARGS` (with `config` when given) in a blocking task; its output.
async fn eval(args: Vec<String>, config: Option<std::path::PathBuf>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["eval".to_owned()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        triage(&all, config.as_deref())
    })
    .await
    .expect("joins")
}

/// The operator's catalog: the table's prices, except that `dearer` (the table's cheapest model)
/// now costs twenty times as much (a price rise since the table was collected, or another
/// deployment).
fn repriced(models: &BTreeMap<String, (f64, f64)>, dearer: &str) -> BTreeMap<String, (f64, f64)> {
    let mut catalog = models.clone();
    if let Some(price) = catalog.get_mut(dearer) {
        *price = (price.0 * 20.0, price.1 * 20.0);
    }
    catalog
}

/// A constructed table, a policy trained on it, and `triage serve` serving that policy.
struct Served {
    dir: tempfile::TempDir,
    table: std::path::PathBuf,
    policy: std::path::PathBuf,
    config: std::path::PathBuf,
    gateway: String,
    /// The table's cheapest model, dearer in the serving catalog when asked for.
    dearer: String,
    _server: KillOnDrop,
    _upstream: LocalUpstream,
}

impl Served {
    /// Builds the table from MMLU-Pro with `shots` worked examples per prompt, trains and
    /// serves; the catalog raises the cheapest model's price when `reprice` (else it is the
    /// table's prices).
    async fn start(source: &Path, shots: usize, reprice: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = dir.path().join("table.jsonl");
        let (models, dearer) = write_fewshot_table(source, &table, shots);
        let catalog = if reprice {
            repriced(&models, &dearer)
        } else {
            models
        };
        let policy = dir.path().join("policy.json");
        let upstream = LocalUpstream::start(Behaviour::default())
            .await
            .expect("upstream");
        let config = dir.path().join("triage.toml");
        write_config(&config, &catalog, &policy, &upstream.base_url());
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let cache = text(&dir.path().join("cache"));
        let train = triage(
            &[
                "train",
                "--data",
                &text(&table),
                "--out",
                &text(&policy),
                "--cache-dir",
                &cache,
            ],
            Some(&config),
        );
        ok(train, "triage train");
        let (child, _grpc, gateway) = spawn_with_gateway(&dir.path().join("data"), &config);
        Self {
            table,
            policy,
            config,
            gateway,
            dearer,
            _server: KillOnDrop(child),
            _upstream: upstream,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `triage eval --live` on the table, with the serving config when `with_config`; its
    /// output and the `parity` part of its JSON report.
    async fn eval_live(&self, with_config: bool, json: &str) -> (Output, Value) {
        let json = self.path(json);
        let args: Vec<String> = [
            "--data",
            &self.table.to_string_lossy(),
            "--policy",
            &self.policy.to_string_lossy(),
            "--cache-dir",
            &self.path("cache"),
            "--bootstrap",
            "0",
            "--live",
            &self.gateway,
            "--json",
            &json,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        let out = eval(args, with_config.then(|| self.config.clone())).await;
        let report: Value = std::fs::read(&json)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        (out, report["parity"].clone())
    }
}

/// Every decision of every mode the same both ways, and the predictions bit for bit.
fn assert_agrees(out: Output, parity: &Value) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let printed = ok(out, "triage eval --live");
    assert!(printed.contains("every decision agrees"), "{printed}");
    assert_eq!(parity["modes"].as_array().map(Vec::len), Some(3));
    for mode in parity["modes"].as_array().expect("modes") {
        assert_eq!(mode["same"], mode["prompts"], "{mode}");
        assert_eq!(mode["failed"], 0, "{mode}");
        assert_eq!(mode["eval"], mode["served"], "{mode}");
        // Measured 0 (bit for bit); float noise from batching would be far below this.
        assert!(mode["max_quality_gap"].as_f64() < Some(1e-6), "{mode}");
        assert!(mode["max_cost_gap"].as_f64() < Some(1e-6), "{mode}");
    }
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_and_serving_decide_alike_on_a_few_shot_table() {
    let Some(source) = shared_data_file(root(), "mmlupro.parquet") else {
        return;
    };
    let served = Served::start(&source, SHOTS, true).await;

    // Eval given the serving catalog decides as the gateway does, though the table's own price
    // columns say otherwise for one model.
    let (out, parity) = served.eval_live(true, "eval.json").await;
    let stderr = assert_agrees(out, &parity);
    assert!(
        stderr.contains("price columns differ from the catalog's")
            && stderr.contains(&served.dearer),
        "{stderr}"
    );

    // Without it, eval prices the models from the table, as serving no longer does: the check
    // finds the skew, fails, and shows each side's inputs.
    let (out, skew) = served.eval_live(false, "skewed.json").await;
    let printed = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{printed}\n{stderr}");
    assert!(
        stderr.contains("decisions differ between eval and the gateway"),
        "{stderr}"
    );
    assert!(
        printed.contains("decisions differ; the first of each mode"),
        "{printed}"
    );
    assert!(skew["disagreeing"].as_u64() > Some(0), "{skew}");
    let first = &skew["disagreements"][0];
    assert_eq!(first["eval_model"], served.dearer.as_str(), "{first}");
    assert!(
        first["served_candidates"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{first}"
    );
    assert_eq!(
        first["eval_input_tokens"], first["served_input_tokens"],
        "{first}"
    );
}

/// The MMLU-Pro questions as the table has them (no worked examples, short prompts).
#[tokio::test(flavor = "multi_thread")]
async fn eval_and_serving_decide_alike_on_mmlupro_questions() {
    let Some(source) = shared_data_file(root(), "mmlupro.parquet") else {
        return;
    };
    let served = Served::start(&source, 0, false).await;
    let (out, parity) = served.eval_live(true, "eval.json").await;
    assert_agrees(out, &parity);
}

/// The bundled policy and catalog on the whole ZeroEval test split, through a gateway on the
/// embedded defaults: every decision of every mode as eval's.
#[tokio::test(flavor = "multi_thread")]
async fn eval_and_serving_decide_alike_on_zeroeval() {
    let Some(table) = shared_data_file(root(), "zeroeval.parquet") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = LocalUpstream::start(Behaviour::default())
        .await
        .expect("upstream");
    let config = dir.path().join("triage.toml");
    let text = format!(
        "[gateway]\nexplain_keys = [\"*\"]\n\n{}",
        providers_at(&upstream.base_url())
    );
    std::fs::write(&config, text).expect("config");
    let (child, _grpc, gateway) = spawn_with_gateway(&dir.path().join("data"), &config);
    let _server = KillOnDrop(child);
    let json = dir.path().join("eval.json");
    // The repository's embedding cache: other tests embed these prompts too.
    let cache = root().join(".cache/embeddings");
    let args: Vec<String> = [
        "--data",
        &table.to_string_lossy(),
        "--cache-dir",
        &cache.to_string_lossy(),
        "--bootstrap",
        "0",
        "--live",
        &gateway,
        "--json",
        &json.to_string_lossy(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let out = eval(args, None).await;
    let report: Value = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    assert_agrees(out, &report["parity"]);
    for mode in report["parity"]["modes"].as_array().expect("modes") {
        assert!(mode["prompts"].as_u64() > Some(400), "{mode}");
    }
}
