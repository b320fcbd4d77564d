//! `triage simulate`: options and output.

use std::path::PathBuf;

use anyhow::Context;
use triage_core::Settings;
use triage_sim::{Drift, Judge, SimOptions, Start, simulate, write_svg};
use triage_train::table::Split;

/// Options of `triage simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Outcome table replayed as traffic.
    #[arg(long)]
    data: PathBuf,
    /// Split replayed as traffic (shuffled).
    #[arg(long, default_value = "train")]
    split: String,
    /// Split on which the serving policy's AIQ is measured after each round ("none" to skip).
    #[arg(long, default_value = "test")]
    eval_split: String,
    /// At most this many requests.
    #[arg(long)]
    requests: Option<usize>,
    /// Retrain from the log every this many requests.
    #[arg(long, default_value_t = 250)]
    retrain_every: usize,
    /// Start from a prior-only policy (cold start).
    #[arg(long, conflicts_with_all = ["start_policy", "hide"])]
    cold_start: bool,
    /// Start from this policy file (default: the configured policy).
    #[arg(long)]
    start_policy: Option<PathBuf>,
    /// New-model scenario: this catalog model is left out of the starting policy and of the seed
    /// data, and learned from usage only.
    #[arg(long, requires = "prior_from")]
    hide: Option<String>,
    /// Known model whose predictions the hidden model borrows until learned.
    #[arg(long)]
    prior_from: Option<String>,
    /// Log-odds offset of the borrowed quality.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    prior_offset: f64,
    /// Drift scenario: degrade this model ("auto": the busiest one) from --drift-after on.
    #[arg(long)]
    drift: Option<String>,
    /// Share of the drifted model's answers whose quality becomes 0.
    #[arg(long, default_value_t = 0.3)]
    drift_share: f64,
    /// Request index at which the drift starts.
    #[arg(long, default_value_t = 500)]
    drift_after: usize,
    /// Exploration rate (overrides exploration.rate).
    #[arg(long)]
    explore: Option<f64>,
    /// Online correction step (overrides exploration.learning_rate).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Mix the table itself (its catalog models) into every retrain, as a seed dataset (set
    /// automatically with --hide, without the hidden model).
    #[arg(long)]
    with_seed: bool,
    /// Policy to compare with on the evaluation split (e.g. the offline-trained one).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Fresh directory for the simulation's log and policy.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Seed of the traffic order and of the server's exploration draws.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write a plot (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Domain shift: start from a policy trained on these tasks of the table (its `task`
    /// column; or --cold-start / --start-policy), serve --requests drawn with replacement from
    /// the other tasks' training prompts, and evaluate on their test prompts beside a policy
    /// trained offline on them with every label.
    #[arg(long, value_delimiter = ',')]
    start_tasks: Option<Vec<String>>,
    /// The tasks the traffic shifts to (default: every task not in --start-tasks).
    #[arg(long, value_delimiter = ',', requires = "start_tasks")]
    shift_tasks: Option<Vec<String>>,
    /// Share of requests a simulated judge scores; with a judge, its verdicts are the only
    /// quality the server is told (unset: every outcome is reported).
    #[arg(long)]
    judge_rate: Option<f64>,
    /// Probability that a verdict is wrong (quality q reported as 1 − q).
    #[arg(long, default_value_t = 0.0, requires = "judge_rate")]
    judge_noise: f64,
    /// Catalog model whose prices the judge's calls are costed at (prompt, answer and rubric
    /// in; a short verdict out).
    #[arg(long, requires = "judge_rate")]
    judge_model: Option<String>,
    /// Share of judged requests that also get a judged shadow answer from a model predicted
    /// cheaper than the chosen one (its call is the judge's spend).
    #[arg(long, default_value_t = 0.0, requires = "judge_rate")]
    shadow_rate: f64,
    /// Route among exactly the table's models at its prices (for a table of models the
    /// configured catalog does not list).
    #[arg(long)]
    table_catalog: bool,
    /// Embedding cache directory.
    #[arg(long, default_value = ".cache/embeddings")]
    cache_dir: PathBuf,
}

fn split_arg(name: &str) -> anyhow::Result<Option<Split>> {
    if name == "none" {
        return Ok(None);
    }
    Ok(Some(Split::from_arg(name)?))
}

pub fn run(mut settings: Settings, args: SimulateArgs, base: PathBuf) -> anyhow::Result<()> {
    if let Some(rate) = args.explore {
        settings.exploration.rate = rate;
    }
    if let Some(rate) = args.learning_rate {
        settings.exploration.learning_rate = rate;
    }
    // One seed makes the whole run repeatable: traffic order and exploration draws.
    settings.exploration.seed = Some(args.seed);
    let catalog_models: Vec<String> = settings.models.iter().map(|m| m.name.clone()).collect();
    let (start, seed_models) = match (&args.hide, args.cold_start, &args.start_policy) {
        (Some(hidden), _, _) => {
            let spec = settings
                .models
                .iter_mut()
                .find(|m| &m.name == hidden)
                .with_context(|| format!("--hide {hidden}: not a catalog model"))?;
            spec.prior_from = args.prior_from.clone();
            spec.prior_offset = args.prior_offset;
            let others: Vec<String> = catalog_models.into_iter().filter(|m| m != hidden).collect();
            (Start::Train(others.clone()), Some(others))
        }
        (None, true, _) => (Start::Prior, None),
        (None, false, Some(path)) => (Start::Policy(path.clone()), None),
        (None, false, None) if args.start_tasks.is_some() => {
            (Start::Train(catalog_models.clone()), None)
        }
        (None, false, None) => (Start::Policy(base.join(&settings.policy.path)), None),
    };
    let seed_models = seed_models.or_else(|| {
        args.with_seed
            .then(|| settings.models.iter().map(|m| m.name.clone()).collect())
    });
    settings.catalog()?;
    let workdir = match args.workdir {
        Some(dir) => dir,
        None => base.join(format!(
            ".cache/simulate/{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )),
    };
    let options = SimOptions {
        data: args.data,
        traffic_split: Split::from_arg(&args.split)?,
        eval_split: split_arg(&args.eval_split)?,
        requests: args.requests,
        retrain_every: args.retrain_every,
        start,
        seed_models,
        drift: args.drift.map(|model| Drift {
            model: (model != "auto").then_some(model),
            share: args.drift_share,
            after: args.drift_after,
        }),
        mode: triage_core::Mode::Balanced,
        settings,
        base,
        workdir: workdir.clone(),
        cache_dir: args.cache_dir,
        seed: args.seed,
        reference: args.reference,
        start_tasks: args.start_tasks,
        shift_tasks: args.shift_tasks,
        table_catalog: args.table_catalog,
        judge: args.judge_rate.map(|rate| Judge {
            rate,
            noise: args.judge_noise,
            model: args.judge_model,
            shadow_rate: args.shadow_rate,
        }),
    };
    let report = simulate(&options)?;
    println!(
        "{:>5} {:>8} {:>9} {:>11} {:>8} {:>8} {:>9}  top models",
        "round", "requests", "quality", "cost USD", "explored", "AIQ", "cand. AIQ"
    );
    for r in &report.rounds {
        let mut top: Vec<(&String, &f64)> = r.shares.iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(a.1));
        let top: Vec<String> = top
            .iter()
            .take(3)
            .map(|(m, s)| format!("{m} {:.0}%", *s * 100.0))
            .collect();
        println!(
            "{:>5} {:>8} {:>9.4} {:>11.6} {:>8} {:>8} {:>9}  {}",
            r.round,
            r.requests,
            r.mean_quality,
            r.mean_cost,
            r.explored,
            r.eval_aiq.map_or("-".into(), |a| format!("{a:.4}")),
            r.candidate_aiq.map_or("-".into(), |a| format!("{a:.4}")),
            top.join(", ")
        );
        println!("      {}", r.retrain);
    }
    if let Some(a) = report.start_aiq {
        println!("starting policy AIQ: {a:.4}");
    }
    if let Some(a) = report.reference_aiq {
        println!("reference policy AIQ: {a:.4}");
    }
    if let Some(a) = report.zero_router_aiq {
        println!("zero router AIQ (best single model at each trade-off): {a:.4}");
    }
    if let Some(a) = report.offline_aiq {
        println!("offline policy AIQ (trained on the shifted tasks with every label): {a:.4}");
    }
    if let Some(g) = report.gap_closed {
        println!(
            "gap closed: {:.1}% of the start-to-offline AIQ gap",
            100.0 * g
        );
    }
    if args.judge_rate.is_some() {
        println!(
            "judge spend: {:.2}% of the traffic's model spend",
            100.0 * report.judge_spend_share
        );
    }
    if let Some(hidden) = &args.hide {
        // Choices on the evaluation split in the run's mode, without exploration.
        let share = |shares: &std::collections::BTreeMap<String, f64>| {
            format!("{:.1}%", 100.0 * shares.get(hidden).copied().unwrap_or(0.0))
        };
        let per_round: Vec<String> = report
            .rounds
            .iter()
            .filter_map(|r| r.eval_shares.as_ref().map(share))
            .collect();
        println!(
            "{hidden}'s share of the serving policy's choices (evaluation split) by round: {}; \
             reference policy: {}",
            per_round.join(" → "),
            report.reference_shares.as_ref().map_or("-".into(), share)
        );
    }
    if let Some(d) = &report.drift {
        println!(
            "drift: {} had {:.1}% of traffic before; {} (trailing {} requests); {:.1}% at the end",
            d.model,
            d.share_before * 100.0,
            d.requests_to_halve
                .map_or("its share never halved".into(), |n| format!(
                    "its share halved {n} requests after the drift"
                )),
            d.window,
            d.share_at_end * 100.0
        );
    }
    println!("log and policies in {}", workdir.display());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = args.plot {
        write_svg(&path, "triage simulate", &report)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
