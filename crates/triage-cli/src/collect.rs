//! `triage collect`: an outcome table of the operator's own prompts, before serving them.
//!
//! Each prompt (from a file, or from a log kept with `log.store_prompts`) is asked of each
//! listed model through the configured providers, and the judge scores every answer. Rows go
//! to a JSON-lines file as they come, flushed one by one, so an interrupted run resumes where it
//! stopped (pairs already in the file are not asked again) and `--max-usd` caps the table's
//! whole spend, answers and verdicts, resumed runs included. With `--out x.parquet` the rows
//! collect in `x.parquet.partial.jsonl` and the Parquet table is written once every pair is in.
//! `triage train --data` takes either as it is (`response` holds each answer's text).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use triage_core::Settings;
use triage_gateway::collect::{CollectError, Collector};
use triage_log::LogRecord;
use triage_train::logdata::LogSource;

/// Options of `triage collect`.
#[derive(clap::Args)]
pub struct CollectArgs {
    /// Prompts: .txt (one per line) or .jsonl (`prompt`, optional `prompt_id`).
    #[arg(long, conflicts_with = "from_log")]
    pub prompts: Option<PathBuf>,
    /// Or the prompts a log kept (log.store_prompts = true): a --data-dir or postgres:// URL.
    #[arg(long)]
    pub from_log: Option<String>,
    /// Catalog models to ask, comma-separated (each needs a [[providers]] entry).
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// The judge: a catalog model with a provider (default: [judge] in the config).
    #[arg(long)]
    pub judge: Option<String>,
    /// The table to write: .jsonl, or .parquet (written once every pair is in).
    #[arg(long)]
    pub out: PathBuf,
    /// Stop once the table's whole spend (answers and verdicts, resumed runs included)
    /// reaches this, USD.
    #[arg(long, value_parser = crate::non_negative)]
    pub max_usd: f64,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calls in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// One prompt to ask.
struct Prompt {
    id: String,
    text: String,
}

pub fn collect(mut settings: Settings, args: CollectArgs) -> anyhow::Result<()> {
    if let Some(judge) = &args.judge {
        settings.judge.model = Some(judge.clone());
    }
    if settings.judge.model.is_none() && settings.judge.provider.is_none() {
        bail!(
            "no judge: give --judge MODEL (a catalog model with a provider) or set [judge] model"
        );
    }
    let collector = Collector::new(&settings).context("cannot call the providers")?;
    let mut prompts = read_prompts(&args)?;
    if let Some(limit) = args.limit {
        prompts.truncate(limit);
    }
    let rows_path = rows_path(&args.out);
    let (done, spent) = resume(&rows_path)?;
    let pairs: Vec<(&Prompt, &str)> = prompts
        .iter()
        .flat_map(|p| args.models.iter().map(move |m| (p, m.as_str())))
        .filter(|(p, m)| !done.contains(&(p.id.clone(), (*m).to_owned())))
        .collect();
    eprintln!(
        "collect: {} prompts x {} models; {} pairs already in {}, {} to ask (spent so far ${spent:.4} of ${:.4})",
        prompts.len(),
        args.models.len(),
        done.len(),
        rows_path.display(),
        pairs.len(),
        args.max_usd
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    let report = runtime.block_on(ask_all(&collector, &pairs, &rows_path, spent, &args))?;
    eprintln!(
        "collect: {} answered and judged, {} failed, {} unreadable verdicts; ${:.4} spent in all",
        report.written, report.failed, report.unreadable, report.spent
    );
    if report.capped {
        eprintln!(
            "collect: stopped at --max-usd {}; raise it and run the same command to resume",
            args.max_usd
        );
        return Ok(());
    }
    if report.failed > 0 {
        eprintln!("collect: run the same command again to retry the failed pairs");
        return Ok(());
    }
    if rows_path != args.out {
        write_parquet(&rows_path, &args.out)?;
        std::fs::remove_file(&rows_path).ok();
    }
    println!("{}", args.out.display());
    Ok(())
}

/// Where rows are appended: the output itself, or beside a Parquet output.
fn rows_path(out: &Path) -> PathBuf {
    if out.extension().is_some_and(|e| e == "parquet") {
        let mut name = out.as_os_str().to_owned();
        name.push(".partial.jsonl");
        PathBuf::from(name)
    } else {
        out.to_owned()
    }
}

#[derive(Default)]
struct Report {
    written: usize,
    failed: usize,
    unreadable: usize,
    spent: f64,
    capped: bool,
}

async fn ask_all(
    collector: &Collector,
    pairs: &[(&Prompt, &str)],
    rows_path: &Path,
    spent: f64,
    args: &CollectArgs,
) -> anyhow::Result<Report> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(rows_path)
        .with_context(|| format!("cannot write {}", rows_path.display()))?;
    let mut report = Report {
        spent,
        ..Report::default()
    };
    let (judge_model, rubric) = collector.judge_mark();
    let total = pairs.len();
    let mut results =
        futures::stream::iter(pairs.iter().copied())
            .map(|(prompt, model)| async move {
                (prompt, model, ask_one(collector, prompt, model).await)
            })
            .buffer_unordered(args.concurrency.max(1));
    let mut finished = 0;
    while let Some((prompt, model, result)) = results.next().await {
        finished += 1;
        match result {
            Ok((answer, quality, judge_usd)) => {
                report.spent += answer.cost_usd + judge_usd;
                report.unreadable += usize::from(quality.is_none());
                let row = json!({"prompt_id": prompt.id, "prompt": prompt.text, "model": model,
                    "quality": quality, "input_tokens": answer.input_tokens,
                    "output_tokens": answer.output_tokens, "cost_usd": answer.cost_usd,
                    "latency_ms": answer.latency_ms, "response": answer.text,
                    "judge_model": judge_model, "rubric": rubric, "judge_usd": judge_usd});
                writeln!(file, "{row}").and_then(|()| file.flush())?;
                report.written += 1;
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(prompt = %prompt.id, %model, error = %e, "collect: no answer");
            }
        }
        if finished % 10 == 0 || finished == total {
            eprintln!(
                "collect: {finished}/{total} pairs, ${:.4} spent",
                report.spent
            );
        }
        if report.spent >= args.max_usd {
            report.capped = finished < total;
            break;
        }
    }
    Ok(report)
}

/// One pair: the answer, the judge's quality, and what judging cost.
async fn ask_one(
    collector: &Collector,
    prompt: &Prompt,
    model: &str,
) -> Result<(triage_gateway::collect::Collected, Option<f64>, f64), CollectError> {
    let answer = collector.answer(model, &prompt.text).await?;
    let (quality, judge_usd) = collector.judge(&prompt.text, &answer.text).await?;
    Ok((answer, quality, judge_usd))
}

/// The pairs already written and what they spent (a torn last line is skipped).
fn resume(rows_path: &Path) -> anyhow::Result<(HashSet<(String, String)>, f64)> {
    let mut done = HashSet::new();
    let mut spent = 0.0;
    let Ok(file) = File::open(rows_path) else {
        return Ok((done, spent));
    };
    for line in BufReader::new(file).lines() {
        let Ok(row) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        let text = |k: &str| {
            row.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let usd = |k: &str| row.get(k).and_then(Value::as_f64).unwrap_or_default();
        spent += usd("cost_usd") + usd("judge_usd");
        done.insert((text("prompt_id"), text("model")));
    }
    Ok((done, spent))
}

fn read_prompts(args: &CollectArgs) -> anyhow::Result<Vec<Prompt>> {
    let texts: Vec<(Option<String>, String)> = match (&args.prompts, &args.from_log) {
        (Some(path), None) => prompts_file(path)?,
        (None, Some(log)) => LogSource::parse(log)
            .records()?
            .into_iter()
            .filter_map(|r| match r {
                LogRecord::Decision(d) => d.prompt.map(|p| (None, p)),
                _ => None,
            })
            .collect(),
        _ => bail!("give one of --prompts FILE or --from-log DIR|URL"),
    };
    let mut seen = HashSet::new();
    let prompts: Vec<Prompt> = texts
        .into_iter()
        .filter(|(_, text)| !text.trim().is_empty())
        .map(|(id, text)| Prompt {
            // A stable id, so that a resumed run knows what it has asked.
            id: id.unwrap_or_else(|| triage_guard::hash_key(&text)[..16].to_owned()),
            text,
        })
        .filter(|p| seen.insert(p.id.clone()))
        .collect();
    if prompts.is_empty() {
        bail!("no prompts found (a log needs log.store_prompts = true to keep them)");
    }
    Ok(prompts)
}

fn prompts_file(path: &Path) -> anyhow::Result<Vec<(Option<String>, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_none_or(|e| e != "jsonl") {
        return Ok(text.lines().map(|l| (None, l.to_owned())).collect());
    }
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let Some(prompt) = row.get("prompt").and_then(Value::as_str) else {
            bail!("{}:{}: no \"prompt\" string", path.display(), i + 1);
        };
        let id = row.get("prompt_id").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        out.push((id, prompt.to_owned()));
    }
    Ok(out)
}

fn write_parquet(rows: &Path, out: &Path) -> anyhow::Result<()> {
    use polars::prelude::{JsonFormat, JsonReader, ParquetWriter, SerReader};
    let file = File::open(rows).with_context(|| format!("cannot read {}", rows.display()))?;
    let mut frame = JsonReader::new(file)
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .with_context(|| format!("{}: cannot be read as a table", rows.display()))?;
    let tmp = out.with_extension("parquet.tmp");
    let writer = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    ParquetWriter::new(writer)
        .finish(&mut frame)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
