//! Scoring a policy on prompts of a full-information table: decisions replayed through the
//! serving decision rule over the λ grid, summarised as AIQ. Every choice training makes and the
//! promotion gate's held-out evidence go through here.

use triage_policy::{Policy, PolicyFile};

use crate::TrainError;
use crate::eval::baselines::{cost_range, lambda_grid, single_models};
use crate::eval::curve::{aiq, hull};
use crate::prepare::Prepared;
use crate::simulate::Replay;
use triage_policy::Rule;

/// Replays a candidate policy file over `prompts` through the serving decision rule.
pub(crate) fn replay_on<'a>(
    prepared: &'a Prepared,
    file: &PolicyFile,
    prompts: &[usize],
) -> Result<Replay<'a>, TrainError> {
    let policy = Policy::new(file.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    prepared.replay(&policy, prompts.to_vec())
}

/// AIQ of a candidate policy file on `prompts`, replayed through the serving decision over the λ grid.
pub(crate) fn file_aiq(
    prepared: &Prepared,
    file: &PolicyFile,
    prompts: &[usize],
) -> Result<f64, TrainError> {
    let policy = Policy::new(file.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    policy_aiq(prepared, &policy, prompts)
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

/// AIQ of the zero router on `prompts`: the best single model at each trade-off, known in
/// hindsight (the hull of the single models' points), over the same cost range as a policy's.
pub fn zero_router_aiq(prepared: &Prepared, prompts: &[usize]) -> f64 {
    let singles = single_models(&prepared.outcomes, prompts);
    let points: Vec<_> = singles.iter().map(|(_, p)| *p).collect();
    let (lo, hi) = cost_range(&singles);
    aiq(&hull(&points), lo, hi)
}

/// AIQ of an existing replay (see [`policy_aiq`]), for callers that also need its choices.
pub fn replay_aiq(prepared: &Prepared, replay: &Replay<'_>) -> f64 {
    let points: Vec<_> = lambda_grid()
        .into_iter()
        .map(|l| replay.point(Rule::CostWeight(l)))
        .collect();
    let singles = single_models(&prepared.outcomes, replay.prompts());
    let (lo, hi) = cost_range(&singles);
    aiq(&hull(&points), lo, hi)
}
