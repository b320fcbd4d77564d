//! Every choice `triage train` makes, by K-fold cross-validation over the training prompts.
//!
//! One small dev split made every choice before, and on a table it had not seen the policy
//! lost to plain kNN: the split's 313 prompts preferred the heads alone by chance. Now the
//! training prompts (train and any dev split together) are cut into K prompt-disjoint folds by
//! a hash of each prompt's fold key, and every choice is scored on each fold by a policy
//! fitted on the other K − 1:
//!
//! - **Statistical choices, by out-of-fold log-loss**: each model's L2 strength (or the
//!   prompt-blind constant head), its Platt map (fitted on the out-of-fold logits at that
//!   strength), and the shrinkage toward the pooled fit. The per-model fits along the L2 grid
//!   are the bulk of training time, so each fold fits the whole grid once and keeps it, each
//!   fit starting from the previous fold's (about half the time of a cold start on MMLU-Pro).
//!   The Platt map is fitted once on all out-of-fold logits and applied to every fold's heads:
//!   two numbers learned partly on the fold being scored, a leak accepted because a map per
//!   fold would be fitted on a fifth of the rows.
//! - **The shared classifier's decay and epochs**, by early stopping on an inner 15% of each
//!   fold's own training prompts (nested: the fold it is scored on never stops it). K-fold
//!   over five decays and five members would multiply the slowest step by K again; whether
//!   the classifier is kept at all, and its share, are routing choices below.
//! - **Routing choices, by out-of-fold AIQ** replayed through the serving decision: plain kNN
//!   on the embeddings (the neighbours alone, as `triage eval`'s kNN row), the heads alone,
//!   heads with the shared classifier, heads with a neighbourhood, and all three; with the
//!   neighbourhood size and weight, the share, a similarity temperature and whether the
//!   neighbours' lengths count.
//! - **Simplest within noise**: among candidates whose mean AIQ is within one standard error
//!   of the best (the standard error of their per-fold differences from it, which are paired
//!   on the same prompts), the simplest wins: kNN, then heads, heads + neighbourhood, heads +
//!   classifier, all three; a temperature or length weight counts as more.
//! - **Margins**: the widest that keeps mean out-of-fold quality in BALANCED within 0.01 of
//!   QUALITY mode (COST: 0.05).
//!
//! `train` then refits the chosen recipe on all training prompts. Fold 0's policy, fitted
//! without fold 0, is what the promotion gate judges on fold 0.

mod heads;
mod routing;

use sha2::{Digest, Sha256};
use triage_policy::PolicyFile;

use crate::TrainError;
use crate::pooled::ShrinkSetting;
use crate::prepare::Prepared;
use crate::recipe::{DEFAULT_DECISION, HeadRecipe, Recipe, Routing, SharedRecipe, assemble};
pub use heads::shared_recipe;
use heads::{ShrinkChoice, choose_heads, choose_shrink, fit_paths, fold_components};
use routing::{Candidate, Cv, choose_margins, select};
pub use routing::{SMALLEST_NEIGHBOUR_K, describe};

/// Folds by default.
pub const DEFAULT_FOLDS: usize = 5;
/// Prompts with outcomes of at least two models needed (over all folds) before routing
/// choices are made by replay: with one outcome per prompt every policy replays the same.
const MIN_INFORMATIVE: usize = 30;
/// L2 strength used when there are too few prompts to cross-validate.
const FALLBACK_ALPHA: f64 = 1000.0;

/// A stable hash of `key` (salted) modulo `k`.
pub(crate) fn hash_mod(key: &str, salt: &[u8], k: u64) -> u64 {
    let h = Sha256::new()
        .chain_update(salt)
        .chain_update(key.as_bytes())
        .finalize();
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) % k
}

/// One fold: the prompts fitted on and the prompts scored.
#[derive(Clone, Debug)]
pub struct Fold {
    /// Fitted on.
    pub fit: Vec<usize>,
    /// Scored on.
    pub held: Vec<usize>,
}

/// `k` prompt-disjoint folds of `prompts` by a hash of each prompt's fold key (salted apart
/// from `eval --folds`, so an outer fold's training prompts still fill every inner fold);
/// empty folds are dropped.
pub fn folds(prepared: &Prepared, prompts: &[usize], k: usize) -> Vec<Fold> {
    let keys: Vec<&str> = prompts
        .iter()
        .map(|&p| prepared.outcomes.prompts[p].fold_key.as_str())
        .collect();
    fold_positions(&keys, k)
        .into_iter()
        .map(|(fit, held)| Fold {
            fit: fit.into_iter().map(|i| prompts[i]).collect(),
            held: held.into_iter().map(|i| prompts[i]).collect(),
        })
        .collect()
}

/// [`folds`] over positions in `keys`: `(fit, held)` per non-empty fold.
fn fold_positions(keys: &[&str], k: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let k = k.max(1);
    // The remainder is below k, so it fits in usize.
    let fold_of: Vec<usize> = keys
        .iter()
        .map(|key| hash_mod(key, b"cv", k as u64) as usize)
        .collect();
    (0..k)
        .map(|f| (0..keys.len()).partition::<Vec<usize>, _>(|&i| fold_of[i] != f))
        .filter(|(_, held)| !held.is_empty())
        .collect()
}

/// The chosen recipe, what was tried, and the gate's view.
pub struct Tuned {
    /// Every choice.
    pub recipe: Recipe,
    /// What cross-validation tried and found, for the policy's training metadata.
    pub report: serde_json::Value,
    /// Each fold's policy (the chosen recipe fitted without the fold) and the fold's prompts:
    /// the gate judges fold 0's; the acceptor learns from their out-of-fold predictions. Empty
    /// when there were too few prompts to cross-validate.
    pub fold_policies: Vec<(PolicyFile, Vec<usize>)>,
}

/// Chooses every part of the recipe for `models` (table indices) by `k`-fold cross-validation
/// over `prompts`.
pub fn tune(
    prepared: &Prepared,
    models: &[usize],
    bandit: &[bool],
    prompts: &[usize],
    k: usize,
) -> Result<Tuned, TrainError> {
    let folds = folds(prepared, prompts, k);
    if folds.len() < 2 {
        tracing::warn!(
            prompts = prompts.len(),
            folds_asked = k,
            non_empty_folds = folds.len(),
            "fewer than two non-empty cross-validation folds (too few prompts, or fewer than two \
             folds asked): heads at a fixed L2 strength, default margins"
        );
        return Ok(untuned(prepared, models));
    }
    let started = std::time::Instant::now();
    let (paths, standardizers) = fit_paths(prepared, models, bandit, &folds)?;
    let heads = choose_heads(&paths)?;
    tracing::info!(
        folds = folds.len(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "per-model heads fitted along the L2 grid; strengths chosen by out-of-fold log-loss"
    );
    let names: Vec<String> = models
        .iter()
        .map(|&m| prepared.outcomes.models[m].clone())
        .collect();
    let recipe_heads: Vec<(String, HeadRecipe)> = names
        .iter()
        .cloned()
        .zip(heads.iter().map(|h| h.0))
        .collect();
    let shrink = choose_shrink(
        prepared,
        models,
        bandit,
        &folds,
        &paths,
        &standardizers,
        &heads,
    )?;
    let (comps, shared_recipes) = fold_components(
        prepared,
        &names,
        bandit,
        &folds,
        &paths,
        &standardizers,
        &shrink,
    )?;
    tracing::info!(
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "fold components fitted"
    );
    let informative: Vec<Vec<usize>> = folds
        .iter()
        .map(|f| informative_prompts(prepared, &f.held))
        .collect();
    let with_shared = shared_recipes.len() == folds.len();
    let (routing, candidates) =
        if informative.iter().map(Vec::len).sum::<usize>() >= MIN_INFORMATIVE {
            let cv = Cv {
                prepared,
                folds: &folds,
                comps: &comps,
                informative: &informative,
            };
            let candidates = cv.candidates(with_shared)?;
            (select(&candidates).routing, candidates)
        } else {
            tracing::info!(
                informative = informative.iter().map(Vec::len).sum::<usize>(),
                "too few prompts with several outcomes to choose routing by replay: heads alone"
            );
            (Routing::HEADS, Vec::new())
        };
    let decision = if candidates.is_empty() {
        DEFAULT_DECISION
    } else {
        choose_margins(prepared, &folds, &comps, &informative, &routing)?
    };
    let fold_policies = folds
        .iter()
        .zip(&comps)
        .map(|(fold, c)| {
            let file = assemble(prepared, c, &routing, &fold.fit, &decision);
            (file, fold.held.clone())
        })
        .collect();
    tracing::info!(
        routing = %describe(&routing),
        balanced_margin = decision.balanced_margin,
        cost_margin = decision.cost_margin,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "routing chosen by cross-validation"
    );
    let report = report(
        &folds,
        &names,
        &heads,
        &shrink,
        &shared_recipes,
        &candidates,
        &routing,
    );
    Ok(Tuned {
        recipe: Recipe {
            heads: recipe_heads,
            shrink: shrink.setting,
            // The final shared recipe is chosen on all training prompts by `train`.
            shared: None,
            routing,
            decision,
        },
        report,
        fold_policies,
    })
}

/// What cross-validation tried and found, for the policy's training metadata.
fn report(
    folds: &[Fold],
    names: &[String],
    heads: &[(HeadRecipe, f64)],
    shrink: &ShrinkChoice,
    shared: &[SharedRecipe],
    candidates: &[Candidate],
    routing: &Routing,
) -> serde_json::Value {
    serde_json::json!({
        "folds": folds.len(),
        "fold_prompts": folds.iter().map(|f| f.held.len()).collect::<Vec<_>>(),
        "heads": names.iter().zip(heads).map(|(n, (h, loss))| {
            serde_json::json!({"model": n, "alpha": h.alpha, "platt": h.platt, "oof_log_loss": loss})
        }).collect::<Vec<_>>(),
        "shrinkage": {"alpha": shrink.setting.alpha, "kappa": finite(shrink.setting.kappa),
                      "kappa_infinite": shrink.setting.kappa.is_infinite(),
                      "oof_log_loss": shrink.loss, "own_oof_log_loss": shrink.own_loss},
        "shared_per_fold": shared,
        "candidates": candidates,
        "routing": routing,
        "margins_rule": "balanced: widest margin keeping mean out-of-fold quality within 0.01 \
                         of QUALITY mode; cost: within 0.05",
    })
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Too few prompts to cross-validate: every head at [`FALLBACK_ALPHA`], own heads (pooled
/// for bandit-only models), heads alone, default margins.
fn untuned(prepared: &Prepared, models: &[usize]) -> Tuned {
    let heads = models
        .iter()
        .map(|&m| {
            (
                prepared.outcomes.models[m].clone(),
                HeadRecipe {
                    alpha: Some(FALLBACK_ALPHA),
                    platt: None,
                },
            )
        })
        .collect();
    Tuned {
        recipe: Recipe {
            heads,
            shrink: ShrinkSetting {
                alpha: Some(crate::pooled::POOLED_ALPHAS[0]),
                kappa: 0.0,
            },
            shared: None,
            routing: Routing::HEADS,
            decision: DEFAULT_DECISION,
        },
        report: serde_json::json!({"folds": 0, "skipped": "too few training prompts"}),
        fold_policies: Vec::new(),
    }
}

/// Prompts with outcomes of at least two models: the only ones a replay can tell policies
/// apart on.
pub fn informative_prompts(prepared: &Prepared, prompts: &[usize]) -> Vec<usize> {
    prompts
        .iter()
        .copied()
        .filter(|&p| prepared.outcomes.cells[p].iter().flatten().count() >= 2)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_partition_the_prompts_and_fill_inside_an_outer_fold() {
        let ids: Vec<String> = (0..500).map(|i| format!("prompt-{i}")).collect();
        let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
        let folds = fold_positions(&keys, 5);
        assert_eq!(folds.len(), 5);
        let mut seen = vec![0; keys.len()];
        for (fit, held) in &folds {
            assert_eq!(fit.len() + held.len(), keys.len());
            assert!(held.len() > 60 && held.len() < 140, "{}", held.len());
            for &i in held {
                seen[i] += 1;
                assert!(!fit.contains(&i));
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "every prompt is held out exactly once"
        );
        // `eval --folds` cuts outer folds with another salt: the training prompts of an outer
        // fold still spread over every inner fold (with one salt, inner fold f would be empty).
        let outer: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| hash_mod(k, b"fold", 5) != 0)
            .collect();
        assert_eq!(fold_positions(&outer, 5).len(), 5);
        // Too few prompts for the folds asked: only non-empty folds come back.
        assert!((1..=2).contains(&fold_positions(&keys[..2], 5).len()));
    }
}
