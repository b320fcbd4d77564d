//! The decision rule: constraints, modes, cost weight, ties and the nothing-eligible answer.

use std::collections::HashMap;

use triage_core::catalog::{Capability, Catalog, LatencyProfile, ModelSpec};
use triage_core::request::{Mode, Preferences};
use triage_policy::{DecisionParams, Exclusion, Prediction, Rule, decide};

fn model(name: &str, in_price: f64, out_price: f64, caps: &[Capability]) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        provider: "test".into(),
        input_usd_per_1m: in_price,
        output_usd_per_1m: out_price,
        context_window: 10_000,
        capabilities: caps.to_vec(),
        enabled: true,
        latency: LatencyProfile {
            first_token_ms: 100.0,
            output_tokens_per_s: 100.0,
        },
        prior_from: None,
        prior_offset: 0.0,
        upstream_model: None,
        reasoning: false,
        cached_input_usd_per_1m: None,
        cache_write_usd_per_1m: None,
    }
}

/// strong: q .90, $$$; mid: q .88, $$; weak: q .70, $.
fn setup() -> (Catalog, HashMap<&'static str, Prediction>) {
    let catalog = Catalog::new(vec![
        model(
            "strong",
            10.0,
            30.0,
            &[Capability::Vision, Capability::Tools],
        ),
        model("mid", 1.0, 3.0, &[Capability::Tools]),
        model("weak", 0.1, 0.3, &[]),
    ])
    .expect("catalog");
    let p = |quality| Prediction {
        quality,
        output_tokens: 100.0,
    };
    let predictions = HashMap::from([("strong", p(0.90)), ("mid", p(0.88)), ("weak", p(0.70))]);
    (catalog, predictions)
}

const PARAMS: DecisionParams = DecisionParams {
    balanced_margin: 0.03,
    cost_margin: 0.25,
};

fn order(prefs: &Preferences) -> Vec<String> {
    let (catalog, predictions) = setup();
    let d = decide(&catalog, &predictions, &PARAMS, prefs, 1000).expect("decision");
    d.candidates.into_iter().map(|c| c.model).collect()
}

#[test]
fn modes_trade_quality_for_cost_as_documented() {
    let mode = |mode| Preferences {
        mode,
        ..Default::default()
    };
    assert_eq!(order(&mode(Mode::Quality)), ["strong", "mid", "weak"]);
    assert_eq!(order(&mode(Mode::Balanced)), ["mid", "strong", "weak"]);
    assert_eq!(order(&mode(Mode::Cost)), ["weak", "mid", "strong"]);
}

#[test]
fn cost_weight_maximises_quality_minus_lambda_cost() {
    // Costs at 1000 in + 100 out tokens: strong .013, mid .0013, weak .00013.
    let with = |lambda| Preferences {
        cost_weight: Some(lambda),
        ..Default::default()
    };
    assert_eq!(order(&with(0.0))[0], "strong");
    assert_eq!(order(&with(10.0))[0], "mid");
    assert_eq!(order(&with(1000.0))[0], "weak");
    let (catalog, predictions) = setup();
    let d = decide(&catalog, &predictions, &PARAMS, &with(10.0), 1000).expect("decision");
    assert_eq!(d.rule, Rule::CostWeight(10.0));
}

#[test]
fn each_constraint_excludes_with_its_reason() {
    let (catalog, predictions) = setup();
    let run = |prefs: Preferences| decide(&catalog, &predictions, &PARAMS, &prefs, 1000);
    let reason = |d: &triage_policy::Decision, m: &str| {
        d.candidates
            .iter()
            .find(|c| c.model == m)
            .and_then(|c| c.exclusion.clone())
    };

    let d = run(Preferences {
        allowed_models: vec!["weak".into()],
        ..Default::default()
    })
    .expect("decision");
    assert_eq!(d.chosen().model, "weak");
    assert_eq!(reason(&d, "strong"), Some(Exclusion::NotAllowed));

    let d = run(Preferences {
        required_capabilities: vec![Capability::Vision],
        ..Default::default()
    })
    .expect("decision");
    assert_eq!(d.chosen().model, "strong");
    assert_eq!(
        reason(&d, "weak"),
        Some(Exclusion::MissingCapability(Capability::Vision))
    );

    let d = run(Preferences {
        max_cost_usd: Some(0.001),
        ..Default::default()
    })
    .expect("decision");
    assert_eq!(d.chosen().model, "weak");
    assert!(matches!(
        reason(&d, "mid"),
        Some(Exclusion::OverBudget { .. })
    ));

    let d = run(Preferences {
        min_context_tokens: Some(20_000),
        ..Default::default()
    });
    let err = d.expect_err("no model has 20k context");
    assert!(
        err.summary.contains("context window below 20000 tokens"),
        "{}",
        err.summary
    );

    // 100 ms first token + 100 tokens at 100 tok/s = 1100 ms for every model.
    let err = run(Preferences {
        max_latency_ms: Some(1000),
        ..Default::default()
    })
    .expect_err("all too slow");
    assert!(
        err.summary.contains("max_latency_ms 1000"),
        "{}",
        err.summary
    );

    // The caller's own length estimate replaces the prediction, for cost and latency.
    let d = run(Preferences {
        expected_output_tokens: Some(10),
        max_latency_ms: Some(1000),
        ..Default::default()
    })
    .expect("short answers are fast enough");
    assert!((d.chosen().output_tokens - 10.0).abs() < 1e-9);
}

#[test]
fn nothing_eligible_names_every_constraint_and_model() {
    let (catalog, predictions) = setup();
    let prefs = Preferences {
        allowed_models: vec!["strong".into(), "weak".into()],
        required_capabilities: vec![Capability::Tools],
        max_cost_usd: Some(0.0001),
        ..Default::default()
    };
    let err = decide(&catalog, &predictions, &PARAMS, &prefs, 1000).expect_err("none eligible");
    assert_eq!(err.exclusions.len(), 3);
    let s = &err.summary;
    assert!(s.contains("excluded by allowed_models: mid"), "{s}");
    assert!(
        s.contains("required_capabilities (tools missing): weak"),
        "{s}"
    );
    assert!(s.contains("over max_cost_usd $0.0001: strong"), "{s}");
}

#[test]
fn ties_break_on_lower_cost_then_name() {
    let catalog = Catalog::new(vec![
        model("b-cheap", 1.0, 1.0, &[]),
        model("a-cheap", 1.0, 1.0, &[]),
        model("pricey", 5.0, 5.0, &[]),
    ])
    .expect("catalog");
    let p = Prediction {
        quality: 0.8,
        output_tokens: 50.0,
    };
    let predictions = HashMap::from([("b-cheap", p), ("a-cheap", p), ("pricey", p)]);
    for mode in [Mode::Quality, Mode::Balanced, Mode::Cost] {
        let prefs = Preferences {
            mode,
            ..Default::default()
        };
        let d = decide(&catalog, &predictions, &PARAMS, &prefs, 100).expect("decision");
        let names: Vec<_> = d.candidates.iter().map(|c| c.model.as_str()).collect();
        assert_eq!(names, ["a-cheap", "b-cheap", "pricey"], "{mode}");
    }
}

#[test]
fn disabled_and_unscored_models_are_listed_but_never_chosen() {
    let mut off = model("off", 0.0, 0.0, &[]);
    off.enabled = false;
    let catalog = Catalog::new(vec![
        off,
        model("new", 0.0, 0.0, &[]),
        model("known", 1.0, 1.0, &[]),
    ])
    .expect("catalog");
    let p = Prediction {
        quality: 0.5,
        output_tokens: 10.0,
    };
    let predictions = HashMap::from([("off", p), ("known", p)]);
    let d = decide(&catalog, &predictions, &PARAMS, &Preferences::default(), 10).expect("decision");
    assert_eq!(d.chosen().model, "known");
    assert_eq!(d.candidates.len(), 3);
    let reasons: Vec<_> = d.candidates[1..]
        .iter()
        .filter_map(|c| c.exclusion.clone())
        .collect();
    assert!(reasons.contains(&Exclusion::Disabled));
    assert!(reasons.contains(&Exclusion::NotInPolicy));
}

#[test]
fn nothing_eligible_never_names_the_models_a_key_may_not_use() {
    let (catalog, predictions) = setup();
    let prefs = Preferences {
        allowed_models: vec!["weak".into()],
        ..Preferences::default()
    };
    let not_permitted = |m: &str| (m != "weak").then(|| "team".to_owned());
    let down = |m: &str| (m == "weak").then(|| "marked down".to_owned());
    let error = triage_policy::decide_with(
        &catalog,
        &predictions,
        &PARAMS,
        &prefs,
        1000,
        triage_policy::Availability {
            not_permitted: &not_permitted,
            down: &down,
        },
    )
    .expect_err("nothing eligible");
    let said = error.to_string();
    assert!(said.contains("weak"), "{said}");
    assert!(
        said.contains("2 more not permitted for API key \"team\""),
        "{said}"
    );
    assert!(!said.contains("strong") && !said.contains("mid"), "{said}");
}
