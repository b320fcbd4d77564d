//! The simulation loop: route, look up the outcome, send feedback, retrain, repeat.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use triage_core::{Mode, Settings};
use triage_policy::Policy;
use triage_policy::Rule;
use triage_proto::v1;
use triage_proto::v1::router_client::RouterClient;
use triage_server::RoutingEngine;
use triage_train::table::Split;
use triage_train::{Prepared, TrainOptions, policy_aiq, prepare, prior_policy, replay_aiq, train};

use crate::SimError;

/// The policy the server starts with.
#[derive(Clone, Debug)]
pub enum Start {
    /// Knows nothing: every model the same quality (cold start).
    Prior,
    /// An existing policy file.
    Policy(PathBuf),
    /// Trained offline on the table's train split, restricted to these models.
    Train(Vec<String>),
}

/// Degraded outcomes for one model from some request on.
#[derive(Clone, Debug)]
pub struct Drift {
    /// The model degraded (`None`: the model with the most traffic before the drift).
    pub model: Option<String>,
    /// Share of its answers whose quality is set to 0.
    pub share: f64,
    /// Request index from which the drift applies.
    pub after: usize,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Outcome table replayed as traffic.
    pub data: PathBuf,
    /// Its split replayed (in a shuffled order).
    pub traffic_split: Split,
    /// Split on which the serving policy's AIQ is measured after each round.
    pub eval_split: Option<Split>,
    /// At most this many requests.
    pub requests: Option<usize>,
    /// Retrain every this many requests.
    pub retrain_every: usize,
    /// Starting policy.
    pub start: Start,
    /// Mix the table itself, restricted to these models, into every retrain (None: log only).
    pub seed_models: Option<Vec<String>>,
    /// Degraded outcomes, if any.
    pub drift: Option<Drift>,
    /// Trade-off of the simulated traffic.
    pub mode: Mode,
    /// Server settings (catalog, exploration, encoder). Policy and log paths are set here.
    pub settings: Settings,
    /// Base for relative paths in `settings`.
    pub base: PathBuf,
    /// Fresh directory for the log and the policy.
    pub workdir: PathBuf,
    /// Embedding cache.
    pub cache_dir: PathBuf,
    /// Shuffle seed.
    pub seed: u64,
    /// A policy to compare with on the evaluation split (e.g. the offline-trained one).
    pub reference: Option<PathBuf>,
}

/// One round of traffic and the retrain after it.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    /// Requests so far.
    pub requests: usize,
    /// Mean realised quality this round.
    pub mean_quality: f64,
    /// Mean realised cost this round, USD.
    pub mean_cost: f64,
    /// Share of this round's requests per model.
    pub shares: BTreeMap<String, f64>,
    /// Requests the bandit explored this round.
    pub explored: usize,
    /// Policy serving during the round.
    pub policy_version: String,
    /// Whether the retrain after the round was promoted, with the gate's reason.
    pub retrain: String,
    /// AIQ on the evaluation split of the policy serving after the retrain.
    pub eval_aiq: Option<f64>,
    /// AIQ on the evaluation split of the retrained candidate, promoted or not: whether the
    /// gate's call was right (the gate itself never sees the evaluation split).
    pub candidate_aiq: Option<f64>,
    /// Share per model of the serving policy's choices on the evaluation split in the run's
    /// mode, without exploration: what `reference_shares` is compared with.
    pub eval_shares: Option<BTreeMap<String, f64>>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// AIQ of the starting policy on the evaluation split.
    pub start_aiq: Option<f64>,
    /// AIQ of the reference policy on the evaluation split.
    pub reference_aiq: Option<f64>,
    /// Share per model of the reference policy's choices on the evaluation split in the run's
    /// mode (a new model's share converges to this when it is learned).
    pub reference_shares: Option<BTreeMap<String, f64>>,
    /// The rounds.
    pub rounds: Vec<Round>,
    /// The drifted model, its share before the drift, and the requests after the drift until
    /// its share over the trailing window fell to half of that (None: it never did).
    pub drift: Option<DriftReport>,
}

/// How fast traffic left a degraded model.
#[derive(Clone, Debug, Serialize)]
pub struct DriftReport {
    /// The degraded model.
    pub model: String,
    /// Its traffic share over the window before the drift.
    pub share_before: f64,
    /// Its share over the last window of the run.
    pub share_at_end: f64,
    /// Requests after the drift until its trailing-window share was at most half of before.
    pub requests_to_halve: Option<usize>,
    /// Trailing window, requests.
    pub window: usize,
}

/// One simulated request's result.
struct Served {
    model: String,
    quality: f64,
    cost: f64,
    explored: bool,
}

fn shuffled(mut prompts: Vec<usize>, seed: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.shuffle(&mut prompts);
    prompts
}

/// Deterministic per-prompt draw in [0, 1), so a drift degrades the same answers every run.
fn unit_hash(text: &str) -> f64 {
    let h = Sha256::digest(text.as_bytes());
    f64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]])) / f64::from(u32::MAX) / 1.000_001
}

fn train_options(
    o: &SimOptions,
    data: Option<PathBuf>,
    models: Option<Vec<String>>,
) -> TrainOptions {
    TrainOptions {
        data,
        from_log: None,
        force: false,
        strict: false,
        models,
        out: o.workdir.join("policy.json"),
        settings: o.settings.clone(),
        base: o.base.clone(),
        cache_dir: o.cache_dir.clone(),
        progress: false,
        folds: triage_train::tune::DEFAULT_FOLDS,
        responses: None,
        tasks: None,
    }
}

/// Runs the simulation.
pub fn simulate(o: &SimOptions) -> Result<SimReport, SimError> {
    if o.retrain_every == 0 {
        return Err(SimError::Usage("--retrain-every must be at least 1".into()));
    }
    let log_dir = o.workdir.join("log");
    if log_dir.exists() {
        return Err(SimError::Usage(format!(
            "{} already holds a log: give a fresh --workdir",
            o.workdir.display()
        )));
    }
    std::fs::create_dir_all(&o.workdir).map_err(|e| write_err(&o.workdir, e))?;
    let policy_path = o.workdir.join("policy.json");
    let catalog = o
        .settings
        .catalog()
        .map_err(|e| SimError::Usage(e.to_string()))?;
    // Only the catalog's models: they are what the server can route to, and their costs span
    // the range AIQ is measured over (as in `triage eval` of a policy for this catalog).
    let catalog_models: Vec<String> = catalog.models().iter().map(|m| m.name.clone()).collect();
    let table = prepare(&train_options(
        o,
        Some(o.data.clone()),
        Some(catalog_models),
    ))?;

    // The starting policy.
    match &o.start {
        Start::Prior => {
            let models: Vec<String> = catalog.models().iter().map(|m| m.name.clone()).collect();
            triage_train::write_policy_atomically(
                &prior_policy(&models, 0.5, 300.0),
                &policy_path,
            )?;
        }
        Start::Policy(path) => {
            std::fs::copy(path, &policy_path).map_err(|e| write_err(&policy_path, e))?;
        }
        Start::Train(models) => {
            let mut options = train_options(o, Some(o.data.clone()), Some(models.clone()));
            options.force = true;
            train(&options)?;
        }
    }
    let eval_prompts = o.eval_split.map(|s| table.outcomes.indices(s));
    // AIQ over the λ sweep, and each model's share of the choices in the run's mode.
    let evaluate = |path: &Path| -> Result<Option<Evaluated>, SimError> {
        let Some(prompts) = &eval_prompts else {
            return Ok(None);
        };
        let policy = Policy::load(path).map_err(|e| SimError::Usage(e.to_string()))?;
        let replay = table.replay(&policy, prompts.clone())?;
        let chosen = replay.choices(Rule::Mode(o.mode)).into_iter().flatten();
        Ok(Some(Evaluated {
            aiq: replay_aiq(&table, &replay),
            shares: shares_of(chosen, prompts.len()),
        }))
    };
    let start_aiq = evaluate(&policy_path)?.map(|e| e.aiq);
    let reference = match &o.reference {
        Some(path) => evaluate(path)?,
        None => None,
    };

    let mut settings = o.settings.clone();
    settings.policy.path = policy_path.clone();
    settings.policy.reload_interval_ms = 50;
    settings.log.dir = log_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| SimError::Server(e.to_string()))?;
    let engine = RoutingEngine::from_settings(&settings, &o.base)
        .map_err(|e| SimError::Server(e.to_string()))?;
    let server = runtime
        .block_on(triage_server::start(
            engine,
            &settings,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
        .map_err(|e| SimError::Server(e.to_string()))?;
    let mut client = runtime
        .block_on(RouterClient::connect(format!("http://{}", server.addr)))
        .map_err(|e| SimError::Server(e.to_string()))?;

    let mut traffic = shuffled(table.outcomes.indices(o.traffic_split), o.seed);
    if let Some(n) = o.requests {
        traffic.truncate(n);
    }
    let mut served: Vec<Served> = Vec::with_capacity(traffic.len());
    let mut rounds = Vec::new();
    let mut drift_model = o.drift.as_ref().and_then(|d| d.model.clone());
    for (r, chunk) in traffic.chunks(o.retrain_every).enumerate() {
        let mut version = String::new();
        for &p in chunk {
            let i = served.len();
            if let Some(d) = &o.drift
                && i == d.after
                && drift_model.is_none()
            {
                drift_model = most_used(&served);
            }
            let degrade = o.drift.as_ref().filter(|d| i >= d.after).map(|d| d.share);
            let (s, v) = runtime.block_on(serve_one(
                &mut client,
                &table,
                &catalog,
                p,
                i,
                o.mode,
                degrade.zip(drift_model.as_deref()),
            ))?;
            version = v;
            served.push(s);
        }
        let mut candidate_aiq = None;
        let verdict = match train(&TrainOptions {
            from_log: Some(log_dir.clone().into()),
            ..train_options(
                o,
                o.seed_models.as_ref().map(|_| o.data.clone()),
                o.seed_models.clone(),
            )
        }) {
            Ok(report) => {
                if let Some(prompts) = &eval_prompts {
                    let candidate = Policy::new(report.policy.clone())
                        .map_err(|e| SimError::Usage(e.to_string()))?;
                    candidate_aiq = Some(policy_aiq(&table, &candidate, prompts)?);
                }
                if report.verdict.promote {
                    runtime.block_on(wait_for_version(&mut client, &report.policy.version))?;
                }
                format!(
                    "{} ({}): {}",
                    if report.verdict.promote {
                        "promoted"
                    } else {
                        "kept"
                    },
                    report.verdict.evidence,
                    report.verdict.reason
                )
            }
            Err(e) => format!("not retrained: {e}"),
        };
        let serving = evaluate(&policy_path)?;
        let mut round = summarise(
            r + 1,
            served.len(),
            &served[served.len() - chunk.len()..],
            version,
            verdict,
        );
        round.eval_aiq = serving.as_ref().map(|e| e.aiq);
        round.eval_shares = serving.map(|e| e.shares);
        round.candidate_aiq = candidate_aiq;
        tracing::info!(
            round = round.round,
            requests = round.requests,
            quality = format!("{:.4}", round.mean_quality),
            cost = format!("{:.6}", round.mean_cost),
            eval_aiq = ?round.eval_aiq,
            "{}",
            round.retrain
        );
        rounds.push(round);
    }
    runtime
        .block_on(server.shutdown())
        .map_err(|e| SimError::Server(e.to_string()))?;
    let drift =
        o.drift.as_ref().zip(drift_model).map(|(d, model)| {
            drift_report(&served, &model, d.after, o.retrain_every.clamp(50, 200))
        });
    let (reference_aiq, reference_shares) = reference.map(|e| (e.aiq, e.shares)).unzip();
    Ok(SimReport {
        start_aiq,
        reference_aiq,
        reference_shares,
        rounds,
        drift,
    })
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn most_used(served: &[Served]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in served {
        *counts.entry(&s.model).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(m, _)| m.to_owned())
}

/// Routes prompt `p`, looks up the outcome and reports it. Returns the result and the policy
/// version that decided.
async fn serve_one(
    client: &mut RouterClient<Channel>,
    table: &Prepared,
    catalog: &triage_core::Catalog,
    p: usize,
    i: usize,
    mode: Mode,
    degrade: Option<(f64, &str)>,
) -> Result<(Served, String), SimError> {
    let o = &table.outcomes;
    let prompt = &o.prompts[p];
    let allowed: Vec<String> = catalog
        .models()
        .iter()
        .filter(|m| {
            o.model_index(&m.name)
                .is_some_and(|k| o.cells[p][k].is_some())
        })
        .map(|m| m.name.clone())
        .collect();
    let wire_mode = match mode {
        Mode::Quality => v1::Mode::Quality,
        Mode::Balanced => v1::Mode::Balanced,
        Mode::Cost => v1::Mode::Cost,
    };
    let routed = client
        .route(v1::RouteRequest {
            messages: vec![v1::Message {
                role: "user".into(),
                content: prompt.text.clone(),
            }],
            preferences: Some(v1::Preferences {
                mode: wire_mode as i32,
                allowed_models: allowed,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| SimError::Server(format!("route: {e}")))?
        .into_inner();
    let cell = o
        .model_index(&routed.model)
        .and_then(|k| o.cells[p][k])
        .ok_or_else(|| {
            SimError::Server(format!("{} has no outcome for {}", routed.model, prompt.id))
        })?;
    let mut quality = cell.quality;
    if let Some((share, model)) = degrade
        && routed.model == model
        && unit_hash(&prompt.id) < share
    {
        quality = 0.0;
    }
    let tokens = cell.output_tokens.unwrap_or(0.0);
    client
        .feedback(v1::FeedbackRequest {
            request_id: routed.request_id.clone(),
            feedback_id: format!("sim-{i}"),
            model: routed.model.clone(),
            quality: Some(quality),
            input_tokens: routed.input_tokens,
            output_tokens: tokens as u32,
            cost_usd: cell.cost_usd,
            latency_ms: 0,
            error: v1::ErrorKind::ErrorUnspecified as i32,
            retry_after_ms: None,
        })
        .await
        .map_err(|e| SimError::Server(format!("feedback: {e}")))?;
    Ok((
        Served {
            model: routed.model,
            quality,
            cost: cell.cost_usd,
            explored: routed.explored,
        },
        routed.policy_version,
    ))
}

async fn wait_for_version(
    client: &mut RouterClient<Channel>,
    version: &str,
) -> Result<(), SimError> {
    for _ in 0..400 {
        let serving = client
            .list_models(v1::ListModelsRequest {})
            .await
            .map_err(|e| SimError::Server(e.to_string()))?
            .into_inner()
            .policy_version;
        if serving == version {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(SimError::Server(format!(
        "the server did not pick up policy {version} within 20 s"
    )))
}

/// A policy judged on the evaluation split.
struct Evaluated {
    aiq: f64,
    shares: BTreeMap<String, f64>,
}

/// Each model's share of `out_of` decisions, given the models chosen (decisions without a
/// choice count in `out_of` but in no share).
fn shares_of(chosen: impl IntoIterator<Item = String>, out_of: usize) -> BTreeMap<String, f64> {
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    for model in chosen {
        *shares.entry(model).or_default() += 1.0 / out_of.max(1) as f64;
    }
    shares
}

fn summarise(
    round: usize,
    requests: usize,
    chunk: &[Served],
    policy_version: String,
    retrain: String,
) -> Round {
    let n = chunk.len().max(1) as f64;
    let shares = shares_of(chunk.iter().map(|s| s.model.clone()), chunk.len());
    Round {
        round,
        requests,
        mean_quality: chunk.iter().map(|s| s.quality).sum::<f64>() / n,
        mean_cost: chunk.iter().map(|s| s.cost).sum::<f64>() / n,
        shares,
        explored: chunk.iter().filter(|s| s.explored).count(),
        policy_version,
        retrain,
        eval_aiq: None,
        candidate_aiq: None,
        eval_shares: None,
    }
}

fn drift_report(served: &[Served], model: &str, after: usize, window: usize) -> DriftReport {
    let share = |slice: &[Served]| {
        slice.iter().filter(|s| s.model == model).count() as f64 / slice.len().max(1) as f64
    };
    let before = &served[after.saturating_sub(window)..after.min(served.len())];
    let share_before = share(before);
    // The trailing window holds only post-drift requests, and at least 25 of them (noise).
    let requests_to_halve = (after + 1..=served.len())
        .find(|&end| {
            let start = end.saturating_sub(window).max(after);
            end - start >= window.min(25) && share(&served[start..end]) <= share_before / 2.0
        })
        .map(|end| end - after);
    DriftReport {
        model: model.to_owned(),
        share_before,
        share_at_end: share(&served[served.len().saturating_sub(window)..]),
        requests_to_halve,
        window,
    }
}
