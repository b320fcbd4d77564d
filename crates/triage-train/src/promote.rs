//! The promotion gate: a retrained policy replaces the serving one only if it is not worse.
//!
//! Evidence, in order of preference:
//! 1. **held-out**: the dev split of a full-information outcome table (a seed table), replayed
//!    through both policies over the λ grid with the real outcomes and compared by AIQ: exact,
//!    so it goes first;
//! 2. **off-policy**: enough logged decisions on held-out (dev) requests, each replayed through
//!    both policies, estimated with DR (and IPS reported beside it), see [`crate::offpolicy`];
//!    "not worse" allows two bootstrap standard errors, since the estimate is noisy;
//! 3. **none**: there is no current policy to beat.
//!
//! `--force` skips the gate.

use std::collections::HashSet;

use triage_core::Catalog;
use triage_policy::{Policy, PolicyFile};

use crate::TrainError;
use crate::logdata::LoggedData;
use crate::offpolicy::{RewardModel, compare};
use crate::table::Split;
use crate::train::{Prepared, dev_aiq};

/// AIQ a candidate may lose and still count as "not worse" (estimation noise).
pub const AIQ_TOLERANCE: f64 = 0.002;
/// Least held-out logged decisions with outcomes (or dev prompts with several outcomes) before
/// an estimate may decide promotion.
pub const MIN_EVIDENCE: usize = 50;

/// Whether a candidate replaces the serving policy, and on what evidence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GateVerdict {
    /// Promote (write the candidate) or keep the current policy.
    pub promote: bool,
    /// `none` (no current policy), `off-policy`, `held-out`, `insufficient` or `forced`.
    pub evidence: String,
    /// One sentence a person can act on.
    pub reason: String,
    /// Current policy's estimate, when computed.
    pub current: Option<serde_json::Value>,
    /// Candidate's estimate, when computed.
    pub candidate: Option<serde_json::Value>,
}

/// Decides whether `candidate` replaces `current`.
pub fn gate(
    current: Option<&Policy>,
    candidate: &PolicyFile,
    prepared: &Prepared,
    logged: Option<&LoggedData>,
    catalog: &Catalog,
) -> Result<GateVerdict, TrainError> {
    let Some(current) = current else {
        return Ok(GateVerdict {
            promote: true,
            evidence: "none".into(),
            reason: "no current policy at the destination: nothing to beat".into(),
            current: None,
            candidate: None,
        });
    };
    let candidate_policy =
        Policy::new(candidate.clone()).map_err(|e| TrainError::Fit(e.to_string()))?;
    let dev = prepared.outcomes.indices(Split::Dev);

    let full_information: Vec<usize> = dev
        .iter()
        .copied()
        .filter(|&p| prepared.outcomes.cells[p].iter().flatten().count() >= 2)
        .collect();
    // A model learned only from the log has no outcomes in the seed table: a held-out replay
    // cannot see what it adds, so the log's off-policy evidence decides instead.
    let blind_to: Vec<&str> = candidate
        .models
        .iter()
        .map(|m| m.name.as_str())
        .filter(|name| {
            prepared.outcomes.model_index(name).is_none_or(|m| {
                full_information
                    .iter()
                    .all(|&p| prepared.outcomes.cells[p][m].is_none())
            })
        })
        .collect();
    if !blind_to.is_empty() {
        tracing::info!(models = ?blind_to, "held-out data has no outcomes for these models");
    }
    if full_information.len() >= MIN_EVIDENCE && (blind_to.is_empty() || logged.is_none()) {
        let old = dev_aiq(prepared, current.file(), &full_information)?;
        let new = dev_aiq(prepared, candidate, &full_information)?;
        let promote = new >= old - AIQ_TOLERANCE;
        return Ok(GateVerdict {
            promote,
            evidence: "held-out".into(),
            reason: format!(
                "dev AIQ over {} prompts with several outcomes: candidate {new:.4} vs current \
                 {old:.4} ({})",
                full_information.len(),
                if promote {
                    "not worse"
                } else {
                    "worse by more than the tolerance"
                }
            ),
            current: Some(serde_json::json!({ "dev_aiq": old })),
            candidate: Some(serde_json::json!({ "dev_aiq": new })),
        });
    }
    if let Some(logged) = logged {
        // Only requests the candidate did not train on.
        let dev_ids: HashSet<&str> = dev
            .iter()
            .map(|&p| prepared.outcomes.prompts[p].id.as_str())
            .collect();
        let held_out = logged.restricted_to(&dev_ids);
        let fitted_on = logged.excluding(&dev_ids);
        let reward = RewardModel::fit(&fitted_on);
        if let Some(c) = compare(
            current,
            &candidate_policy,
            catalog,
            &held_out,
            &reward,
            MIN_EVIDENCE,
        ) {
            // "Not worse" = not significantly worse: within the tolerance or two standard
            // errors of the estimated difference, whichever is larger.
            let allowed = AIQ_TOLERANCE.max(2.0 * c.difference_se);
            let difference = c.candidate.aiq - c.current.aiq;
            let promote = difference >= -allowed;
            return Ok(GateVerdict {
                promote,
                evidence: "off-policy".into(),
                reason: format!(
                    "doubly robust AIQ on {} held-out logged decisions: candidate {:.4} vs \
                     current {:.4}, difference {difference:+.4} (standard error {:.4}): {}",
                    c.candidate.at_logged_knob.decisions,
                    c.candidate.aiq,
                    c.current.aiq,
                    c.difference_se,
                    if promote {
                        "not worse"
                    } else {
                        "worse by more than two standard errors"
                    },
                ),
                current: serde_json::to_value(&c.current).ok(),
                candidate: serde_json::to_value(&c.candidate).ok(),
            });
        }
        tracing::info!(
            needed = MIN_EVIDENCE,
            "too few held-out logged decisions for an off-policy estimate"
        );
    }

    Ok(GateVerdict {
        promote: false,
        evidence: "insufficient".into(),
        reason: format!(
            "neither {MIN_EVIDENCE} held-out logged decisions with outcomes nor \
             {MIN_EVIDENCE} dev prompts with several outcomes: not enough evidence \
             that the candidate is not worse (collect more feedback, add a seed table with \
             --data, or pass --force)"
        ),
        current: None,
        candidate: None,
    })
}
