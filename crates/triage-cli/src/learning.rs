//! Retraining inside `triage serve` (`[learning]`): the log the server writes (callers' scores,
//! the judge's verdicts, shadow answers) becomes a new policy without anyone running a command.
//!
//! The code is `triage train --from-log` itself ([`triage_train::train`]): the same join, the
//! same cross-validated choices, the same promotion gate, the same atomic write of the policy
//! file, which the hot-reload watcher then swaps in. A trigger (`retrain_every_outcomes` new
//! scored reports, or `retrain_every_secs` with at least one) starts it on a thread of its own
//! at the lowest scheduling priority, with a one-thread pool for training's parallel work, so
//! serving keeps the other cores. Each retrain leaves a record (counts, the gate's evidence,
//! promoted or not, the version) in the log, the `triage_retrains_total` metric and `/readyz`.
//!
//! With the PostgreSQL store every replica would retrain the same log; docs/learning.md says to turn
//! `[learning]` on in one replica (the others reload the file it writes when they share it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use triage_core::Settings;
use triage_engine::Service;
use triage_engine::metrics::RetrainLabel;
use triage_train::logdata::LogSource;
use triage_train::{TrainOptions, TrainReport};

/// Starts the trigger loop when `[learning]` is on (the task ends with the runtime).
pub fn start(service: &Service, settings: &Settings, base: PathBuf) {
    if !settings.learning.enabled() {
        return;
    }
    let (service, settings) = (service.clone(), settings.clone());
    tokio::spawn(async move { triggers(service, settings, base).await });
}

async fn triggers(service: Service, settings: Settings, base: PathBuf) {
    let learning = &settings.learning;
    let mut ticker = tokio::time::interval(Duration::from_secs(learning.check_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        ticker.tick().await;
        let scored = service.metrics().scored_feedback.get();
        let new = scored.saturating_sub(seen);
        let by_count =
            learning.retrain_every_outcomes > 0 && new >= learning.retrain_every_outcomes;
        let by_clock = learning.retrain_every_secs > 0
            && new > 0
            && since.elapsed() >= Duration::from_secs(learning.retrain_every_secs);
        if !(by_count || by_clock) {
            continue;
        }
        (seen, since) = (scored, Instant::now());
        let options = options(&settings, &base);
        let started = Instant::now();
        let trained = tokio::task::spawn_blocking(move || retrain(&options)).await;
        let record = match trained {
            Ok(Ok(report)) => promoted_or_kept(&service, &report, new, started.elapsed()),
            Ok(Err(e)) => failed(&service, &e.to_string(), new),
            Err(e) => failed(&service, &e.to_string(), new),
        };
        service.set_last_retrain(record);
    }
}

/// What `triage train --from-log LOG [--data SEED]` would be given.
fn options(settings: &Settings, base: &std::path::Path) -> TrainOptions {
    let log = match settings.log.backend {
        triage_core::config::LogBackend::File => LogSource::Dir(base.join(&settings.log.dir)),
        triage_core::config::LogBackend::Postgres => {
            LogSource::Postgres(settings.log.url.clone().unwrap_or_default())
        }
    };
    TrainOptions {
        data: settings.learning.seed_table.as_ref().map(|p| base.join(p)),
        from_log: Some(log),
        force: false,
        strict: false,
        models: None,
        out: base.join(&settings.policy.path),
        settings: settings.clone(),
        base: base.to_path_buf(),
        cache_dir: base.join(&settings.learning.cache_dir),
        progress: false,
        folds: triage_train::tune::DEFAULT_FOLDS,
        responses: None,
        tasks: None,
        judge_weight: settings.learning.judge_weight,
    }
}

/// Trains at the lowest priority on one thread.
fn retrain(options: &TrainOptions) -> anyhow::Result<TrainReport> {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(error = ?e, "retrain: cannot lower the thread's priority");
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    Ok(pool.install(|| triage_train::train(options))?)
}

fn promoted_or_kept(
    service: &Service,
    report: &TrainReport,
    new: u64,
    took: Duration,
) -> serde_json::Value {
    let v = &report.verdict;
    let outcome = if v.promote { "promoted" } else { "kept" };
    count(service, outcome);
    tracing::info!(outcome, version = %report.policy.version, evidence = %v.evidence,
        reason = %v.reason, new_scored_reports = new, log = ?report.log_counts,
        seconds = took.as_secs_f64(), "retrained from the log");
    json!({
        "outcome": outcome,
        "version": report.policy.version,
        "at_ms": triage_engine::feedback::now_ms(),
        "seconds": took.as_secs_f64(),
        "new_scored_reports": new,
        "log": report.log_counts,
        "prompts": {"train": report.prompts.0, "dev": report.prompts.1, "test": report.prompts.2},
        "gate": v,
    })
}

fn failed(service: &Service, error: &str, new: u64) -> serde_json::Value {
    count(service, "failed");
    tracing::warn!(%error, new_scored_reports = new, "retrain failed; the serving policy is unchanged");
    json!({
        "outcome": "failed",
        "at_ms": triage_engine::feedback::now_ms(),
        "new_scored_reports": new,
        "error": error,
    })
}

fn count(service: &Service, outcome: &str) {
    service
        .metrics()
        .retrains
        .get_or_create(&RetrainLabel {
            outcome: outcome.into(),
        })
        .inc();
}
