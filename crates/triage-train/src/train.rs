//! The `triage train` pipeline.

use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray16::Array2;
use sha2::{Digest, Sha256};
use triage_core::features::FEATURE_SCHEMA;
use triage_core::{Mode, Settings};
use triage_encoder::{Embedder, OnnxEmbedder, OnnxOptions, init_onnxruntime};
use triage_policy::{
    DecisionParams, LengthHead, LinearHead, ModelHead, NeighbourSet, POLICY_FORMAT,
    POLICY_FORMAT_VERSION, Policy, PolicyFile,
};

use crate::TrainError;
use crate::embed::{EmbeddingCache, PromptFeatures, prompt_features};
use crate::eval::baselines::{cost_range, lambda_grid, neighbourhood_sizes, single_models};
use crate::eval::curve::{aiq, hull};
use crate::fit::{design, length_head, quality_head, standardizer};
use crate::logdata::{LogCounts, LoggedData, merge};
use crate::pooled::{
    BANDIT_MIN_KAPPA, ModelRows, Shrinkage, choose_shrinkage, pooled_heads, shrunk,
};
use crate::promote::{GateVerdict, gate, pulled_toward_prior};
use crate::shared::choose_shared;
use crate::simulate::{Knob, Replay};
use crate::table::{Outcome, Outcomes, Split};

/// What to train on and where to write.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Outcome table (a seed dataset; optional when training from the log).
    pub data: Option<PathBuf>,
    /// The server's decision and feedback log directory, to learn from usage.
    pub from_log: Option<PathBuf>,
    /// Replace the policy at `out` even if the gate says the new one is worse.
    pub force: bool,
    /// Refuse an outcome table with holes (an empty or NaN quality or cost) instead of leaving
    /// those rows out.
    pub strict: bool,
    /// Restrict to these models.
    pub models: Option<Vec<String>>,
    /// Policy destination.
    pub out: PathBuf,
    /// Encoder and catalog settings.
    pub settings: Settings,
    /// Base for relative paths in `settings`.
    pub base: PathBuf,
    /// Embedding cache directory.
    pub cache_dir: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
}

/// What training produced.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The policy trained (written only if `verdict.promote`).
    pub policy: PolicyFile,
    /// Prompts per split (train, dev, test).
    pub prompts: (usize, usize, usize),
    /// Whether it replaced the policy at the destination, and why.
    pub verdict: GateVerdict,
    /// What the log held, when training from it.
    pub log_counts: Option<LogCounts>,
}

/// Loaded table plus its features: the shared start of `train` and `eval`.
pub struct Prepared {
    /// The table.
    pub outcomes: Outcomes,
    /// Features and token estimates per prompt of the table.
    pub features: PromptFeatures,
}

impl Prepared {
    /// `policy`'s predictions on `prompts` of this table, ready to replay under any knob.
    pub fn replay(&self, policy: &Policy, prompts: Vec<usize>) -> Result<Replay<'_>, TrainError> {
        let f = &self.features;
        Replay::new(
            &self.outcomes,
            policy,
            &f.features,
            &f.input_tokens,
            prompts,
        )
    }
}

/// Loads the table and embeds its prompts.
pub fn prepare(options: &TrainOptions) -> Result<Prepared, TrainError> {
    let catalog = options
        .settings
        .catalog()
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let data = options
        .data
        .as_deref()
        .ok_or_else(|| TrainError::Usage("an outcome table (--data FILE) is needed".into()))?;
    let outcomes = Outcomes::load(data, &catalog, options.models.as_deref(), options.strict)?;
    embed_table(options, outcomes)
}

/// Embeds every distinct prompt of `outcomes` (through the cache) into the features serving uses.
fn embed_table(options: &TrainOptions, outcomes: Outcomes) -> Result<Prepared, TrainError> {
    let enc = &options.settings.encoder;
    let library = enc.onnxruntime.as_ref().map(|p| options.base.join(p));
    init_onnxruntime(library.as_deref()).map_err(|e| TrainError::Encoder(e.to_string()))?;
    let mut onnx = OnnxOptions::from_settings(enc, &options.base);
    onnx.intra_op_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut embedder = OnnxEmbedder::load(&onnx).map_err(|e| TrainError::Encoder(e.to_string()))?;
    let mut cache = EmbeddingCache::open(
        &options.cache_dir,
        &onnx.model,
        onnx.max_tokens,
        embedder.dim(),
    )?;
    let texts: Vec<&str> = outcomes.prompts.iter().map(|p| p.text.as_str()).collect();
    let features = prompt_features(&texts, &mut embedder, &mut cache, options.progress)?;
    Ok(Prepared { outcomes, features })
}

/// Refuses a `--models` entry the data lacks, rather than training without it.
fn check_requested_models(outcomes: &Outcomes, options: &TrainOptions) -> Result<(), TrainError> {
    let Some(wanted) = &options.models else {
        return Ok(());
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|m| outcomes.model_index(m).is_none())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(TrainError::Usage(format!(
        "--models: {} not in the data, which has: {}",
        missing.join(", "),
        outcomes.models.join(", ")
    )))
}

fn checked(prepared: Prepared, options: &TrainOptions) -> Result<Prepared, TrainError> {
    check_requested_models(&prepared.outcomes, options)?;
    Ok(prepared)
}

/// Trains a policy from a table, the log, or both, and writes it to `options.out` if the
/// promotion gate (or `force`) allows.
pub fn train(options: &TrainOptions) -> Result<TrainReport, TrainError> {
    let catalog = options
        .settings
        .catalog()
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let logged = options
        .from_log
        .as_deref()
        .map(LoggedData::read)
        .transpose()?;
    let prepared = match (&options.data, &logged) {
        (Some(data), None) => {
            let outcomes =
                Outcomes::load(data, &catalog, options.models.as_deref(), options.strict)?;
            // Before embedding, which can take minutes on a new table.
            check_requested_models(&outcomes, options)?;
            embed_table(options, outcomes)?
        }
        // With the log, the models come from both sources, so they are checked once merged.
        (None, Some(log)) => checked(log.prepared(&catalog)?, options)?,
        (Some(_), Some(log)) => {
            checked(merge(prepare(options)?, log.prepared(&catalog)?)?, options)?
        }
        (None, None) => {
            return Err(TrainError::Usage(
                "nothing to train on: give --data FILE, --from-log DIR, or both".into(),
            ));
        }
    };
    // The gate judges the train-only form on held-out data; the train + dev refit of the same
    // recipe is what gets written.
    let Fitted {
        mut validated,
        deployed: mut policy,
    } = fit_policy(&prepared)?;
    let current = options
        .out
        .is_file()
        .then(|| Policy::load(&options.out))
        .transpose()
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the policy at the destination does not load; replacing it");
            None
        });
    if let Some(current) = &current {
        carry_over_heads(&mut validated, current.file());
        let carried = carry_over_heads(&mut policy, current.file());
        if !carried.is_empty() {
            tracing::info!(models = ?carried, "no new outcomes: kept the current policy's heads");
        }
    }
    let verdict = if options.force {
        GateVerdict {
            promote: true,
            evidence: "forced".into(),
            reason: "--force: the gate was skipped".into(),
            current: None,
            candidate: None,
            pulled: Vec::new(),
        }
    } else {
        // A current policy fitted on this very table was refitted on its dev split, so it is
        // judged against the candidate's refit, which has seen dev too: the dev-blind form
        // would lose to its own twin.
        let same_table = current.as_ref().is_some_and(|c| {
            c.file()
                .training
                .get("data_sha256")
                .and_then(|v| v.as_str())
                == Some(prepared.outcomes.data_sha256.as_str())
        });
        let judged = if same_table { &policy } else { &validated };
        let mut verdict = gate(
            current.as_ref(),
            judged,
            &prepared,
            logged.as_ref(),
            &catalog,
        )?;
        if same_table {
            verdict.reason.push_str(
                " (both refitted on this table's dev split, so their refits are compared)",
            );
        }
        verdict
    };
    for (model, kept) in &verdict.pulled {
        if let Some(pulled) = pulled_toward_prior(&policy, model, *kept, &catalog) {
            policy = pulled;
        }
    }
    if verdict.promote {
        write_policy_atomically(&policy, &options.out)?;
    } else {
        // Kept aside so an operator can inspect it or promote it by hand.
        write_policy_atomically(&policy, &candidate_path(&options.out))?;
    }
    let o = &prepared.outcomes;
    Ok(TrainReport {
        policy,
        prompts: (
            o.indices(Split::Train).len(),
            o.indices(Split::Dev).len(),
            o.indices(Split::Test).len(),
        ),
        verdict,
        log_counts: logged.map(|l| l.counts),
    })
}

/// Where a candidate the gate refused is written: `policy.json` → `policy.candidate.json`.
pub fn candidate_path(out: &Path) -> PathBuf {
    out.with_extension("candidate.json")
}

/// Dev prompts with outcomes of at least two models needed before k, blend weights and margins
/// are chosen by dev replay (with one outcome per prompt every policy replays the same).
const MIN_INFORMATIVE_DEV: usize = 30;

/// A fitted policy in its two forms.
#[derive(Clone, Debug)]
pub struct Fitted {
    /// Heads and neighbours fitted on train alone, every hyper-parameter chosen on dev: the
    /// form the gate can still judge on held-out dev data.
    pub validated: PolicyFile,
    /// The same recipe (L2 strengths, Platt maps, neighbourhood size and weights, margins)
    /// refitted on train + dev, so dev's prompts inform the deployed policy too. Identical to
    /// `validated` when there is no dev split.
    pub deployed: PolicyFile,
}

/// Fits heads on train, chooses every hyper-parameter on dev, then refits on train + dev.
pub fn fit_policy(prepared: &Prepared) -> Result<Fitted, TrainError> {
    let o = &prepared.outcomes;
    let feats = &prepared.features.features;
    let train_idx = o.indices(Split::Train);
    let dev_idx = o.indices(Split::Dev);
    if train_idx.is_empty() {
        return Err(TrainError::Data("the table has no train prompts".into()));
    }
    let embedding_dim = feats[0].len() - triage_core::features::HAND_FEATURE_NAMES.len();
    let train_rows: Vec<&[f32]> = train_idx.iter().map(|&i| feats[i].as_slice()).collect();
    let standardize = standardizer(&train_rows);

    let mut per_model = Vec::new();
    let mut metrics = serde_json::Map::new();
    for (m, name) in o.models.iter().enumerate() {
        let pick = |idx: &[usize]| -> (Vec<usize>, Vec<bool>, Vec<Option<f64>>, Vec<f64>) {
            let mut rows = Vec::new();
            let mut good = Vec::new();
            let mut tokens = Vec::new();
            let mut weights = Vec::new();
            for &p in idx {
                if let Some(c) = o.cells[p][m] {
                    rows.push(p);
                    good.push(triage_core::outcome::is_good_answer(c.quality));
                    tokens.push(c.output_tokens);
                    weights.push(c.weight);
                }
            }
            (rows, good, tokens, weights)
        };
        let (tr_rows, tr_y, tr_tokens, tr_w) = pick(&train_idx);
        if tr_rows.is_empty() {
            tracing::warn!(model = %name, "no train outcomes: model left out of the policy");
            continue;
        }
        let bandit = tr_rows
            .iter()
            .all(|&p| o.cells[p][m].is_some_and(|c| c.logged));
        let (dv_rows, dv_y, dv_tokens, dv_w) = pick(&dev_idx);
        let as_rows =
            |rows: &[usize]| -> Vec<&[f32]> { rows.iter().map(|&p| feats[p].as_slice()).collect() };
        let tr_x = design(&as_rows(&tr_rows), &standardize);
        let dv_x = design(&as_rows(&dv_rows), &standardize);
        let started = std::time::Instant::now();
        let q = quality_head(&tr_x, &tr_y, &tr_w, &dv_x, &dv_y, &dv_w)?;
        let length = length_head(&tr_x, &tr_tokens)?;
        tracing::info!(
            model = %name,
            alpha = ?q.alpha,
            dev_log_loss = format!("{:.4}", q.dev_log_loss),
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "fitted"
        );
        metrics.insert(
            name.clone(),
            serde_json::json!({"alpha": q.alpha, "dev_log_loss": q.dev_log_loss, "train_rows": tr_rows.len()}),
        );
        // Train + dev, stacked from the rows already standardised.
        let (all, refit) = if dv_rows.is_empty() {
            (None, None)
        } else {
            let all_x = ndarray16::concatenate(ndarray16::Axis(0), &[tr_x.view(), dv_x.view()])
                .map_err(|e| TrainError::Fit(format!("stacking train and dev rows: {e}")))?;
            let all_y = [tr_y.as_slice(), &dv_y].concat();
            let all_w = [tr_w.as_slice(), &dv_w].concat();
            let refit = (
                q.refit(&all_x, &all_y, &all_w)?,
                length_head(&all_x, &[tr_tokens, dv_tokens].concat())?,
            );
            (Some((all_x, all_y, all_w)), Some(refit))
        };
        per_model.push(ModelData {
            name: name.clone(),
            bandit,
            train: (tr_x, tr_y, tr_w),
            dev: (dv_x, dv_y, dv_w),
            all,
            own: q.head,
            length,
            refit,
        });
    }
    let bandit_only: Vec<&str> = per_model
        .iter()
        .filter(|d| d.bandit)
        .map(|d| d.name.as_str())
        .collect();
    if !bandit_only.is_empty() {
        tracing::info!(
            models = ?bandit_only,
            min_kappa = BANDIT_MIN_KAPPA,
            "known only from the log: shrunk toward the pooled fit at least this much"
        );
    }
    let bandit_flags: Vec<bool> = per_model.iter().map(|d| d.bandit).collect();
    let bandit_only = serde_json::json!(bandit_only);
    let ShrunkHeads {
        choice: shrinkage,
        heads,
        refitted,
    } = shrink_toward_pooled(per_model)?;

    let mut file = PolicyFile {
        format: POLICY_FORMAT.into(),
        format_version: POLICY_FORMAT_VERSION,
        version: String::new(),
        feature_schema: FEATURE_SCHEMA.into(),
        embedding_dim,
        standardize,
        decision: DecisionParams {
            balanced_margin: 0.02,
            cost_margin: 0.1,
        },
        models: heads,
        neighbours: None,
        shared: None,
        training: serde_json::Value::Null,
    };
    // Replays only tell policies apart on prompts with several outcomes: logged prompts (one
    // outcome each) would only add noise to the selection.
    let informative: Vec<usize> = dev_idx
        .iter()
        .copied()
        .filter(|&p| o.cells[p].iter().flatten().count() >= 2)
        .collect();
    let mut shared_refit = None;
    let mut shared_report = serde_json::Value::Null;
    let blend_report = if informative.len() >= MIN_INFORMATIVE_DEV {
        let shared = choose_shared(
            prepared,
            &file,
            &train_idx,
            &dev_idx,
            &informative,
            &bandit_flags,
        )?;
        file.shared = shared.classifier;
        shared_refit = shared.refit;
        shared_report = shared.report;
        let (neighbours, blend_report) =
            choose_neighbours(prepared, &file, &train_idx, &informative)?;
        file.neighbours = neighbours;
        file.decision = choose_margins(prepared, &file, &informative)?;
        blend_report
    } else {
        tracing::info!(
            informative = informative.len(),
            "too few dev prompts with several outcomes to choose neighbours and margins by \
             replay; using the logistic heads with default margins"
        );
        serde_json::Value::Null
    };
    file.version = format!("{}-{}", data_label(o), &content_hash(&file)[..10]);
    file.training = serde_json::json!({
        "data_sha256": o.data_sha256,
        "rows": o.rows,
        "prompts": {"train": train_idx.len(), "dev": dev_idx.len(), "test": o.indices(Split::Test).len()},
        "models": o.models,
        "margins_rule": "balanced: widest margin keeping dev quality within 0.01 of QUALITY mode; \
                         cost: widest within 0.05",
        "per_model": metrics,
        "neighbour_blend_dev_aiq": blend_report,
        "shared_classifier": shared_report,
        "refit": "none: heads and neighbours fitted on train, every choice made on dev",
        "pooled_shrinkage": {
            "alpha": shrinkage.alpha,
            "kappa": if shrinkage.kappa.is_finite() { Some(shrinkage.kappa) } else { None },
            "kappa_infinite": shrinkage.kappa.is_infinite(),
            "own_dev_log_loss": shrinkage.own_dev_log_loss,
            "dev_log_loss": shrinkage.dev_log_loss,
            "bandit_only_models": bandit_only,
            "bandit_min_kappa": BANDIT_MIN_KAPPA,
        },
    });
    let train_and_dev = [train_idx.as_slice(), &dev_idx].concat();
    let deployed = deployed_form(prepared, &file, refitted, shared_refit, &train_and_dev);
    Ok(Fitted {
        validated: file,
        deployed,
    })
}

/// Standardised rows, good-answer labels and fitting weights of one model.
type LabelledRows = (Array2<f64>, Vec<bool>, Vec<f64>);

/// One model's rows and fits, between fitting its own heads and shrinking them.
struct ModelData {
    name: String,
    /// Every train outcome is logged bandit feedback (see `pooled`).
    bandit: bool,
    train: LabelledRows,
    dev: LabelledRows,
    /// Train + dev (`None` without dev rows: then train alone).
    all: Option<LabelledRows>,
    own: LinearHead,
    length: LengthHead,
    /// The own heads refitted on train + dev (`None` without dev rows).
    refit: Option<(LinearHead, LengthHead)>,
}

impl ModelData {
    fn train_and_dev(&self) -> &LabelledRows {
        self.all.as_ref().unwrap_or(&self.train)
    }
}

/// Shrinks every model's quality head toward the pooled fit as dev chooses (see `pooled`),
/// for the train-only heads and, with the same choice, for the train + dev refits.
fn shrink_toward_pooled(per_model: Vec<ModelData>) -> Result<ShrunkHeads, TrainError> {
    fn rows(set: &LabelledRows, bandit: bool) -> ModelRows<'_> {
        let (x, y, w) = set;
        ModelRows { x, y, w, bandit }
    }
    let train: Vec<ModelRows<'_>> = per_model.iter().map(|d| rows(&d.train, d.bandit)).collect();
    let dev: Vec<ModelRows<'_>> = per_model.iter().map(|d| rows(&d.dev, d.bandit)).collect();
    let own: Vec<LinearHead> = per_model.iter().map(|d| d.own.clone()).collect();
    let (choice, quality) = choose_shrinkage(&own, &train, &dev)?;
    tracing::info!(
        pooled_alpha = choice
            .alpha
            .map_or_else(|| "none (own heads kept)".into(), |a| a.to_string()),
        kappa = choice.kappa,
        own = format!("{:.4}", choice.own_dev_log_loss),
        shrunk = format!("{:.4}", choice.dev_log_loss),
        "quality heads shrunk toward the pooled fit (dev log-loss)"
    );
    let all: Vec<ModelRows<'_>> = per_model
        .iter()
        .map(|d| rows(d.train_and_dev(), d.bandit))
        .collect();
    // The pooled refit is needed only where some model is shrunk at all (κ as `shrunk` applies it).
    let refit_pooled = match choice.alpha {
        Some(alpha) if all.iter().any(|r| r.kappa(choice.kappa) > 0.0) => {
            Some(pooled_heads(&all, alpha)?)
        }
        _ => None,
    };
    let mut heads = Vec::new();
    let mut refitted = Vec::new();
    for (m, (d, q)) in per_model.iter().zip(quality).enumerate() {
        heads.push(ModelHead {
            name: d.name.clone(),
            quality: q,
            output_tokens: d.length.clone(),
        });
        refitted.push(d.refit.as_ref().map(|(own, length)| ModelHead {
            name: d.name.clone(),
            quality: match &refit_pooled {
                Some(pooled) => shrunk(own, &pooled[m], choice.kappa, &all[m]),
                None => own.clone(),
            },
            output_tokens: length.clone(),
        }));
    }
    Ok(ShrunkHeads {
        choice,
        heads,
        refitted,
    })
}

/// What [`shrink_toward_pooled`] chose and made.
struct ShrunkHeads {
    choice: Shrinkage,
    /// Train-only heads (what the gate judges).
    heads: Vec<ModelHead>,
    /// Train + dev refits (what is written), where dev had rows.
    refitted: Vec<Option<ModelHead>>,
}

/// Keeps `current`'s heads for the models `candidate` has no data on (a model nobody routed to
/// since the last retrain must not drop out of the policy, or it could never be explored again).
/// The heads are re-expressed over the candidate's standardisation, which is exact because both
/// are affine in the raw features. Returns the models carried over.
fn carry_over_heads(candidate: &mut PolicyFile, current: &PolicyFile) -> Vec<String> {
    let (new_s, old_s) = (&candidate.standardize, &current.standardize);
    if candidate.feature_schema != current.feature_schema
        || candidate.embedding_dim != current.embedding_dim
        || new_s.mean.len() != old_s.mean.len()
    {
        return Vec::new();
    }
    // w·(x−m)/s + b  =  Σ w_j s'_j/s_j · (x_j−m'_j)/s'_j  +  b + Σ w_j (m'_j−m_j)/s_j
    let convert = |weights: &[f32], bias: f32| -> (Vec<f32>, f32) {
        let mut shift = f64::from(bias);
        let w = weights
            .iter()
            .enumerate()
            .map(|(j, w)| {
                let (m_new, s_new) = (new_s.mean[j], new_s.scale[j]);
                let (m_old, s_old) = (old_s.mean[j], old_s.scale[j]);
                shift += f64::from(*w) * f64::from(m_new - m_old) / f64::from(s_old);
                w * s_new / s_old
            })
            .collect();
        (w, shift as f32)
    };
    let mut carried = Vec::new();
    for head in &current.models {
        if candidate.models.iter().any(|m| m.name == head.name) {
            continue;
        }
        let (qw, qb) = convert(&head.quality.weights, head.quality.bias);
        let (lw, lb) = convert(&head.output_tokens.weights, head.output_tokens.bias);
        let mut moved = head.clone();
        moved.quality.weights = qw;
        moved.quality.bias = qb;
        moved.output_tokens.weights = lw;
        moved.output_tokens.bias = lb;
        candidate.models.push(moved);
        if let Some(n) = &mut candidate.neighbours {
            n.quality.push(vec![-1.0; n.rows]);
            n.output_tokens.push(vec![-1.0; n.rows]);
        }
        // The classifier never saw this model: its own head alone speaks for it.
        if let Some(c) = &mut candidate.shared {
            c.w2.extend(std::iter::repeat_n(0.0, c.hidden));
            c.b2.push(0.0);
            c.share.push(0.0);
        }
        carried.push(head.name.clone());
    }
    if !carried.is_empty() {
        candidate.version = format!("{}-c{}", candidate.version, &content_hash(candidate)[..6]);
    }
    carried
}

fn data_label(o: &Outcomes) -> String {
    format!("m{}-{}", o.models.len(), &o.data_sha256[..8])
}

fn content_hash(file: &PolicyFile) -> String {
    let core = (&file.models, &file.standardize, &file.decision);
    // Without a shared classifier the hash stays what it was before classifiers existed.
    let bytes = match &file.shared {
        None => serde_json::to_vec(&core),
        Some(shared) => serde_json::to_vec(&(core, shared)),
    }
    .unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Smallest neighbourhood blended into the heads (then doubling, see `neighbourhood_sizes`):
/// fewer than 20 neighbours are too noisy to move a calibrated head.
const SMALLEST_NEIGHBOUR_K: usize = 20;
/// Similarity temperatures tried on dev for the chosen neighbourhood (cosine similarities of
/// the nearest prompts spread over a few tenths).
const NEIGHBOUR_TEMPERATURES: [f64; 3] = [0.1, 0.05, 0.02];
/// Blend weights of the neighbours' quality searched on dev, at every size.
const NEIGHBOUR_WEIGHTS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Replays a candidate policy file over `prompts` through the serving decision rule.
fn replay_on<'a>(
    prepared: &'a Prepared,
    file: &PolicyFile,
    prompts: &[usize],
) -> Result<Replay<'a>, TrainError> {
    let policy = Policy::new(file.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    prepared.replay(&policy, prompts.to_vec())
}

/// Dev AIQ of a candidate policy, replayed through the serving decision over the λ grid.
pub(crate) fn dev_aiq(
    prepared: &Prepared,
    file: &PolicyFile,
    dev: &[usize],
) -> Result<f64, TrainError> {
    let policy = Policy::new(file.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    policy_aiq(prepared, &policy, dev)
}

/// AIQ of `policy` on `prompts` of a full-information table: replayed through the serving
/// decision over the λ grid, normalised by the single models' cost range.
pub fn policy_aiq(
    prepared: &Prepared,
    policy: &Policy,
    prompts: &[usize],
) -> Result<f64, TrainError> {
    let replay = prepared.replay(policy, prompts.to_vec())?;
    Ok(replay_aiq(prepared, &replay))
}

/// AIQ of an existing replay (see [`policy_aiq`]), for callers that also need its choices.
pub fn replay_aiq(prepared: &Prepared, replay: &Replay<'_>) -> f64 {
    let points: Vec<_> = lambda_grid()
        .into_iter()
        .map(|l| replay.point(Knob::CostWeight(l)))
        .collect();
    let singles = single_models(&prepared.outcomes, replay.prompts());
    let (lo, hi) = cost_range(&singles);
    aiq(&hull(&points), lo, hi)
}

/// A policy that knows nothing about prompts: every model predicts `quality` and
/// `output_tokens` whatever the prompt (the cold-start prior; exploration and feedback replace
/// it with learned heads).
pub fn prior_policy(models: &[String], quality: f64, output_tokens: f64) -> PolicyFile {
    let width = triage_core::features::feature_dim(EMBEDDING_DIM);
    let logit = (quality.clamp(1e-3, 1.0 - 1e-3) / (1.0 - quality.clamp(1e-3, 1.0 - 1e-3))).ln();
    let mut file = PolicyFile {
        format: POLICY_FORMAT.into(),
        format_version: POLICY_FORMAT_VERSION,
        version: String::new(),
        feature_schema: FEATURE_SCHEMA.into(),
        embedding_dim: EMBEDDING_DIM,
        standardize: triage_policy::Standardizer {
            mean: vec![0.0; width],
            scale: vec![1.0; width],
        },
        decision: DecisionParams {
            balanced_margin: 0.02,
            cost_margin: 0.1,
        },
        models: models
            .iter()
            .map(|name| ModelHead {
                name: name.clone(),
                quality: triage_policy::LinearHead {
                    weights: vec![0.0; width],
                    bias: logit as f32,
                },
                output_tokens: triage_policy::LengthHead {
                    weights: vec![0.0; width],
                    bias: output_tokens.max(1.0).ln() as f32,
                    min_tokens: 1.0,
                    max_tokens: 100_000.0,
                },
            })
            .collect(),
        neighbours: None,
        shared: None,
        training: serde_json::json!({"prior_only": {"quality": quality, "output_tokens": output_tokens}}),
    };
    file.version = format!("prior-{}", &content_hash(&file)[..10]);
    file
}

/// Width of the serving encoder's embeddings (all-MiniLM-L6-v2).
const EMBEDDING_DIM: usize = 384;

/// Picks the neighbourhood size and blend weight with the best dev AIQ (weight 0: head only).
fn choose_neighbours(
    prepared: &Prepared,
    file: &PolicyFile,
    train: &[usize],
    dev: &[usize],
) -> Result<(Option<NeighbourSet>, serde_json::Value), TrainError> {
    if dev.is_empty() {
        return Ok((None, serde_json::Value::Null));
    }
    let base = neighbour_set(prepared, file, train, 1, 0.0);
    let mut best = (None, dev_aiq(prepared, file, dev)?);
    let mut tried = vec![serde_json::json!({"k": 0, "weight": 0.0, "aiq": best.1})];
    // Scores one candidate neighbourhood on dev, records it, and keeps it if it is the best yet.
    let mut consider =
        |set: NeighbourSet, best: &mut (Option<NeighbourSet>, f64)| -> Result<(), TrainError> {
            let mut candidate = file.clone();
            candidate.neighbours = Some(set.clone());
            let score = dev_aiq(prepared, &candidate, dev)?;
            let mut entry = serde_json::json!({"k": set.k, "weight": set.weight, "aiq": score});
            if set.length_weight > 0.0 {
                entry["length_weight"] = set.length_weight.into();
            }
            if let Some(temperature) = set.temperature {
                entry["temperature"] = temperature.into();
            }
            tracing::debug!(%entry, "neighbour blend");
            tried.push(entry);
            if score > best.1 {
                *best = (Some(set), score);
            }
            Ok(())
        };
    for k in neighbourhood_sizes(SMALLEST_NEIGHBOUR_K, train.len()) {
        for weight in NEIGHBOUR_WEIGHTS.into_iter().filter(|w| *w > 0.0) {
            let set = NeighbourSet {
                k,
                weight,
                ..base.clone()
            };
            consider(set, &mut best)?;
        }
    }
    // Then whether the closest of the k neighbours should count more.
    if let Some(set) = best.0.clone() {
        for temperature in NEIGHBOUR_TEMPERATURES {
            let sharper = NeighbourSet {
                temperature: Some(temperature),
                ..set.clone()
            };
            consider(sharper, &mut best)?;
        }
    }
    // Then whether the neighbours' answer lengths help the cost estimate too.
    if let Some(set) = best.0.clone() {
        let with_length = NeighbourSet {
            length_weight: set.weight,
            ..set
        };
        consider(with_length, &mut best)?;
    }
    match &best.0 {
        Some(set) => tracing::info!(
            k = set.k,
            weight = set.weight,
            length_weight = set.length_weight,
            dev_aiq = best.1,
            "neighbour blend chosen"
        ),
        None => tracing::info!(dev_aiq = best.1, "logistic heads alone are best on dev"),
    }
    Ok((best.0, serde_json::Value::Array(tried)))
}

/// The neighbourhood of `prompts` (their embeddings and each outcome of `file`'s models on
/// them), averaging `k` neighbours blended in at `weight`.
pub fn neighbour_set(
    prepared: &Prepared,
    file: &PolicyFile,
    prompts: &[usize],
    k: usize,
    weight: f64,
) -> NeighbourSet {
    let o = &prepared.outcomes;
    let feats = &prepared.features.features;
    let embeddings: Vec<&[f32]> = prompts
        .iter()
        .map(|&p| &feats[p][..file.embedding_dim])
        .collect();
    // One row per policy model, one value per prompt; -1 where unknown.
    let column = |value: fn(&Outcome) -> Option<f64>| -> Vec<Vec<f32>> {
        let per_model = |name: &str| -> Vec<f32> {
            let m = o.model_index(name);
            let cell = |p: usize| m.and_then(|m| o.cells[p][m]);
            prompts
                .iter()
                .map(|&p| cell(p).and_then(|c| value(&c)).map_or(-1.0, |v| v as f32))
                .collect()
        };
        file.models
            .iter()
            .map(|head| per_model(&head.name))
            .collect()
    };
    NeighbourSet::new(
        k,
        weight,
        &embeddings,
        column(|c| Some(c.quality)),
        column(|c| c.output_tokens),
    )
}

/// `validated` with its heads replaced by their train + dev refits and its neighbourhood
/// widened to train + dev prompts; every choice made on dev is kept.
fn deployed_form(
    prepared: &Prepared,
    validated: &PolicyFile,
    refitted: Vec<Option<ModelHead>>,
    shared_refit: Option<triage_policy::SharedClassifier>,
    train_and_dev: &[usize],
) -> PolicyFile {
    let mut file = validated.clone();
    if shared_refit.is_some() {
        file.shared = shared_refit;
    }
    for (head, refit) in file.models.iter_mut().zip(refitted) {
        if let Some(refit) = refit {
            *head = refit;
        }
    }
    if let Some(training) = file.training.as_object_mut() {
        training.insert(
            "refit".into(),
            "heads and neighbours refitted on train + dev with the choices made on dev".into(),
        );
    }
    if let Some(chosen) = &validated.neighbours {
        file.neighbours = Some(NeighbourSet {
            length_weight: chosen.length_weight,
            temperature: chosen.temperature,
            ..neighbour_set(prepared, &file, train_and_dev, chosen.k, chosen.weight)
        });
    }
    file.version = format!(
        "{}-{}",
        data_label(&prepared.outcomes),
        &content_hash(&file)[..10]
    );
    file
}

/// Margin grid searched on dev.
const MARGINS: [f64; 13] = [
    0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
];

fn choose_margins(
    prepared: &Prepared,
    file: &PolicyFile,
    dev: &[usize],
) -> Result<DecisionParams, TrainError> {
    if dev.is_empty() {
        return Ok(file.decision.clone());
    }
    let mut replay = replay_on(prepared, file, dev)?;
    let top = replay.point(Knob::Mode(Mode::Quality)).quality;
    let mut balanced = 0.0;
    let mut cost = 0.0;
    for m in MARGINS {
        replay.set_params(DecisionParams {
            balanced_margin: m,
            cost_margin: m,
        });
        let q = replay.point(Knob::Mode(Mode::Balanced)).quality;
        if q >= top - 0.01 {
            balanced = m;
        }
        if q >= top - 0.05 {
            cost = m;
        }
    }
    Ok(DecisionParams {
        balanced_margin: balanced,
        cost_margin: cost.max(balanced),
    })
}

/// Writes `policy` to a temporary file beside `out`, fsyncs it and renames it into place, so a
/// reader never sees a half-written policy. The file is validated before it is written.
pub fn write_policy_atomically(policy: &PolicyFile, out: &Path) -> Result<(), TrainError> {
    let err = |message: String| TrainError::Write {
        path: out.display().to_string(),
        message,
    };
    Policy::new(policy.clone()).map_err(|e| err(e.to_string()))?;
    let json = serde_json::to_vec_pretty(policy).map_err(|e| err(e.to_string()))?;
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("policy"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_heads_predict_the_same_under_a_new_standardisation() {
        let models = ["a".to_owned(), "b".to_owned()];
        let mut current = prior_policy(&models, 0.5, 100.0);
        let width = current.standardize.mean.len();
        current.standardize.mean = (0..width).map(|j| j as f32 * 0.01).collect();
        current.standardize.scale = (0..width).map(|j| 1.0 + j as f32 * 0.02).collect();
        for (i, head) in current.models.iter_mut().enumerate() {
            head.quality.weights = (0..width)
                .map(|j| ((i + j) % 7) as f32 * 0.01 - 0.03)
                .collect();
            head.output_tokens.weights = (0..width).map(|j| (j % 5) as f32 * 0.002).collect();
        }
        let mut candidate = prior_policy(&models[..1], 0.5, 100.0);
        candidate.standardize.mean = vec![0.3; width];
        candidate.standardize.scale = vec![2.0; width];
        // The candidate's shared classifier never saw "b": it must gain a silent output for it.
        candidate.shared = Some(triage_policy::SharedClassifier {
            hidden: 2,
            w1: vec![0.01; 2 * width],
            b1: vec![0.1, -0.1],
            w2: vec![1.0, -1.0],
            b2: vec![0.2],
            share: vec![1.0],
        });
        let carried = carry_over_heads(&mut candidate, &current);
        assert_eq!(carried, ["b"]);
        assert_eq!(
            candidate.shared.as_ref().map(|c| c.share.clone()),
            Some(vec![1.0, 0.0])
        );

        let x: Vec<f32> = (0..width)
            .map(|j| ((j * 13) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let (current, candidate) = (
            Policy::new(current).expect("valid"),
            Policy::new(candidate).expect("valid"),
        );
        let before = current.predict(&x).expect("scores");
        let after = candidate.predict(&x).expect("scores");
        let b = |p: &[(&str, triage_policy::Prediction)]| {
            p.iter()
                .find(|(m, _)| *m == "b")
                .map(|(_, p)| *p)
                .expect("b scored")
        };
        let (old, new) = (b(&before), b(&after));
        assert!((old.quality - new.quality).abs() < 1e-4, "{old:?} {new:?}");
        assert!((old.output_tokens - new.output_tokens).abs() / old.output_tokens < 1e-3);
    }
}
