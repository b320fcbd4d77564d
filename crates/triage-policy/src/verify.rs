//! Judging drafts a caller hands back: the one decision both front doors will make when a
//! request runs verify-then-escalate (the gateway's `triage-verify`, gRPC `Verify`).
//!
//! The drafts must be exactly the plan's models, each once, each with a non-empty answer of
//! bounded size: anything else is the caller's mistake and gets a [`VerifyError`] that says
//! which draft and why, never a guess. The evidence vector is returned with the verdict so the
//! decision log can keep it and retraining can learn from it.

use triage_core::request::clip;

use crate::acceptor::{
    DraftEvidence, DraftPlan, evidence_features, head_probability, returned_draft,
};

/// Longest draft judged, in characters. Reading a draft is linear in its length, but a caller
/// holding a valid key should not make the router lower-case megabytes per request.
pub const MAX_DRAFT_CHARS: usize = 200_000;

/// One draft as the caller hands it back.
#[derive(Clone, Copy, Debug)]
pub struct DraftAnswer<'a> {
    /// The model that wrote it.
    pub model: &'a str,
    /// Its answer text.
    pub text: &'a str,
}

/// What the acceptor decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// The draft model whose answer to return, or `None` to escalate.
    pub accepted: Option<String>,
    /// The acceptor's probability that the returned draft is a good answer.
    pub probability: f64,
    /// The threshold it was held to.
    pub threshold: f64,
    /// The evidence vector the head saw, for the decision log.
    pub evidence: Vec<f64>,
    /// What each draft offered, in the plan's order (what retraining reads from the log).
    pub drafts: Vec<DraftEvidence>,
}

/// Why drafts cannot be judged.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// Not one draft per planned model.
    #[error(
        "the plan has {planned} drafts ({plan}); {given} were given: send one per planned model"
    )]
    WrongCount {
        /// How many the plan has.
        planned: usize,
        /// The planned models, comma-separated.
        plan: String,
        /// How many were given.
        given: usize,
    },
    /// A draft from a model the plan did not ask for.
    #[error("draft {index}: {model:?} is not in this request's plan ({plan})")]
    NotInPlan {
        /// Position in the request.
        index: usize,
        /// The model named.
        model: String,
        /// The planned models.
        plan: String,
    },
    /// The same model twice.
    #[error("draft {index}: {model:?} was already given")]
    Repeated {
        /// Position in the request.
        index: usize,
        /// The model named.
        model: String,
    },
    /// Nothing to judge.
    #[error("draft {index} ({model}): the response is empty; send the model's answer text")]
    Empty {
        /// Position in the request.
        index: usize,
        /// The model.
        model: String,
    },
    /// Too long to judge.
    #[error(
        "draft {index} ({model}): the response has {chars} characters, more than the {max} \
         judged; send the answer itself"
    )]
    TooLong {
        /// Position in the request.
        index: usize,
        /// The model.
        model: String,
        /// Its length (counted up to just past the limit).
        chars: usize,
        /// [`MAX_DRAFT_CHARS`].
        max: usize,
    },
}

/// Judges `drafts` under `plan` at `threshold` (model names in errors are clipped: they echo
/// caller input); `predicted_quality` gives the routing policy's
/// probability of a good answer per draft model on this prompt (from the decision).
pub fn verify(
    plan: &DraftPlan,
    threshold: f64,
    predicted_quality: impl Fn(&str) -> f64,
    drafts: &[DraftAnswer<'_>],
) -> Result<Verification, VerifyError> {
    let planned = plan.drafts.join(", ");
    if drafts.len() != plan.drafts.len() {
        return Err(VerifyError::WrongCount {
            planned: plan.drafts.len(),
            plan: planned,
            given: drafts.len(),
        });
    }
    // In the plan's order, which is the order the acceptor was trained on.
    let mut ordered: Vec<Option<DraftEvidence>> = vec![None; plan.drafts.len()];
    for (index, d) in drafts.iter().enumerate() {
        let slot = plan
            .drafts
            .iter()
            .position(|m| m == d.model)
            .ok_or_else(|| VerifyError::NotInPlan {
                index,
                model: clip(d.model).into_owned(),
                plan: planned.clone(),
            })?;
        if ordered[slot].is_some() {
            return Err(VerifyError::Repeated {
                index,
                model: clip(d.model).into_owned(),
            });
        }
        let chars = d.text.chars().take(MAX_DRAFT_CHARS + 1).count();
        if chars > MAX_DRAFT_CHARS {
            return Err(VerifyError::TooLong {
                index,
                model: clip(d.model).into_owned(),
                chars,
                max: MAX_DRAFT_CHARS,
            });
        }
        if d.text.trim().is_empty() {
            return Err(VerifyError::Empty {
                index,
                model: clip(d.model).into_owned(),
            });
        }
        ordered[slot] = Some(DraftEvidence::read(d.text, predicted_quality(d.model)));
    }
    let evidence: Vec<DraftEvidence> = ordered.into_iter().flatten().collect();
    let features = evidence_features(&evidence);
    let probability = head_probability(&plan.head, &features);
    let accepted =
        (probability >= threshold).then(|| plan.drafts[returned_draft(&evidence)].clone());
    Ok(Verification {
        accepted,
        probability,
        threshold,
        evidence: features,
        drafts: evidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acceptor::evidence_len;
    use crate::file::LinearHead;

    /// A plan of two drafts whose head trusts agreement and nothing else.
    fn pair() -> DraftPlan {
        let n = evidence_len(2);
        let mut weights = vec![0.0; n];
        weights[n - 1] = 6.0;
        DraftPlan {
            drafts: vec!["cheap-a".into(), "cheap-b".into()],
            head: LinearHead {
                weights,
                bias: -3.0,
            },
        }
    }

    fn quality(model: &str) -> f64 {
        if model == "cheap-b" { 0.7 } else { 0.6 }
    }

    fn draft<'a>(model: &'a str, text: &'a str) -> DraftAnswer<'a> {
        DraftAnswer { model, text }
    }

    #[test]
    fn agreeing_drafts_are_accepted_and_disagreeing_ones_escalate() {
        let plan = pair();
        let agree = [
            draft("cheap-b", "So 6 * 7 = 42.\nThe answer is 42."),
            draft("cheap-a", "\"answer\": \"42\""),
        ];
        let v = verify(&plan, 0.5, quality, &agree).expect("judged");
        // cheap-b is rated higher, so its answer is returned, whatever the order given.
        assert_eq!(v.accepted.as_deref(), Some("cheap-b"));
        assert!(v.probability > 0.9, "{v:?}");
        assert_eq!(v.evidence.len(), evidence_len(2));
        let differ = [
            draft("cheap-a", "The answer is 41."),
            draft("cheap-b", "The answer is 42."),
        ];
        let v = verify(&plan, 0.5, quality, &differ).expect("judged");
        assert_eq!(v.accepted, None);
        assert!(v.probability < 0.1, "{v:?}");
    }

    #[test]
    fn bad_drafts_are_refused_with_what_is_wrong() {
        let plan = pair();
        let ok = draft("cheap-a", "42");
        let huge = "9".repeat(MAX_DRAFT_CHARS + 10);
        let cases: [(Vec<DraftAnswer<'_>>, &str); 5] = [
            (vec![ok], "2 drafts"),
            (
                vec![ok, draft("dear-model", "42")],
                "\"dear-model\" is not in this request's plan",
            ),
            (vec![ok, draft("cheap-a", "42")], "already given"),
            (vec![ok, draft("cheap-b", "  \n")], "the response is empty"),
            (
                vec![ok, draft("cheap-b", &huge)],
                "more than the 200000 judged",
            ),
        ];
        for (drafts, expected) in cases {
            let err = verify(&plan, 0.5, quality, &drafts)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
