//! `triage`: the command-line entry point (server, one-off routing, catalog, training).

#[cfg(feature = "train")]
mod collect;
mod commands;
#[cfg(feature = "train")]
mod learning;
#[cfg(feature = "train")]
mod live;
#[cfg(feature = "train")]
mod simulate;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
#[cfg(feature = "train")]
use triage_train::logdata::LogSource;

/// Triage: a learned LLM model router.
#[derive(Parser)]
#[command(name = "triage", version, about)]
struct Cli {
    /// Configuration file (TOML) layered over the embedded defaults; TRIAGE_* variables override both.
    #[arg(long, global = true, env = "TRIAGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Quality,
    Balanced,
    Cost,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the SHA-256 to put in `sha256 = "..."` for a key (the key itself is never stored).
    Hash {
        /// The API key.
        key: String,
    },
}

#[cfg(feature = "train")]
#[derive(Subcommand)]
enum LogCommand {
    /// Compact the log's sealed segments into Parquet archives (safe while a server appends;
    /// a running server also does this by itself, see log.compact_after_segments).
    Compact {
        /// Log directory (overrides log.dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Compact only when at least this many sealed segments wait.
        #[arg(long, default_value_t = 1)]
        min_segments: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the log as analysis tables: decisions.parquet, feedback.parquet and
    /// verifications.parquet (for DuckDB, polars, pandas). Safe while a server appends.
    Export {
        /// The log: a server's --data-dir, or the PostgreSQL URL replicas share
        /// (postgres://user@host:port/db).
        #[arg(long)]
        from_log: String,
        /// Directory to write the tables into (created when missing; existing tables are never
        /// overwritten).
        #[arg(long)]
        to: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: gRPC and the OpenAI-compatible HTTP gateway, over one engine.
    Serve {
        /// Listen address, e.g. 127.0.0.1:50051 (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP gateway address, e.g. 127.0.0.1:8080, or `off` (overrides gateway.listen).
        #[arg(long, value_parser = parse_http_listen)]
        http_listen: Option<HttpListen>,
        /// Directory of the decision and feedback log (overrides log.dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (overrides metrics.listen).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// A first run without provider keys: a built-in local upstream answers for every
        /// provider (answers begin `[demo:MODEL]`, responses carry `x-triage-demo: true`);
        /// routing, records and learning are real. Replaces any [[providers]].
        #[arg(long)]
        demo: bool,
    },
    /// API key helpers.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Route one prompt in-process and print the decision.
    Route {
        /// The user prompt.
        prompt: String,
        /// Trade-off.
        #[arg(long, value_enum, default_value = "balanced")]
        mode: ModeArg,
        /// Cost weight λ (quality per USD); replaces --mode.
        #[arg(long)]
        cost_weight: Option<f64>,
        /// Budget per request, USD.
        #[arg(long)]
        max_cost_usd: Option<f64>,
    },
    /// Print the model catalog.
    Models,
    /// Decision and feedback log maintenance.
    #[cfg(feature = "train")]
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Train a policy from an outcome table, from the server's log, or both.
    #[cfg(feature = "train")]
    Train {
        /// Outcome table (.parquet, .csv or .jsonl).
        #[arg(long, required_unless_present = "from_log")]
        data: Option<PathBuf>,
        /// Learn from the server's decision and feedback log: its --data-dir, or the PostgreSQL
        /// URL replicas share (postgres://user@host:port/db).
        #[arg(long)]
        from_log: Option<String>,
        /// Only count what the log holds; train nothing.
        #[arg(long, requires = "from_log")]
        dry_run: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Replace the policy at --out even if the promotion gate says the new one is worse.
        #[arg(long)]
        force: bool,
        /// Only these models (comma-separated).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Where to write the policy.
        #[arg(long, default_value = "models/policy.json")]
        out: PathBuf,
        /// Refuse a table with an empty or NaN quality or cost instead of leaving those rows out.
        #[arg(long)]
        strict: bool,
        /// Cross-validation folds every training choice is made over (prompt-disjoint, by hash).
        #[arg(
            long,
            default_value_t = triage_train::tune::DEFAULT_FOLDS,
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=100)
        )]
        cv_folds: usize,
        /// Each model's answer texts (columns prompt_id, model, response; .parquet, .csv or
        /// .jsonl): also learn a verify-then-escalate acceptor.
        #[arg(long)]
        responses: Option<PathBuf>,
        /// Take each draft's final answer from this column of --responses instead of the
        /// generic extraction (to compare with a benchmark's own extraction).
        #[arg(long, requires = "responses")]
        answer_column: Option<String>,
        /// Train only on the table's prompts of these tasks (its `task` column; the log is
        /// not filtered).
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<String>>,
        /// What the judge's scores in the log weigh against callers' (0 leaves them out).
        #[arg(long, default_value_t = triage_train::DEFAULT_JUDGE_WEIGHT,
              value_parser = non_negative)]
        judge_weight: f64,
        /// Embedding cache directory.
        #[arg(long, default_value = ".cache/embeddings")]
        cache_dir: PathBuf,
    },
    /// Build an outcome table from your own prompts before serving them: ask each listed model
    /// through the configured providers and have the judge score every answer (resumable,
    /// capped by --max-usd).
    #[cfg(feature = "train")]
    Collect(Box<collect::CollectArgs>),
    /// Replay an outcome table as live traffic (route, feedback, retrain from the log) against a
    /// real server and report how the policy learns.
    #[cfg(feature = "train")]
    Simulate(Box<commands::SimulateArgs>),
    /// Evaluate a policy against baselines on one split of an outcome table.
    #[cfg(feature = "train")]
    Eval {
        /// Outcome table (.parquet, .csv or .jsonl).
        #[arg(long)]
        data: PathBuf,
        /// Policy to evaluate.
        #[arg(long, default_value = "models/policy.json")]
        policy: PathBuf,
        /// Split reported on.
        #[arg(long, default_value = "test")]
        split: String,
        /// Strong,weak pair for APGR and CPT.
        #[arg(long, value_delimiter = ',', num_args = 1)]
        pair: Option<Vec<String>>,
        /// Write a cost–quality plot (SVG).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write Triage's per-prompt choices (CSV, or Parquet by extension).
        #[arg(long)]
        export_choices: Option<PathBuf>,
        /// Also refit and evaluate over K prompt-disjoint folds and report mean ± spread.
        #[arg(long)]
        folds: Option<usize>,
        /// Also refit once per task, leaving that task out of training and testing on it.
        #[arg(long)]
        leave_one_task_out: bool,
        /// Cross-validation folds each refit (--folds, --leave-one-task-out) makes its own
        /// choices over, as `train --cv-folds`.
        #[arg(
            long,
            default_value_t = triage_train::tune::DEFAULT_FOLDS,
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=100)
        )]
        cv_folds: usize,
        /// Paired-bootstrap resamples of the evaluated prompts for Triage's intervals against the
        /// other routers (0: none).
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        /// Refuse a table with an empty or NaN quality or cost instead of leaving those rows out.
        #[arg(long)]
        strict: bool,
        /// Each model's answer texts (columns prompt_id, model, response; .parquet, .csv or
        /// .jsonl): for --cascade.
        #[arg(long)]
        responses: Option<PathBuf>,
        /// Take each draft's final answer from this column of --responses instead of the
        /// generic extraction (to compare with a benchmark's own extraction).
        #[arg(long, requires = "responses")]
        answer_column: Option<String>,
        /// Also score verify-then-escalate cascades (the policy's acceptor and two fixed rules)
        /// beside routing alone; --export-choices then writes the cascade's outcomes.
        #[arg(long, requires = "responses")]
        cascade: bool,
        /// Evaluate only on the table's prompts of these tasks (its `task` column), e.g. a
        /// kind of prompt the policy was not trained on.
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<String>>,
        /// Embedding cache directory.
        #[arg(long, default_value = ".cache/embeddings")]
        cache_dir: PathBuf,
        /// Parity check: also send the evaluated prompts through the gateway at this URL
        /// (`triage serve` with the same policy and catalog) in each built-in mode, and compare
        /// its decisions with eval's; exits 1 when any differs.
        #[arg(long)]
        live: Option<String>,
        /// The environment variable holding the API key for --live (an admin key, or one in
        /// `gateway.explain_keys`).
        #[arg(long, default_value = "TRIAGE_API_KEY", requires = "live")]
        live_key_env: String,
        /// Requests in flight at once for --live.
        #[arg(long, default_value_t = 4, requires = "live",
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
        live_concurrency: usize,
    },
}

/// `--http-listen`: an address, or `off`.
#[derive(Clone, Debug)]
struct HttpListen(Option<SocketAddr>);

/// A finite number ≥ 0.
#[cfg(feature = "train")]
pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number ≥ 0")),
    }
}

fn parse_http_listen(value: &str) -> Result<HttpListen, String> {
    if value == "off" {
        return Ok(HttpListen(None));
    }
    value
        .parse()
        .map(|a| HttpListen(Some(a)))
        .map_err(|e| format!("{e}: give HOST:PORT, or `off` for no gateway"))
}

fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init()?;
    let cli = Cli::parse();
    let settings = triage_core::Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve {
            listen,
            http_listen,
            data_dir,
            metrics_listen,
            demo,
        } => {
            let mut settings = settings;
            if let Some(HttpListen(addr)) = http_listen {
                settings.gateway.listen = addr;
            }
            let doors = commands::Doors {
                listen,
                metrics_listen,
                demo,
            };
            commands::serve(settings, doors, data_dir)
        }
        Command::Keys {
            command: KeysCommand::Hash { key },
        } => {
            println!("{}", triage_guard::hash_key(&key));
            Ok(())
        }
        Command::Route {
            prompt,
            mode,
            cost_weight,
            max_cost_usd,
        } => {
            let mode = match mode {
                ModeArg::Quality => triage_core::Mode::Quality,
                ModeArg::Balanced => triage_core::Mode::Balanced,
                ModeArg::Cost => triage_core::Mode::Cost,
            };
            let prefs = triage_core::Preferences {
                mode,
                cost_weight,
                max_cost_usd,
                ..Default::default()
            };
            commands::route(settings, &prompt, prefs)
        }
        Command::Models => commands::models(&settings),
        #[cfg(feature = "train")]
        Command::Log {
            command:
                LogCommand::Compact {
                    data_dir,
                    min_segments,
                    json,
                },
        } => commands::compact_log(&data_dir.unwrap_or(settings.log.dir), min_segments, json),
        #[cfg(feature = "train")]
        Command::Log {
            command: LogCommand::Export { from_log, to, json },
        } => commands::export_log(&LogSource::parse(&from_log), &to, json),
        #[cfg(feature = "train")]
        Command::Train {
            data,
            from_log,
            dry_run,
            json,
            force,
            models,
            out,
            strict,
            cv_folds,
            responses,
            answer_column,
            tasks,
            judge_weight,
            cache_dir,
        } => {
            if dry_run {
                let source = from_log.as_deref().map(LogSource::parse);
                return commands::log_counts(source.as_ref(), json);
            }
            let sources = commands::TrainSources {
                data,
                from_log: from_log.as_deref().map(LogSource::parse),
                force,
                strict,
                cv_folds,
                responses: responses.map(|path| triage_train::responses::ResponsesSource {
                    path,
                    answer_column,
                }),
                tasks,
                judge_weight,
            };
            commands::train(settings, sources, models, out, cache_dir, json)
        }
        #[cfg(feature = "train")]
        Command::Simulate(args) => commands::simulate(settings, *args),
        #[cfg(feature = "train")]
        Command::Collect(args) => collect::collect(settings, *args),
        #[cfg(feature = "train")]
        Command::Eval {
            data,
            policy,
            split,
            pair,
            plot,
            json,
            export_choices,
            folds,
            leave_one_task_out,
            cv_folds,
            bootstrap,
            strict,
            responses,
            answer_column,
            cascade,
            tasks,
            cache_dir,
            live,
            live_key_env,
            live_concurrency,
        } => {
            let pair = match pair.as_deref() {
                None => None,
                Some([strong, weak]) => Some((strong.clone(), weak.clone())),
                Some(_) => anyhow::bail!("--pair takes exactly two models: STRONG,WEAK"),
            };
            let outputs = commands::EvalFiles {
                plot,
                json,
                export_choices,
                folds,
                leave_one_task_out,
                cv_folds,
                bootstrap,
                strict,
                responses: responses.map(|path| triage_train::responses::ResponsesSource {
                    path,
                    answer_column,
                }),
                cascade,
                tasks,
                live: live.map(|url| live::Live {
                    url,
                    key: std::env::var(&live_key_env).ok().filter(|k| !k.is_empty()),
                    concurrency: live_concurrency,
                }),
            };
            commands::eval(settings, data, policy, &split, pair, outputs, cache_dir)
        }
    }
}
