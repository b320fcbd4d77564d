//! Property tests over everything caller input reaches before the encoder: conversation
//! validation, preference validation, encoder token selection and feature extraction. None may
//! panic; accepted input must give finite features of the schema's width.
//!
//! `PROPTEST_CASES=N cargo test -p triage-core --test properties` runs a longer campaign.

use proptest::prelude::*;
use triage_core::features::{PromptStats, feature_dim, features, select_encoder_tokens};
use triage_core::request::RequestLimits;
use triage_core::{Conversation, EncoderInput, Mode, Preferences, Settings};

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user".to_owned()),
        Just("assistant".to_owned()),
        Just("system".to_owned()),
        Just("tool".to_owned()),
        ".{0,8}",
    ]
}

fn content() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        "[ \t\n]{0,20}",
        "(```[a-z]{0,5}\n.{0,40}\n```|\\$[^$]{0,20}\\$|step [0-9]+|def [a-z]+\\(\\):){1,6}",
        proptest::collection::vec(any::<char>(), 0..300).prop_map(|c| c.into_iter().collect()),
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        any::<f64>(),
        0.0..10.0f64,
    ]
}

proptest! {
    #[test]
    fn conversations_validate_or_refuse_without_panicking(
        turns in proptest::collection::vec((role(), content()), 0..12),
        max_messages in 1usize..16,
        max_text_bytes in 1usize..4000,
        text_tokens in 0u32..100_000,
        embedding in proptest::collection::vec(-1.0f32..1.0, 384),
    ) {
        let limits = RequestLimits { max_messages, max_text_bytes };
        let wire = turns.iter().map(|(r, c)| (r.as_str(), c.as_str()));
        match Conversation::from_wire(wire, limits) {
            Ok(conversation) => {
                prop_assert!(conversation.messages().len() <= max_messages);
                let input = EncoderInput::from_conversation(&conversation);
                prop_assert!(!input.primary.trim().is_empty());
                let stats = PromptStats::new(&conversation, text_tokens);
                let x = features(&stats, &embedding);
                prop_assert_eq!(x.len(), feature_dim(embedding.len()));
                prop_assert!(x.iter().all(|v| v.is_finite()));
            }
            Err(e) => prop_assert!(!e.field.is_empty() && !e.problem.is_empty()),
        }
    }

    #[test]
    fn preferences_are_accepted_only_when_sane(
        cost_weight in proptest::option::of(number()),
        max_cost_usd in proptest::option::of(number()),
        allowed in proptest::collection::vec(prop_oneof![
            Just("gpt-4o-mini-2024-07-18".to_owned()),
            ".{0,12}",
        ], 0..3),
        mode in prop_oneof![Just(Mode::Quality), Just(Mode::Balanced), Just(Mode::Cost)],
    ) {
        let catalog = Settings::load(None).expect("defaults").catalog().expect("catalog");
        let prefs = Preferences {
            mode,
            cost_weight,
            max_cost_usd,
            allowed_models: allowed.clone(),
            ..Default::default()
        };
        if prefs.validate(&catalog, "preferences.").is_ok() {
            prop_assert!(cost_weight.is_none_or(|w| w.is_finite() && w >= 0.0));
            prop_assert!(max_cost_usd.is_none_or(|m| m.is_finite() && m >= 0.0));
            prop_assert!(allowed.iter().all(|m| catalog.get(m).is_some()));
        }
    }

    #[test]
    fn encoder_token_selection_respects_the_budget(
        primary in proptest::collection::vec(any::<u32>(), 0..2000),
        context in proptest::collection::vec(any::<u32>(), 0..2000),
        budget in 0usize..600,
    ) {
        let picked = select_encoder_tokens(&primary, &context, budget);
        prop_assert!(picked.len() <= budget);
        prop_assert!(picked.len() >= budget.min(primary.len()));
    }
}
