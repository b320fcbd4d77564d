//! What each part of a policy adds: the evaluated policy again with its neighbourhood, its
//! shared classifier, or both taken out, each swept over λ like "triage, λ sweep only".
//!
//! Training measures each part on dev when it chooses the blend; these rows measure the same on
//! the evaluated split and, under `--folds`, with their spread. The set of rows is fixed, so
//! folds whose policies chose different parts still line up: where a policy lacks a part, the
//! row without it is the policy itself.

use triage_policy::PolicyFile;

/// The policy's per-model heads alone: no neighbourhood, no shared classifier.
pub const HEADS_ONLY: &str = "ablation: heads only";
/// The policy without its neighbourhood.
pub const NO_NEIGHBOURHOOD: &str = "ablation: no neighbourhood";
/// The policy without its shared classifier.
pub const NO_SHARED: &str = "ablation: no shared classifier";
/// The policy trusting every prediction, however unfamiliar the prompt.
pub const NO_TRUST_CURVE: &str = "ablation: no trust curve";

/// The policy's ablated forms, named and ordered as in the report.
pub fn variants(file: &PolicyFile) -> Vec<(&'static str, PolicyFile)> {
    let keeping = |neighbours: bool, shared: bool| {
        let mut f = file.clone();
        if !neighbours {
            // A policy with a familiarity measure keeps the training prompts to measure it
            // with, blended in at weight 0.
            match (&mut f.neighbours, &f.familiarity) {
                (Some(set), Some(_)) => {
                    set.weight = 0.0;
                    set.length_weight = 0.0;
                }
                _ => f.neighbours = None,
            }
        }
        if !shared {
            f.shared = None;
        }
        f
    };
    vec![
        (HEADS_ONLY, keeping(false, false)),
        (NO_NEIGHBOURHOOD, keeping(false, true)),
        (NO_SHARED, keeping(true, false)),
        (NO_TRUST_CURVE, {
            let mut f = file.clone();
            if let Some(familiarity) = &mut f.familiarity {
                familiarity.curve = None;
            }
            f
        }),
    ]
}
