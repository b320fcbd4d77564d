//! The `triage train` pipeline: load and embed the outcomes ([`crate::prepare`]), choose every
//! part of the recipe by cross-validation over the training prompts ([`crate::tune`]), fit it
//! once on all of them ([`crate::recipe`]), let the promotion gate judge, and write the policy
//! out ([`crate::output`]).

use triage_policy::{Policy, PolicyFile};

use crate::TrainError;
use crate::cascade::fit::fit_acceptor;
use crate::familiarity::{fit_curve, held_out_rows, leave_task_out_rows, with_familiarity};
use crate::logdata::{LogCounts, LoggedData, merge};
use crate::output::{
    candidate_path, carry_over_heads, content_hash, data_label, write_policy_atomically,
};
use crate::pooled::BANDIT_MIN_KAPPA;
use crate::prepare::{
    Prepared, TrainOptions, check_requested_models, checked, embed_table, load_table, prepare,
    training_prompts,
};
use crate::promote::{GateVerdict, gate, pulled_toward_prior};
use crate::recipe::{Routing, assemble, bandit_flags, fit_components, with_shared};
use crate::responses::Responses;
use crate::table::Split;
use crate::tune::{describe, shared_recipe, tune};

/// What training produced.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The policy trained (written only if `verdict.promote`).
    pub policy: PolicyFile,
    /// Prompts per split (train, dev, test); train and dev are both training prompts.
    pub prompts: (usize, usize, usize),
    /// Whether it replaced the policy at the destination, and why.
    pub verdict: GateVerdict,
    /// What the log held, when training from it.
    pub log_counts: Option<LogCounts>,
    /// The routing cross-validation chose, in words.
    pub routing: String,
}

/// Trains a policy from a table, the log, or both, and writes it to `options.out` if the
/// promotion gate (or `force`) allows.
pub fn train(options: &TrainOptions) -> Result<TrainReport, TrainError> {
    let catalog = options.catalog()?;
    let logged = options
        .from_log
        .as_ref()
        .map(LoggedData::read)
        .transpose()?
        .map(|log| log.with_judge_weight(options.judge_weight));
    let prepared = match (&options.data, &logged) {
        (Some(data), None) => {
            let outcomes = load_table(data, &catalog, options)?;
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
    // Read before fitting, so a bad responses file fails in seconds, not after minutes.
    let from_file = options
        .responses
        .as_ref()
        .map(|source| Responses::load(source, &prepared.outcomes))
        .transpose()?;
    // The log's verdicts keep each draft's evidence: with quality feedback on the drafts, they
    // retrain the acceptor as a responses file would.
    let from_log = logged
        .as_ref()
        .and_then(|log| Responses::from_log(&log.verifications, &prepared.outcomes));
    let responses = match (from_file, from_log) {
        (Some(file), Some(log)) => Some(file.filled_from(log)),
        (file, log) => file.or(log),
    };
    // The gate judges fold 0's policy on fold 0; the recipe fitted on every training prompt is
    // what gets written.
    let Fitted {
        fold_policies,
        deployed: mut policy,
        routing,
    } = fit_policy(&prepared, options.folds)?;
    if let Some(responses) = &responses {
        attach_acceptor(&prepared, responses, &fold_policies, &mut policy)?;
    }
    let (mut validated, held_out) = fold_policies
        .into_iter()
        .next()
        .unwrap_or_else(|| (policy.clone(), Vec::new()));
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
        // A current policy fitted on this very table (or on a table this data includes, as
        // a seed beside the log) has seen fold 0 too, so it is judged against the candidate
        // fitted on every prompt: fold 0's policy, judged on prompts the current one was
        // fitted on, would lose to it whatever it learned.
        let same_table = current
            .as_ref()
            .is_some_and(|c| fitted_on_these(c.file(), &prepared.outcomes));
        let judged = if same_table { &policy } else { &validated };
        let mut verdict = gate(
            current.as_ref(),
            judged,
            &prepared,
            logged.as_ref(),
            &catalog,
            &held_out,
        )?;
        if same_table {
            verdict.reason.push_str(
                " (both fitted on every prompt of this table, so those forms are compared)",
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
        routing: describe(&routing),
    })
}

/// Whether `policy` was fitted on (some of) the prompts of `outcomes`: the same data, or a
/// source of it (a seed table trained beside a log).
fn fitted_on_these(policy: &PolicyFile, outcomes: &crate::table::Outcomes) -> bool {
    let training = &policy.training;
    if training.get("data_sha256").and_then(|v| v.as_str()) == Some(outcomes.data_sha256.as_str()) {
        return true;
    }
    training
        .get("sources")
        .and_then(|v| v.as_array())
        .is_some_and(|theirs| {
            theirs
                .iter()
                .filter_map(|v| v.as_str())
                .any(|sha| outcomes.sources.iter().any(|ours| ours == sha))
        })
}

/// A fitted policy, and the forms fitted without each fold.
#[derive(Clone, Debug)]
pub struct Fitted {
    /// Each cross-validation fold's policy (fitted without the fold by the same recipe) and the
    /// fold's prompts: the gate judges fold 0's on fold 0. Empty when there were too few prompts
    /// to cross-validate.
    pub fold_policies: Vec<(PolicyFile, Vec<usize>)>,
    /// The recipe fitted on all training prompts: what is written.
    pub deployed: PolicyFile,
    /// The routing cross-validation chose.
    pub routing: Routing,
}

/// Chooses every part of the recipe by `folds`-fold cross-validation over the training prompts,
/// then fits it on all of them.
pub fn fit_policy(prepared: &Prepared, folds: usize) -> Result<Fitted, TrainError> {
    let o = &prepared.outcomes;
    let training = training_prompts(o);
    if training.is_empty() {
        return Err(TrainError::Data("the table has no training prompts".into()));
    }
    let models: Vec<usize> = (0..o.models.len())
        .filter(|&m| {
            let any = training.iter().any(|&p| o.cells[p][m].is_some());
            if !any {
                tracing::warn!(model = %o.models[m], "no training outcomes: model left out of the policy");
            }
            any
        })
        .collect();
    if models.is_empty() {
        return Err(TrainError::Data("no model has a training outcome".into()));
    }
    let bandit = bandit_flags(prepared, &models, &training);
    let bandit_only: Vec<&str> = models
        .iter()
        .zip(&bandit)
        .filter(|(_, b)| **b)
        .map(|(&m, _)| o.models[m].as_str())
        .collect();
    if !bandit_only.is_empty() {
        tracing::info!(
            models = ?bandit_only,
            min_kappa = BANDIT_MIN_KAPPA,
            "known only from the log: shrunk toward the pooled fit at least this much"
        );
    }
    let started = std::time::Instant::now();
    let tuned = tune(prepared, &models, &bandit, &training, folds)?;
    let mut recipe = tuned.recipe;
    let mut comps = fit_components(prepared, &recipe, &training, &bandit)?;
    if recipe.routing.share > 0.0 {
        // Decay and epochs for all training prompts, on an inner holdout of them.
        recipe.shared = shared_recipe(prepared, &comps, &training)?;
        match &recipe.shared {
            Some(shared) => comps = with_shared(prepared, comps, shared, &training),
            None => recipe.routing.share = 0.0,
        }
    }
    let deployed = assemble(
        prepared,
        &comps,
        &recipe.routing,
        &training,
        &recipe.decision,
    );
    let (mut deployed, fold_policies, familiarity) = attach_familiarity(
        prepared,
        &recipe,
        &bandit,
        &training,
        deployed,
        tuned.fold_policies,
    )?;
    let test = o.prompts.len() - training.len();
    let training_json = |refit: &str| {
        serde_json::json!({
            "data_sha256": o.data_sha256,
            "sources": o.sources,
            "rows": o.rows,
            "prompts": {"training": training.len(), "test": test},
            "models": o.models,
            "recipe": recipe,
            "bandit_only_models": bandit_only,
            "bandit_min_kappa": BANDIT_MIN_KAPPA,
            "cross_validation": tuned.report,
            "familiarity": familiarity,
            "refit": refit,
        })
    };
    deployed.training =
        training_json("every training prompt, with the recipe cross-validation chose");
    deployed.version = format!("{}-{}", data_label(o), &content_hash(&deployed)[..10]);
    let fold_policies = fold_policies
        .into_iter()
        .enumerate()
        .map(|(f, (mut file, held))| {
            file.training = training_json(&format!(
                "cross-validation fold {f}'s policy: fitted without fold {f}"
            ));
            file.version = format!("{}-{}", data_label(o), &content_hash(&file)[..10]);
            (file, held)
        })
        .collect();
    tracing::info!(
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        version = %deployed.version,
        "policy fitted"
    );
    Ok(Fitted {
        fold_policies,
        deployed,
        routing: recipe.routing,
    })
}

/// A cross-validation fold's policy and the fold's prompts.
type FoldPolicy = (PolicyFile, Vec<usize>);

/// Fits the trust curve on held-out predictions (each task left out, and the folds) and gives
/// `deployed` and every fold policy their familiarity; returns them and the fit's evidence.
fn attach_familiarity(
    prepared: &Prepared,
    recipe: &crate::recipe::Recipe,
    bandit: &[bool],
    training: &[usize],
    deployed: PolicyFile,
    fold_policies: Vec<FoldPolicy>,
) -> Result<(PolicyFile, Vec<FoldPolicy>, serde_json::Value), TrainError> {
    let started = std::time::Instant::now();
    let fit_of = |held: &[usize]| -> Vec<usize> {
        let held: std::collections::HashSet<usize> = held.iter().copied().collect();
        training
            .iter()
            .copied()
            .filter(|p| !held.contains(p))
            .collect()
    };
    let mut rows = leave_task_out_rows(prepared, recipe, bandit, training)?;
    let from_tasks = rows.len();
    for (file, held) in &fold_policies {
        rows.extend(held_out_rows(prepared, file.clone(), &fit_of(held), held)?);
    }
    let fit = fit_curve(&rows);
    tracing::info!(
        rows_left_out_by_task = from_tasks,
        rows = rows.len(),
        curve = ?fit.curve,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "trust curve fitted on held-out predictions"
    );
    let folds = fold_policies
        .into_iter()
        .map(|(file, held)| {
            let file = with_familiarity(prepared, file, &fit_of(&held), fit.curve);
            (file, held)
        })
        .collect();
    let deployed = with_familiarity(prepared, deployed, training, fit.curve);
    Ok((deployed, folds, fit.report))
}

/// Learns the cascade's acceptor from `responses` and the fold policies' views, and puts it (and
/// what cross-validation found) into `policy`.
fn attach_acceptor(
    prepared: &Prepared,
    responses: &Responses,
    fold_policies: &[(PolicyFile, Vec<usize>)],
    policy: &mut PolicyFile,
) -> Result<(), TrainError> {
    let started = std::time::Instant::now();
    let lambdas = crate::eval::baselines::lambda_grid();
    let Some(fit) = fit_acceptor(prepared, responses, fold_policies, &lambdas)? else {
        return Ok(());
    };
    tracing::info!(
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "acceptor chosen by cross-validation"
    );
    policy.acceptor = Some(fit.acceptor);
    if let Some(training) = policy.training.as_object_mut() {
        training.insert("acceptor".into(), fit.report);
    }
    policy.version = format!(
        "{}-{}",
        data_label(&prepared.outcomes),
        &content_hash(policy)[..10]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(sha: &str, sources: &[&str]) -> crate::table::Outcomes {
        crate::table::Outcomes {
            prompts: Vec::new(),
            models: Vec::new(),
            cells: Vec::new(),
            specs: Default::default(),
            data_sha256: sha.into(),
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            rows: 0,
        }
    }

    #[test]
    fn a_policy_fitted_on_the_seed_table_counts_as_fitted_on_seed_plus_log() {
        let mut current = crate::recipe::prior_policy(&["m".to_owned()], 0.5, 100.0);
        current.training = serde_json::json!({"data_sha256": "seed", "sources": ["seed"]});
        // The same table, and the table with a log beside it (another combined sha).
        assert!(fitted_on_these(&current, &outcomes("seed", &["seed"])));
        assert!(fitted_on_these(
            &current,
            &outcomes("seed+log", &["seed", "log-2"])
        ));
        // Another table, or a log alone, shares no prompts with it.
        assert!(!fitted_on_these(&current, &outcomes("other", &["other"])));
        assert!(!fitted_on_these(&current, &outcomes("log-2", &["log-2"])));
        // A policy from before sources were recorded is judged by its data sha alone.
        current.training = serde_json::json!({"data_sha256": "seed"});
        assert!(!fitted_on_these(
            &current,
            &outcomes("seed+log", &["seed", "log-2"])
        ));
    }
}
