//! Cost of everything in `Route` after the encoder: features, the policy's predictions for
//! twelve models, and the decision. Prints criterion's per-iteration time.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use triage_core::features::{PromptStats, features};
use triage_core::{Conversation, Mode, Preferences, Settings};
use triage_policy::{Policy, Prediction, decide};

fn bench(c: &mut Criterion) {
    let root = triage_benches::root();
    let settings = Settings::load(None).expect("settings");
    let catalog = settings.catalog().expect("catalog");
    let policy = Policy::load(&root.join(&settings.policy.path)).expect("policy");
    let conversation = Conversation::single_user(&triage_benches::prompt_of(64)).expect("prompt");
    // A fixed unit vector stands in for the embedding: the cost below does not depend on it.
    let dim = policy.file().embedding_dim;
    let embedding = vec![1.0 / (dim as f32).sqrt(); dim];
    let prefs = Preferences {
        mode: Mode::Balanced,
        ..Default::default()
    };

    c.bench_function("features+predict+decide (12 models)", |b| {
        b.iter(|| {
            let stats = PromptStats::new(black_box(&conversation), 64);
            let x = features(&stats, black_box(&embedding));
            let predictions: HashMap<&str, Prediction> =
                policy.predict(&x).expect("predict").into_iter().collect();
            decide(
                &catalog,
                &predictions,
                policy.decision(),
                &prefs,
                stats.input_tokens,
            )
            .expect("decision")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
