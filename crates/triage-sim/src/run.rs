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
use triage_train::{
    DEFAULT_JUDGE_WEIGHT, Prepared, TrainOptions, policy_aiq, prepare, prior_policy, replay_aiq,
    train,
};

use crate::SimError;
use crate::shift;

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

/// A simulated LLM judge: when set, the only quality signal the server gets.
#[derive(Clone, Debug)]
pub struct Judge {
    /// Share of requests judged (the rest are reported with cost and tokens only).
    pub rate: f64,
    /// Probability that a verdict is wrong: quality `q` reported as `1 − q`.
    pub noise: f64,
    /// Catalog model whose prices the judge's calls are costed at (`None`: free).
    pub model: Option<String>,
    /// Share of judged requests that also get a shadow answer: one eligible model the decision
    /// predicted cheaper than the chosen one, picked at random, whose outcome is judged too
    /// (its call and its verdict are the judge's spend).
    pub shadow_rate: f64,
}

/// Tokens of the judge's rubric, added to the prompt and answer it reads: the size of a short
/// grading instruction with a fixed scale.
pub const RUBRIC_TOKENS: u32 = 200;
/// Tokens of the judge's verdict: a short JSON object with a score and a reason.
pub const VERDICT_TOKENS: u32 = 40;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Outcome table replayed as traffic.
    pub data: PathBuf,
    /// Its split replayed (in a shuffled order).
    pub traffic_split: Split,
    /// Split on which the serving policy's AIQ is measured after each round.
    pub eval_split: Option<Split>,
    /// This many requests (the split's prompts in a shuffled order, then, past its size, drawn
    /// with replacement; under a shift, all drawn with replacement).
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
    /// Domain shift: the starting policy (and any seed table) knows only these tasks; traffic is
    /// `requests` draws with replacement from the other tasks' training prompts, and the
    /// evaluation is on their test prompts, beside a policy trained offline on them.
    pub start_tasks: Option<Vec<String>>,
    /// The tasks the traffic shifts to (`None`: every task not in `start_tasks`).
    pub shift_tasks: Option<Vec<String>>,
    /// The simulated judge (`None`: every outcome is reported, as a caller scoring everything).
    pub judge: Option<Judge>,
    /// Route among exactly the table's models at the table's prices instead of the settings'
    /// catalog (for a table of other models).
    pub table_catalog: bool,
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
    /// Requests whose outcome was reported with a quality score this round (all of them
    /// without a judge).
    pub judged: usize,
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
    /// AIQ of the zero router (the best single model at each trade-off) on the evaluation split.
    pub zero_router_aiq: Option<f64>,
    /// AIQ of a policy trained offline on the shifted tasks with every label (domain shift).
    pub offline_aiq: Option<f64>,
    /// AIQ of the policy serving at the end.
    pub final_aiq: Option<f64>,
    /// Share of the gap between the start and the policy trained with every label (the shift's
    /// offline policy, else the reference) closed by the end; `None` without such a policy or a
    /// gap.
    pub gap_closed: Option<f64>,
    /// The judge's spend as a share of the traffic's model spend.
    pub judge_spend_share: f64,
    /// AIQ on the evaluation split against requests served, from the start.
    pub curve: Vec<CurvePoint>,
    /// The drifted model, its share before the drift, and the requests after the drift until
    /// its share over the trailing window fell to half of that (None: it never did).
    pub drift: Option<DriftReport>,
}

/// One point of the learning curve.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CurvePoint {
    /// Requests served so far.
    pub requests: usize,
    /// AIQ of the serving policy on the evaluation split.
    pub aiq: f64,
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
    /// Whether the server was told a quality score for it.
    judged: bool,
    /// What judging this request cost (0 when it was not judged).
    judge_usd: f64,
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
        judge_weight: DEFAULT_JUDGE_WEIGHT,
    }
}

/// `o` with the catalog replaced by the table's models at the table's prices, so a table of any
/// models can be simulated (the server routes only among catalog models).
fn with_table_catalog(o: &SimOptions) -> Result<SimOptions, SimError> {
    let catalog = o
        .settings
        .catalog()
        .map_err(|e| SimError::Usage(e.to_string()))?;
    let table = triage_train::table::Outcomes::load(&o.data, &catalog, None, false)?;
    let mut settings = o.settings.clone();
    settings.models = table
        .models
        .iter()
        .filter_map(|m| triage_train::simulate::replay_spec(&table, m))
        .collect();
    tracing::info!(
        models = settings.models.len(),
        "the catalog is the table's models at its prices"
    );
    // Whatever the start and the seed were to be trained on, it is now the table's models.
    let names: Vec<String> = settings.models.iter().map(|m| m.name.clone()).collect();
    let start = match &o.start {
        Start::Train(_) => Start::Train(names.clone()),
        other => other.clone(),
    };
    Ok(SimOptions {
        settings,
        table_catalog: false,
        start,
        seed_models: o.seed_models.as_ref().map(|_| names),
        ..o.clone()
    })
}

/// Runs the simulation.
pub fn simulate(o: &SimOptions) -> Result<SimReport, SimError> {
    if o.table_catalog {
        return simulate(&with_table_catalog(o)?);
    }
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

    let shifted = o
        .start_tasks
        .as_ref()
        .map(|start| shift::shifted_tasks(&table, start, o.shift_tasks.as_deref()))
        .transpose()?;
    write_start(o, &catalog, &policy_path)?;
    let in_shift = |p: usize| shift::in_tasks(&table, shifted.as_deref(), p);
    let eval_prompts: Option<Vec<usize>> = o.eval_split.map(|s| {
        let mut prompts = table.outcomes.indices(s);
        prompts.retain(|&p| in_shift(p));
        prompts
    });
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
    let zero_router_aiq = eval_prompts
        .as_ref()
        .map(|prompts| triage_train::zero_router_aiq(&table, prompts));
    // Under a shift, the policy trained offline on the shifted tasks with every label.
    let offline = match &shifted {
        Some(tasks) => {
            let mut options = train_options(o, Some(o.data.clone()), None);
            options.out = o.workdir.join("offline.json");
            options.force = true;
            options.tasks = Some(tasks.clone());
            train(&options)?;
            evaluate(&options.out)?
        }
        None => None,
    };
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

    let traffic = shift::traffic(o, &table, shifted.as_deref());
    if traffic.is_empty() {
        return Err(SimError::Usage("no traffic to replay".into()));
    }
    let judge = o
        .judge
        .as_ref()
        .map(|j| judge_prices(j, &catalog))
        .transpose()?;
    let mut verdicts = fastrand::Rng::with_seed(o.seed ^ 0x006a_7564_6765);
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
            let report = Reporting {
                degrade: degrade.zip(drift_model.as_deref()),
                judge: judge.as_ref().map(|j| {
                    let draws = [(); 5].map(|()| verdicts.f64());
                    (j, draws)
                }),
            };
            let (s, v) = runtime.block_on(serve_one(
                &mut client,
                &table,
                &catalog,
                (p, i),
                o.mode,
                report,
            ))?;
            version = v;
            served.push(s);
        }
        let (verdict, candidate_aiq) =
            retrain(o, &log_dir, &table, eval_prompts.as_deref(), |v| {
                runtime.block_on(wait_for_version(&mut client, v))
            })?;
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
    Ok(report(Measured {
        start_aiq,
        zero_router_aiq,
        offline_aiq: offline.map(|e| e.aiq),
        reference,
        rounds,
        drift,
        served: &served,
    }))
}

/// Writes the starting policy to `policy_path`.
fn write_start(
    o: &SimOptions,
    catalog: &triage_core::Catalog,
    policy_path: &Path,
) -> Result<(), SimError> {
    match &o.start {
        Start::Prior => {
            let models: Vec<String> = catalog.models().iter().map(|m| m.name.clone()).collect();
            triage_train::write_policy_atomically(&prior_policy(&models, 0.5, 300.0), policy_path)?;
        }
        Start::Policy(path) => {
            std::fs::copy(path, policy_path).map_err(|e| write_err(policy_path, e))?;
        }
        Start::Train(models) => {
            let mut options = train_options(o, Some(o.data.clone()), Some(models.clone()));
            options.force = true;
            options.tasks = o.start_tasks.clone();
            train(&options)?;
        }
    }
    Ok(())
}

/// Retrains from the log (and the seed table, restricted to the start's tasks under a shift)
/// through the gate; waits for a promoted policy to serve. Returns the verdict in words and the
/// candidate's AIQ on the evaluation prompts, promoted or not.
fn retrain(
    o: &SimOptions,
    log_dir: &Path,
    table: &Prepared,
    eval_prompts: Option<&[usize]>,
    mut serving: impl FnMut(&str) -> Result<(), SimError>,
) -> Result<(String, Option<f64>), SimError> {
    let report = match train(&TrainOptions {
        from_log: Some(log_dir.to_path_buf().into()),
        tasks: o.start_tasks.clone(),
        judge_weight: DEFAULT_JUDGE_WEIGHT,
        ..train_options(
            o,
            o.seed_models.as_ref().map(|_| o.data.clone()),
            o.seed_models.clone(),
        )
    }) {
        Ok(report) => report,
        Err(e) => return Ok((format!("not retrained: {e}"), None)),
    };
    let candidate_aiq = match eval_prompts {
        Some(prompts) => {
            let candidate =
                Policy::new(report.policy.clone()).map_err(|e| SimError::Usage(e.to_string()))?;
            Some(policy_aiq(table, &candidate, prompts)?)
        }
        None => None,
    };
    if report.verdict.promote {
        serving(&report.policy.version)?;
    }
    let said = format!(
        "{} ({}): {}",
        if report.verdict.promote {
            "promoted"
        } else {
            "kept"
        },
        report.verdict.evidence,
        report.verdict.reason
    );
    Ok((said, candidate_aiq))
}

/// What a run measured, before it is summarised.
struct Measured<'a> {
    start_aiq: Option<f64>,
    zero_router_aiq: Option<f64>,
    offline_aiq: Option<f64>,
    reference: Option<Evaluated>,
    rounds: Vec<Round>,
    drift: Option<DriftReport>,
    served: &'a [Served],
}

/// The run's report: the learning curve, the gap closed, the judge's share of spend.
fn report(m: Measured<'_>) -> SimReport {
    let (reference_aiq, reference_shares) = m.reference.map(|e| (e.aiq, e.shares)).unzip();
    let curve: Vec<CurvePoint> = m
        .start_aiq
        .map(|aiq| CurvePoint { requests: 0, aiq })
        .into_iter()
        .chain(m.rounds.iter().filter_map(|r| {
            r.eval_aiq.map(|aiq| CurvePoint {
                requests: r.requests,
                aiq,
            })
        }))
        .collect();
    let final_aiq = curve.last().map(|c| c.aiq);
    // The policy trained with every label: the shift's offline policy, else the reference.
    let gap_closed = match (m.start_aiq, m.offline_aiq.or(reference_aiq), final_aiq) {
        (Some(s), Some(off), Some(f)) if off > s => Some((f - s) / (off - s)),
        _ => None,
    };
    let traffic_usd: f64 = m.served.iter().map(|s| s.cost).sum();
    let judge_usd: f64 = m.served.iter().map(|s| s.judge_usd).sum();
    SimReport {
        start_aiq: m.start_aiq,
        reference_aiq,
        reference_shares,
        rounds: m.rounds,
        drift: m.drift,
        zero_router_aiq: m.zero_router_aiq,
        offline_aiq: m.offline_aiq,
        final_aiq,
        gap_closed,
        judge_spend_share: if traffic_usd > 0.0 {
            judge_usd / traffic_usd
        } else {
            0.0
        },
        curve,
    }
}

/// The judge and its prices per 1M tokens (input, output).
fn judge_prices<'a>(
    judge: &'a Judge,
    catalog: &triage_core::Catalog,
) -> Result<(&'a Judge, f64, f64), SimError> {
    if !(0.0..=1.0).contains(&judge.rate)
        || !(0.0..=0.5).contains(&judge.noise)
        || !(0.0..=1.0).contains(&judge.shadow_rate)
    {
        return Err(SimError::Usage(
            "--judge-rate and --shadow-rate must be within 0..=1 and --judge-noise within 0..=0.5"
                .into(),
        ));
    }
    let Some(name) = &judge.model else {
        return Ok((judge, 0.0, 0.0));
    };
    let spec = catalog
        .models()
        .iter()
        .find(|m| &m.name == name)
        .ok_or_else(|| SimError::Usage(format!("--judge-model {name}: not a catalog model")))?;
    Ok((judge, spec.input_usd_per_1m, spec.output_usd_per_1m))
}

/// One judge call's cost: the prompt, the answer and the rubric in, a verdict out.
fn judge_call_usd(priced: &PricedJudge<'_>, input_tokens: u32, answer_tokens: f64) -> f64 {
    let (_, input_price, output_price) = priced;
    let read = f64::from(input_tokens + RUBRIC_TOKENS) + answer_tokens;
    (read * input_price + f64::from(VERDICT_TOKENS) * output_price) / 1e6
}

/// `quality` as the judge reports it: the opposite when its verdict is wrong.
fn noisy(quality: f64, wrong: bool) -> f64 {
    if wrong { 1.0 - quality } else { quality }
}

/// The shadow the gateway's judge would pick: an eligible model other than the chosen one,
/// predicted cheaper, uniformly by `draw`.
fn pick_shadow(routed: &v1::RouteResponse, draw: f64) -> Option<&str> {
    let ceiling = routed
        .candidates
        .iter()
        .find(|c| c.model == routed.model)?
        .predicted_cost_usd;
    let cheaper: Vec<&str> = routed
        .candidates
        .iter()
        .filter(|c| c.eligible && c.model != routed.model && c.predicted_cost_usd < ceiling)
        .map(|c| c.model.as_str())
        .collect();
    let k = ((draw * cheaper.len() as f64) as usize).min(cheaper.len().checked_sub(1)?);
    cheaper.get(k).copied()
}

/// How one request's outcome is reported: a drift's degradation, and the judge with its
/// uniform draws (judged?, wrong?, shadowed?, which shadow?, shadow's verdict wrong?).
struct Reporting<'a> {
    degrade: Option<(f64, &'a str)>,
    judge: Option<(&'a PricedJudge<'a>, [f64; 5])>,
}

/// The judge with its prices per 1M tokens (input, output).
type PricedJudge<'a> = (&'a Judge, f64, f64);

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
    (p, i): (usize, usize),
    mode: Mode,
    report: Reporting<'_>,
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
    if let Some((share, model)) = report.degrade
        && routed.model == model
        && unit_hash(&prompt.id) < share
    {
        quality = 0.0;
    }
    let tokens = cell.output_tokens.unwrap_or(0.0);
    // With a judge, only judged requests carry a score, and a wrong verdict is the opposite.
    let (reported, mut judge_usd) = match report.judge {
        None => (Some(quality), 0.0),
        Some(((judge, _, _), draws)) if draws[0] >= judge.rate => (None, 0.0),
        Some((priced, draws)) => {
            let usd = judge_call_usd(priced, routed.input_tokens, tokens);
            (Some(noisy(quality, draws[1] < priced.0.noise)), usd)
        }
    };
    let send = |model: &str, quality: Option<f64>, tokens: f64, cost: f64, id: String| {
        v1::FeedbackRequest {
            request_id: routed.request_id.clone(),
            feedback_id: id,
            model: model.to_owned(),
            quality,
            input_tokens: routed.input_tokens,
            output_tokens: tokens as u32,
            cost_usd: cost,
            latency_ms: 0,
            error: v1::ErrorKind::ErrorUnspecified as i32,
            retry_after_ms: None,
        }
    };
    let mut reports = vec![send(
        &routed.model,
        reported,
        tokens,
        cell.cost_usd,
        format!("sim-{i}"),
    )];
    if let (Some((priced, draws)), Some(_)) = (report.judge, reported)
        && draws[2] < priced.0.shadow_rate
        && let Some(shadow) = pick_shadow(&routed, draws[3])
        && let Some(c) = o.model_index(shadow).and_then(|k| o.cells[p][k])
    {
        // The shadow's call and its verdict are the judge's spend, never the traffic's.
        let shadow_tokens = c.output_tokens.unwrap_or(0.0);
        judge_usd += c.cost_usd + judge_call_usd(priced, routed.input_tokens, shadow_tokens);
        let verdict = noisy(c.quality, draws[4] < priced.0.noise);
        reports.push(send(
            shadow,
            Some(verdict),
            shadow_tokens,
            c.cost_usd,
            format!("sim-{i}-shadow"),
        ));
    }
    for r in reports {
        client
            .feedback(r)
            .await
            .map_err(|e| SimError::Server(format!("feedback: {e}")))?;
    }
    Ok((
        Served {
            model: routed.model,
            quality,
            cost: cell.cost_usd,
            explored: routed.explored,
            judged: reported.is_some(),
            judge_usd,
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
        judged: chunk.iter().filter(|s| s.judged).count(),
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
