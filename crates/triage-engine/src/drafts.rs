//! Verify, then escalate, in serving: which drafts a request runs before its routed model, and
//! the verdict on the drafts a front door (or a gRPC caller) hands back.
//!
//! Planning happens inside the decision, so the drafts are held to the request's constraints
//! (allowed models, the key's permissions, health, reachability) and the key's budget reserves
//! the drafts' predicted cost with the escalation's. A plan whose draft the request cannot use
//! is dropped for direct routing, and the explanation says why: a cascade never calls a model
//! the request would not allow.
//!
//! The verdict itself is `triage_policy::verify`, the same code training scores with; this
//! module only fetches the plan the log kept and shapes what the log keeps of the verdict.

use triage_log::{DraftPlanRecord, LoggedDraft, PlannedRequest, VerificationRecord};
use triage_policy::verify::Verification;
use triage_policy::{Decision, DraftEvidence, DraftPlan, Policy};

/// How a request is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The routed model answers.
    #[default]
    Route,
    /// Cheap drafts first; the routed model only when the acceptor declines them.
    Verify,
}

/// The drafts a verify request runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedDrafts {
    /// Draft models, in the order the acceptor reads them.
    pub drafts: Vec<String>,
    /// The routing policy's predicted quality per draft (online corrections included).
    pub predicted_quality: Vec<f64>,
    /// The drafts' predicted cost together, USD.
    pub predicted_cost_usd: f64,
    /// Least accept probability at which a draft is returned.
    pub threshold: f64,
}

/// Why a verify request routes directly.
#[derive(Clone, Debug, PartialEq)]
pub enum Direct {
    /// The policy was trained without responses, so it has no acceptor.
    NoAcceptor,
    /// Training found drafting does not pay at this trade-off.
    NotWorthIt,
    /// A planned draft model cannot serve this request.
    DraftExcluded {
        /// The model.
        model: String,
        /// Why (the decision's own reason).
        reason: String,
    },
}

impl std::fmt::Display for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Direct::NoAcceptor => f.write_str(
                "the policy has no acceptor (train it with --responses to enable drafts)",
            ),
            Direct::NotWorthIt => {
                f.write_str("training found that drafts do not pay at this trade-off")
            }
            Direct::DraftExcluded { model, reason } => {
                write!(
                    f,
                    "planned draft {model} cannot serve this request: {reason}"
                )
            }
        }
    }
}

/// The drafts `policy`'s acceptor plans for `decision`, held to the decision's exclusions.
pub fn plan_drafts(policy: &Policy, decision: &Decision) -> Result<PlannedDrafts, Direct> {
    let acceptor = policy.file().acceptor.as_ref().ok_or(Direct::NoAcceptor)?;
    let (plan, threshold) = acceptor.plan_for(decision.rule).ok_or(Direct::NotWorthIt)?;
    let mut predicted_quality = Vec::with_capacity(plan.drafts.len());
    let mut predicted_cost_usd = 0.0;
    for model in &plan.drafts {
        let candidate = decision.candidates.iter().find(|c| c.model == *model);
        match candidate {
            Some(c) if c.exclusion.is_none() => {
                predicted_quality.push(c.quality);
                // A draft that is also the routed model is paid once, as the escalation.
                if c.model != decision.chosen().model {
                    predicted_cost_usd += c.cost_usd;
                }
            }
            Some(c) => {
                return Err(Direct::DraftExcluded {
                    model: model.clone(),
                    reason: c
                        .exclusion
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                });
            }
            None => {
                return Err(Direct::DraftExcluded {
                    model: model.clone(),
                    reason: "it is not in the catalog".into(),
                });
            }
        }
    }
    Ok(PlannedDrafts {
        drafts: plan.drafts.clone(),
        predicted_quality,
        predicted_cost_usd,
        threshold,
    })
}

/// How a verify request will be answered, for the decision's explanation.
pub fn describe(drafts: &Result<PlannedDrafts, Direct>, escalation: &str) -> String {
    match drafts {
        Ok(p) => format!(
            "verify: draft{} {} first, returned when the acceptor's probability reaches {:.2}, \
             else {escalation}",
            if p.drafts.len() > 1 { "s" } else { "" },
            p.drafts.join(" and "),
            p.threshold
        ),
        Err(why) => format!("verify: routed directly, since {why}"),
    }
}

/// What the log keeps of a plan: the drafts, and where a declined request goes (the routed
/// model, then the eligible fallbacks in rank order).
pub fn plan_record(planned: &PlannedDrafts, decision: &Decision) -> DraftPlanRecord {
    DraftPlanRecord {
        drafts: planned.drafts.clone(),
        predicted_quality: planned.predicted_quality.clone(),
        threshold: planned.threshold,
        escalation: decision
            .candidates
            .iter()
            .filter(|c| c.exclusion.is_none())
            .map(|c| c.model.clone())
            .collect(),
    }
}

/// The plan of the serving policy's acceptor that drafts with `planned`'s models: the policy
/// may have been reloaded since the request was routed, and a plan it no longer has cannot be
/// judged.
pub fn serving_plan<'p>(policy: &'p Policy, planned: &PlannedRequest) -> Option<&'p DraftPlan> {
    policy
        .file()
        .acceptor
        .as_ref()?
        .plans
        .iter()
        .find(|p| p.drafts == planned.plan.drafts)
}

/// The verdict as the log keeps it: each draft's evidence (not its text) in the plan's order.
pub fn verification_record(
    request_id: &str,
    planned: &DraftPlanRecord,
    verdict: &Verification,
    api_key: Option<&str>,
) -> VerificationRecord {
    let logged = planned
        .drafts
        .iter()
        .zip(&verdict.drafts)
        .map(|(model, evidence)| logged_draft(model, evidence))
        .collect();
    VerificationRecord {
        request_id: request_id.to_owned(),
        time_ms: crate::feedback::now_ms(),
        drafts: logged,
        evidence: verdict.evidence.clone(),
        probability: verdict.probability,
        threshold: verdict.threshold,
        escalated_to: match verdict.accepted {
            Some(_) => None,
            None => planned.escalation.first().cloned(),
        },
        accepted: verdict.accepted.clone(),
        api_key: api_key.map(str::to_owned),
    }
}

fn logged_draft(model: &str, e: &DraftEvidence) -> LoggedDraft {
    LoggedDraft {
        model: model.to_owned(),
        answer: e.answer.clone(),
        form: e.form.map(|f| f.name().to_owned()),
        chars: e.chars as u64,
        refuses: e.refuses,
        hedges: e.hedges,
    }
}
