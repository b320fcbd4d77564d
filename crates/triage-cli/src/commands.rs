//! Implementations of the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use triage_core::{Conversation, Preferences, Settings};
use triage_engine::startup::{self, Background};
use triage_server::{RoutingEngine, RoutingRequest};

fn base_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("cannot read the working directory")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")
}

/// Where `serve` listens, from the command line, and whether it is a demo.
pub struct Doors {
    /// gRPC (overrides `server.listen`).
    pub listen: Option<SocketAddr>,
    /// Prometheus (overrides `metrics.listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// A built-in local upstream answers for every provider.
    pub demo: bool,
}

pub fn serve(
    mut settings: Settings,
    doors: Doors,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    if let Some(addr) = doors.metrics_listen {
        settings.metrics.listen = Some(addr);
    }
    if let Some(addr) = doors.listen {
        settings.server.listen = addr;
    }
    if doors.demo && settings.gateway.listen.is_none() {
        anyhow::bail!("--demo answers through the HTTP gateway: leave --http-listen on");
    }
    if let Some(dir) = data_dir {
        settings.log.dir = dir;
    }
    let engine = RoutingEngine::from_settings(&settings, &base_dir()?)?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let http = startup::bind_optional(settings.gateway.listen, "gateway").await?;
        let metrics = startup::bind_metrics(&settings).await?;
        // The demo's stand-in for every provider lives as long as the server.
        let demo = if doors.demo {
            Some(demo_upstream(&mut settings).await?)
        } else {
            None
        };
        let service = startup::open(engine, &settings, log_archive()).await?;
        let gateway = match http {
            Some(l) => {
                let g = triage_gateway::Gateway::new(service.clone(), &settings)?;
                Some((if demo.is_some() { g.demo() } else { g }, l))
            }
            None => None,
        };
        // Plain lines on stdout so scripts can find the ports when listening on port 0.
        println!("listening on {}", listener.local_addr()?);
        if let Some((_, l)) = &gateway {
            println!("gateway on http://{}", l.local_addr()?);
        }
        if let Some(m) = &metrics {
            println!("metrics on http://{}/metrics", m.local_addr()?);
        }
        if let Some(upstream) = &demo {
            println!(
                "demo: every provider is a local stand-in at {} (answers begin [demo:MODEL]; \
                 routing and records are real)",
                upstream.base_url()
            );
        }
        tracing::info!(
            grpc = %listener.local_addr()?,
            http = ?gateway.as_ref().and_then(|(_, l)| l.local_addr().ok()),
            policy = service.engine().policy().version(),
            log = %log_location(&settings),
            models = service.engine().catalog().models().len(),
            providers = settings.providers.len(),
            demo = demo.is_some(),
            "triage serving: gRPC (triage.v1.Router, grpc.health.v1, reflection) and the HTTP \
             gateway (chat completions, Responses, Messages)"
        );
        let _background = Background::start(&service, &settings, metrics, log_archive());
        #[cfg(feature = "train")]
        crate::learning::start(&service, &settings, base_dir()?);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        };
        tokio::spawn(signal);
        let when = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let http_door = async {
            match gateway {
                Some((g, l)) => triage_gateway::serve(g, l, when(stopped.clone()))
                    .await
                    .context("HTTP gateway failed"),
                None => Ok(()),
            }
        };
        let grpc_door = async {
            triage_server::serve_grpc(service.clone(), &settings, listener, when(stopped.clone()))
                .await
                .context("gRPC server failed")
        };
        let (grpc, http) = tokio::join!(grpc_door, http_door);
        // Decisions still queued for a shared store are written before the process ends (the
        // file log flushes when the last door lets it go).
        if let Err(e) = service.close_log().await {
            tracing::warn!(error = %e, "records still queued could not be written");
        }
        grpc?;
        http?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Starts the demo's local upstream and points one provider per catalog provider at it,
/// replacing any configured.
async fn demo_upstream(settings: &mut Settings) -> anyhow::Result<triage_testkit::LocalUpstream> {
    let behaviour = triage_testkit::Behaviour {
        demo: true,
        ..triage_testkit::Behaviour::default()
    };
    let upstream = triage_testkit::LocalUpstream::start(behaviour)
        .await
        .context("cannot start the demo's local upstream")?;
    if !settings.providers.is_empty() {
        tracing::warn!(
            configured = settings.providers.len(),
            "--demo: the configured [[providers]] are not called; the local stand-in answers"
        );
    }
    settings.providers = triage_testkit::local_providers(settings, &upstream.base_url());
    Ok(upstream)
}

/// Where the log lives, for the start-up line (a database URL without its credentials).
fn log_location(settings: &Settings) -> String {
    match settings.log.backend {
        triage_core::config::LogBackend::File => settings.log.dir.display().to_string(),
        triage_core::config::LogBackend::Postgres => {
            triage_postgres::redacted(settings.log.url.as_deref().unwrap_or_default())
        }
    }
}

/// The format compacted log archives are read and written in: Parquet, which needs polars, so
/// only with the `train` feature. Without it a log holding archives is refused at start.
fn log_archive() -> Option<std::sync::Arc<dyn triage_server::ArchiveFormat>> {
    #[cfg(feature = "train")]
    return Some(std::sync::Arc::new(triage_archive::ParquetArchive));
    #[cfg(not(feature = "train"))]
    return None;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: draining in-flight requests");
}

pub fn route(settings: Settings, prompt: &str, preferences: Preferences) -> anyhow::Result<()> {
    let engine = RoutingEngine::from_settings(&settings, &base_dir()?)?;
    preferences.validate(engine.catalog(), "")?;
    let request = RoutingRequest::anonymous(Conversation::single_user(prompt)?, preferences);
    let outcome = runtime()?.block_on(engine.route("cli", &request))?;
    let d = &outcome.decision;
    println!("model:    {}", d.chosen().model);
    println!("why:      {}", d.explanation);
    println!("policy:   {}", outcome.policy_version);
    if let Some(f) = outcome.familiarity {
        println!(
            "familiar: {f:.3} (mean similarity to the policy's nearest training prompts); trust in \
             its prompt-specific predictions {:.2}",
            outcome.trust
        );
    }
    println!("tokens:   ~{} input", outcome.input_tokens);
    println!(
        "time:     encoder {} us, policy {} us",
        outcome.encoder_us, outcome.policy_us
    );
    println!();
    println!(
        "{:<4} {:<30} {:>8} {:>12} {:>8}  status",
        "rank", "model", "quality", "cost USD", "out tok"
    );
    for (i, c) in d.candidates.iter().enumerate() {
        let status = c
            .exclusion
            .as_ref()
            .map_or("eligible".to_owned(), |e| e.to_string());
        println!(
            "{:<4} {:<30} {:>8.3} {:>12.6} {:>8.0}  {status}",
            i + 1,
            c.model,
            c.quality,
            c.cost_usd,
            c.output_tokens
        );
    }
    Ok(())
}

pub fn models(settings: &Settings) -> anyhow::Result<()> {
    let catalog = settings.catalog()?;
    let path = base_dir()?.join(&settings.policy.path);
    let policy = triage_policy::Policy::load(&path)
        .with_context(|| format!("cannot read the policy {}", path.display()))?;
    let learned: std::collections::HashSet<&str> = policy.model_names().collect();
    println!(
        "{:<30} {:<10} {:>9} {:>9} {:>9}  {:<7} {:<32} capabilities",
        "model", "provider", "in $/1M", "out $/1M", "context", "enabled", "predictions from"
    );
    for m in catalog.models() {
        let caps: Vec<&str> = m.capabilities.iter().map(|c| c.as_str()).collect();
        // What the policy's predictions for the model rest on.
        let basis = match &m.prior_from {
            _ if learned.contains(m.name.as_str()) => "outcomes".to_owned(),
            Some(from) if learned.contains(from.as_str()) => {
                format!("prior: {from} {:+}", m.prior_offset)
            }
            _ => "nothing (never chosen)".to_owned(),
        };
        println!(
            "{:<30} {:<10} {:>9.3} {:>9.3} {:>9}  {:<7} {:<32} {}{}",
            m.name,
            m.provider,
            m.input_usd_per_1m,
            m.output_usd_per_1m,
            m.context_window,
            m.enabled,
            basis,
            caps.join(","),
            if m.reasoning { " (reasoning)" } else { "" }
        );
    }
    Ok(())
}

#[cfg(feature = "train")]
pub use crate::simulate::SimulateArgs;

#[cfg(feature = "train")]
pub fn simulate(settings: Settings, args: SimulateArgs) -> anyhow::Result<()> {
    crate::simulate::run(settings, args, base_dir()?)
}

#[cfg(feature = "train")]
pub struct TrainSources {
    pub data: Option<PathBuf>,
    pub from_log: Option<triage_train::logdata::LogSource>,
    pub force: bool,
    pub strict: bool,
    pub cv_folds: usize,
    pub responses: Option<triage_train::responses::ResponsesSource>,
    pub tasks: Option<Vec<String>>,
    pub judge_weight: f64,
}

/// `triage log compact`: sealed segments into Parquet archives.
#[cfg(feature = "train")]
pub fn compact_log(dir: &std::path::Path, min_segments: usize, json: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: no such log directory (the server's --data-dir)",
            dir.display()
        );
    }
    let report = triage_log::compact(dir, &triage_archive::ParquetArchive, min_segments)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} segments ({} bytes) compacted into {} Parquet archive(s) ({} bytes), {} \
             records; {} damaged segment(s) kept, {} leftover(s) deleted",
            dir.display(),
            report.segments,
            report.segment_bytes,
            report.archives,
            report.archive_bytes,
            report.records,
            report.damaged_kept,
            report.leftovers_deleted
        );
    }
    Ok(())
}

/// `triage log export`: the log as one Parquet table per record kind.
#[cfg(feature = "train")]
pub fn export_log(
    from: &triage_train::logdata::LogSource,
    to: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let records = from.records()?;
    let report = triage_archive::export_tables(&records, to)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{from}: {} decisions, {} feedback reports, {} verdicts written to {}",
            report.decisions,
            report.feedback,
            report.verifications,
            to.display(),
        );
    }
    Ok(())
}

/// `triage train --from-log SOURCE --dry-run`: distinct decisions, reports and outcomes.
#[cfg(feature = "train")]
pub fn log_counts(
    source: Option<&triage_train::logdata::LogSource>,
    json: bool,
) -> anyhow::Result<()> {
    let source = source.context("--dry-run needs --from-log DIR or --from-log postgres://…")?;
    let counts = triage_train::logdata::LoggedData::read(source)?.counts;
    if json {
        println!("{}", serde_json::to_string(&counts)?);
    } else {
        println!(
            "{source}: {} decisions, {} feedback reports, {} outcomes (distinct, joined)",
            counts.decisions, counts.feedback, counts.outcomes
        );
    }
    Ok(())
}

#[cfg(feature = "train")]
pub fn train(
    settings: Settings,
    sources: TrainSources,
    models: Option<Vec<String>>,
    out: PathBuf,
    cache_dir: PathBuf,
    json: bool,
) -> anyhow::Result<()> {
    let options = triage_train::TrainOptions {
        data: sources.data,
        from_log: sources.from_log,
        force: sources.force,
        strict: sources.strict,
        models,
        out: out.clone(),
        settings,
        base: base_dir()?,
        cache_dir,
        progress: !json,
        folds: sources.cv_folds,
        responses: sources.responses,
        tasks: sources.tasks,
        judge_weight: sources.judge_weight,
    };
    let report = triage_train::train(&options)?;
    let p = &report.policy;
    let v = &report.verdict;
    if json {
        let summary = serde_json::json!({
            "version": p.version,
            "out": out,
            "written": v.promote,
            "gate": v,
            "prompts": {"train": report.prompts.0, "dev": report.prompts.1, "test": report.prompts.2},
            "models": p.models.len(),
            "routing": report.routing,
            "acceptor": p.acceptor.as_ref().map(|a| serde_json::json!({
                "plans": a.plans.iter().map(|pl| &pl.drafts).collect::<Vec<_>>(),
                "cascading_settings": a.settings.iter().filter(|s| s.plan.is_some()).count(),
                "answers": a.answers,
            })),
            "log": report.log_counts,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "prompts: {} train, {} dev (both trained on), {} test; models: {}",
            report.prompts.0,
            report.prompts.1,
            report.prompts.2,
            p.models.len()
        );
        println!("routing: {}", report.routing);
        if let Some(a) = &p.acceptor {
            let cascading = a.settings.iter().filter(|s| s.plan.is_some()).count();
            println!(
                "acceptor: {} draft plans; drafts first at {} of {} cost weights (final answers: {})",
                a.plans.len(),
                cascading,
                a.settings.len(),
                a.answers
            );
        }
        println!(
            "margins: balanced {:.3}, cost {:.3}",
            p.decision.balanced_margin, p.decision.cost_margin
        );
        if let Some(c) = report.log_counts {
            println!(
                "log: {} decisions, {} feedback reports, {} outcomes",
                c.decisions, c.feedback, c.outcomes
            );
        }
        println!("gate ({}): {}", v.evidence, v.reason);
        if v.promote {
            println!("wrote {} (version {})", out.display(), p.version);
        } else {
            println!(
                "kept the current {}; candidate {} written to {} (--force promotes it)",
                out.display(),
                p.version,
                triage_train::candidate_path(&out).display()
            );
        }
    }
    if !v.promote {
        // Scripts learn from the exit status that nothing was replaced.
        std::process::exit(3);
    }
    Ok(())
}

#[cfg(feature = "train")]
pub struct EvalFiles {
    pub plot: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub export_choices: Option<PathBuf>,
    pub folds: Option<usize>,
    pub leave_one_task_out: bool,
    pub cv_folds: usize,
    pub bootstrap: usize,
    pub strict: bool,
    pub responses: Option<triage_train::responses::ResponsesSource>,
    pub cascade: bool,
    pub tasks: Option<Vec<String>>,
    pub live: Option<crate::live::Live>,
}

/// Prints a per-router summary of refits (folds or tasks).
#[cfg(feature = "train")]
fn print_folds(summary: &[triage_train::eval::folds::FoldSummary], per_fold: &str) {
    use triage_train::eval::folds::mean_sd;
    println!(
        "{:<36} {:>18} {:>29}  {per_fold}",
        "router", "AIQ", "cost@parity"
    );
    for s in summary {
        let reached: Vec<f64> = s.cost_at_parity_pct.iter().flatten().copied().collect();
        let aiqs: Vec<String> = s.aiq.iter().map(|a| format!("{a:.4}")).collect();
        println!(
            "{:<36} {:>18} {:>15} ({}/{} reached)  {}",
            s.name,
            mean_sd(&s.aiq),
            mean_sd(&reached),
            reached.len(),
            s.aiq.len(),
            aiqs.join(" ")
        );
    }
}

#[cfg(feature = "train")]
pub fn eval(
    settings: Settings,
    data: PathBuf,
    policy_path: PathBuf,
    split: &str,
    pair: Option<(String, String)>,
    files: EvalFiles,
    cache_dir: PathBuf,
) -> anyhow::Result<()> {
    use triage_train::eval::{EvalOptions, evaluate, export_choices, plot, render_table};
    let split = triage_train::table::Split::from_arg(split)?;
    let policy = triage_policy::Policy::load(&policy_path)?;
    if files.cascade && policy.file().acceptor.is_none() {
        anyhow::bail!(
            "--cascade: policy {} ({}) has no acceptor; train it with --responses FILE",
            policy.version(),
            policy_path.display()
        );
    }
    // Latency figures for the cascade's critical path.
    let latency_catalog = files.cascade.then(|| settings.catalog()).transpose()?;
    let options = triage_train::TrainOptions {
        data: Some(data),
        from_log: None,
        force: false,
        strict: files.strict,
        models: Some(policy.model_names().map(str::to_owned).collect()),
        out: PathBuf::new(),
        settings,
        base: base_dir()?,
        cache_dir,
        progress: true,
        folds: triage_train::tune::DEFAULT_FOLDS,
        responses: None,
        tasks: files.tasks.clone(),
        judge_weight: triage_train::DEFAULT_JUDGE_WEIGHT,
    };
    // Output directories are made now, as `train` makes its --out's, so that one that cannot be
    // fails before minutes of evaluation rather than after.
    for path in [&files.json, &files.plot, &files.export_choices]
        .into_iter()
        .flatten()
    {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot write {}: cannot create directory {}",
                    path.display(),
                    dir.display()
                )
            })?;
        }
    }
    let prepared = triage_train::prepare(&options)?;
    if let Some(k) = files.folds {
        triage_train::eval::folds::check_folds(&prepared, k)?;
    }
    let options = EvalOptions {
        split,
        pair,
        resamples: files.bootstrap,
    };
    // Read before evaluating, so a bad responses file fails first.
    let responses = match (&files.responses, files.cascade) {
        (Some(source), true) => Some(triage_train::responses::Responses::load(
            source,
            &prepared.outcomes,
        )?),
        _ => None,
    };
    let report = evaluate(&prepared, &policy, &options)?;
    print!("{}", render_table(&report));
    let cascade = match (&responses, &latency_catalog) {
        (Some(responses), Some(catalog)) => {
            use triage_train::cascade::eval::{evaluate_cascade, render_cascade};
            let c = evaluate_cascade(
                &prepared,
                &policy,
                responses,
                catalog,
                split,
                files.bootstrap,
            )?;
            print!("{}", render_cascade(&c));
            Some(c)
        }
        _ => None,
    };
    let mut fold_summary = None;
    if let Some(k) = files.folds {
        let (_, summary) = triage_train::eval::folds::cross_validate(&prepared, k, files.cv_folds)?;
        println!("\n{k}-fold cross-validation (policy refitted per fold; mean ± sd):");
        print_folds(&summary, "AIQ per fold");
        fold_summary = Some(summary);
    }
    let mut by_task = None;
    if files.leave_one_task_out {
        let by = triage_train::eval::folds::leave_one_task_out(&prepared, files.cv_folds)?;
        let (tasks, summary) = (by.tasks, by.summary);
        println!(
            "\nleave one task out (trained without the task, tested on it; mean ± sd over tasks):"
        );
        print_folds(&summary, &format!("AIQ per task: {}", tasks.join(", ")));
        by_task = Some(serde_json::json!({ "tasks": tasks, "routers": summary }));
    }
    let parity = match &files.live {
        Some(live) => Some(live_parity(&prepared, &policy, split, live)?),
        None => None,
    };
    if let Some(path) = files.json {
        let json = serde_json::json!({
            "report": report,
            "folds": fold_summary,
            "leave_one_task_out": by_task,
            "cascade": cascade,
            "parity": parity,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = files.plot {
        let mut series = Vec::new();
        // With --cascade, its rows join the plot (the routing rows are the same prompts').
        let cascade_rows = cascade.iter().flat_map(|c| &c.routers);
        for r in report.routers.iter().chain(cascade_rows) {
            series.push(plot::Series {
                name: &r.name,
                points: &r.hull,
            });
        }
        let title = format!(
            "cost vs quality, {} split ({} prompts)",
            report.split, report.prompts
        );
        plot::write_svg(&path, &title, &series, &report.singles)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = files.export_choices {
        match &cascade {
            Some(c) => triage_train::cascade::eval::export_cascade_choices(c, &path)?,
            None => export_choices(&report, &path)?,
        }
        println!("wrote {}", path.display());
    }
    match parity {
        Some(p) if !p.agrees() => anyhow::bail!(
            "--live: {} of {} decisions differ between eval and the gateway",
            p.disagreeing,
            p.modes.iter().map(|m| m.prompts).sum::<usize>()
        ),
        _ => Ok(()),
    }
}

/// `eval --live`: the evaluated prompts through the gateway, compared with eval's decisions.
#[cfg(feature = "train")]
fn live_parity(
    prepared: &triage_train::Prepared,
    policy: &triage_policy::Policy,
    split: triage_train::table::Split,
    live: &crate::live::Live,
) -> anyhow::Result<triage_train::eval::parity::ParityReport> {
    use triage_train::eval::parity::{MODES, compare, prompts, render_parity};
    let prompts = prompts(prepared, split);
    let texts: Vec<&str> = prompts
        .iter()
        .map(|&p| prepared.outcomes.prompts[p].text.as_str())
        .collect();
    eprintln!(
        "--live: sending {} prompts x {} modes to {}",
        texts.len(),
        MODES.len(),
        live.url
    );
    let served = crate::live::fetch(live, &texts, &MODES)?;
    let other = served
        .iter()
        .flatten()
        .flatten()
        .find(|s| s.policy_version != policy.version());
    if let Some(s) = other {
        anyhow::bail!(
            "--live: the gateway decides with policy {:?}, not {:?} as evaluated here: serve the \
             same policy file (and catalog) to compare them",
            s.policy_version,
            policy.version()
        );
    }
    let replay = prepared.replay(policy, prompts)?;
    let report = compare(prepared, &replay, policy.version(), &served);
    print!("{}", render_parity(&report));
    Ok(report)
}
