//! What the data-driven tests share: a slice of the real ZeroEval table and training options.
#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use triage_core::Settings;
use triage_train::{DEFAULT_JUDGE_WEIGHT, TrainOptions};

pub const MODELS: [&str; 3] = [
    "claude-3-5-sonnet-20241022",
    "gpt-4o-mini-2024-07-18",
    "gemini-1.5-flash",
];

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn shared_table() -> Option<PathBuf> {
    shared_file("zeroeval.parquet")
}

/// A file of the shared data directory, or `None` (with a SKIPPED line) when it is absent.
pub fn shared_file(name: &str) -> Option<PathBuf> {
    triage_testkit::shared_data_file(&root(), name)
}

/// Every 4th prompt of the real table, three models, written as CSV (exercises the CSV reader).
pub fn slice(dir: &Path) -> Option<PathBuf> {
    let source = shared_table()?;
    let file = std::fs::File::open(&source).expect("open table");
    let df = ParquetReader::new(file).finish().expect("read parquet");
    let model = df
        .column("model")
        .expect("model")
        .str()
        .expect("str")
        .clone();
    let ids = df
        .column("prompt_id")
        .expect("prompt_id")
        .str()
        .expect("str")
        .clone();
    let keep: Vec<bool> = model
        .iter()
        .zip(ids.iter())
        .map(|(m, id)| {
            let m = m.unwrap_or_default();
            let h = id
                .unwrap_or_default()
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            MODELS.contains(&m) && h % 4 == 0
        })
        .collect();
    let mask = BooleanChunked::from_slice("keep".into(), &keep);
    let mut small = df
        .filter(&mask)
        .expect("filter")
        .select([
            "prompt_id",
            "prompt",
            "model",
            "quality",
            "cost_usd",
            "output_tokens",
            "input_tokens",
            "split",
            "task",
        ])
        .expect("select");
    let out = dir.join("slice.csv");
    CsvWriter::new(std::fs::File::create(&out).expect("create"))
        .finish(&mut small)
        .expect("write csv");
    Some(out)
}

pub fn options(data: PathBuf, out: PathBuf) -> TrainOptions {
    TrainOptions {
        data: Some(data),
        from_log: None,
        force: false,
        strict: false,
        models: None,
        out,
        settings: Settings::load(None).expect("settings"),
        base: root(),
        cache_dir: root().join(".cache/embeddings"),
        progress: false,
        folds: 5,
        responses: None,
        tasks: None,
        judge_weight: DEFAULT_JUDGE_WEIGHT,
    }
}
