//! `Route` against a real server on port 0: happy path, modes, every constraint.

mod common;

use common::{FRANCE, PROOF, request, start};
use tonic::Code;
use triage_proto::v1::{Capability, ExclusionReason, Mode, Preferences};

fn balanced() -> Preferences {
    Preferences {
        mode: Mode::Balanced as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn easy_and_hard_prompts_get_different_models_with_full_ranked_lists() {
    let (server, mut client) = start().await;
    let easy = client
        .route(request(FRANCE, balanced()))
        .await
        .expect("route")
        .into_inner();
    let hard = client
        .route(request(PROOF, balanced()))
        .await
        .expect("route")
        .into_inner();
    assert_ne!(
        easy.model, hard.model,
        "easy and hard prompts should not share a model"
    );
    for r in [&easy, &hard] {
        assert_eq!(r.candidates.len(), 12, "every catalog model is listed");
        assert_eq!(r.candidates[0].model, r.model, "the winner is ranked first");
        assert!(!r.request_id.is_empty());
        assert!(!r.policy_version.is_empty());
        assert!(
            r.candidates
                .iter()
                .all(|c| c.eligible && c.reason.is_empty())
        );
        assert!(
            r.candidates
                .iter()
                .all(|c| (0.0..=1.0).contains(&c.predicted_quality))
        );
        assert!(r.candidates.iter().all(|c| c.predicted_cost_usd > 0.0));
        assert!(r.timings.is_some_and(|t| t.encoder_us > 0));
    }
    assert_ne!(easy.request_id, hard.request_id);
    // The hard prompt is predicted harder for the model the easy one got.
    let q = |r: &triage_proto::v1::RouteResponse, m: &str| {
        r.candidates
            .iter()
            .find(|c| c.model == m)
            .map(|c| c.predicted_quality)
            .unwrap_or(0.0)
    };
    assert!(q(&hard, &easy.model) < q(&easy, &easy.model));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn quality_mode_picks_the_top_prediction_and_cost_mode_is_no_dearer_than_balanced() {
    let (_server, mut client) = start().await;
    let with_mode = |m: Mode| Preferences {
        mode: m as i32,
        ..Default::default()
    };
    let quality = client
        .route(request(PROOF, with_mode(Mode::Quality)))
        .await
        .expect("q")
        .into_inner();
    let best = quality
        .candidates
        .iter()
        .map(|c| c.predicted_quality)
        .fold(0.0, f64::max);
    assert_eq!(quality.candidates[0].predicted_quality, best);
    let balanced = client
        .route(request(PROOF, with_mode(Mode::Balanced)))
        .await
        .expect("b")
        .into_inner();
    let cost = client
        .route(request(PROOF, with_mode(Mode::Cost)))
        .await
        .expect("c")
        .into_inner();
    assert!(cost.candidates[0].predicted_cost_usd <= balanced.candidates[0].predicted_cost_usd);
    assert!(balanced.candidates[0].predicted_cost_usd <= quality.candidates[0].predicted_cost_usd);
    // Unspecified mode means balanced.
    let unspecified = client
        .route(request(PROOF, Preferences::default()))
        .await
        .expect("u")
        .into_inner();
    assert_eq!(unspecified.model, balanced.model);
}

#[tokio::test]
async fn cost_weight_moves_from_best_to_cheapest() {
    let (_server, mut client) = start().await;
    let lam = |w: f64| Preferences {
        cost_weight: Some(w),
        ..Default::default()
    };
    let free = client
        .route(request(PROOF, lam(0.0)))
        .await
        .expect("route")
        .into_inner();
    let best = free
        .candidates
        .iter()
        .map(|c| c.predicted_quality)
        .fold(0.0, f64::max);
    assert_eq!(free.candidates[0].predicted_quality, best);
    let stingy = client
        .route(request(PROOF, lam(1e9)))
        .await
        .expect("route")
        .into_inner();
    let cheapest = stingy
        .candidates
        .iter()
        .map(|c| c.predicted_cost_usd)
        .fold(f64::MAX, f64::min);
    assert_eq!(stingy.candidates[0].predicted_cost_usd, cheapest);
}

#[tokio::test]
async fn every_constraint_excludes_with_its_reason() {
    let (_server, mut client) = start().await;
    let reason_of = |r: &triage_proto::v1::RouteResponse, m: &str| {
        r.candidates
            .iter()
            .find(|c| c.model == m)
            .map(|c| (c.eligible, c.exclusion, c.reason.clone()))
    };

    let allowed = Preferences {
        allowed_models: vec![
            "gpt-4o-mini-2024-07-18".into(),
            "claude-3-haiku-20240307".into(),
        ],
        ..Default::default()
    };
    let r = client
        .route(request(PROOF, allowed))
        .await
        .expect("route")
        .into_inner();
    assert!(["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"].contains(&r.model.as_str()));
    let (eligible, why, text) = reason_of(&r, "gpt-4o-2024-08-06").expect("listed");
    assert!(!eligible);
    assert_eq!(why, ExclusionReason::NotAllowed as i32);
    assert_eq!(text, "not in allowed_models");
    assert_eq!(r.candidates.iter().filter(|c| c.eligible).count(), 2);
    assert!(
        r.candidates[..2].iter().all(|c| c.eligible),
        "eligible ranked before excluded"
    );

    let vision = Preferences {
        required_capabilities: vec![Capability::Vision as i32],
        ..Default::default()
    };
    let r = client
        .route(request(FRANCE, vision))
        .await
        .expect("route")
        .into_inner();
    let (_, why, text) = reason_of(&r, "Meta-Llama-3.1-8B-Instruct").expect("listed");
    assert_eq!(why, ExclusionReason::MissingCapability as i32);
    assert_eq!(text, "lacks capability vision");
    assert!(reason_of(&r, &r.model).is_some_and(|(e, _, _)| e));

    let context = Preferences {
        min_context_tokens: Some(150_000),
        ..Default::default()
    };
    let r = client
        .route(request(FRANCE, context))
        .await
        .expect("route")
        .into_inner();
    let (_, why, _) = reason_of(&r, "gpt-4o-2024-08-06").expect("listed");
    assert_eq!(why, ExclusionReason::ContextTooSmall as i32);
    assert!(reason_of(&r, "claude-3-haiku-20240307").is_some_and(|(e, _, _)| e));

    let budget = Preferences {
        max_cost_usd: Some(0.0005),
        ..Default::default()
    };
    let r = client
        .route(request(PROOF, budget))
        .await
        .expect("route")
        .into_inner();
    assert!(r.candidates[0].predicted_cost_usd <= 0.0005);
    let (_, why, text) = reason_of(&r, "claude-3-5-sonnet-20241022").expect("listed");
    assert_eq!(why, ExclusionReason::OverBudget as i32);
    assert!(text.starts_with("over budget"), "{text}");

    let fast = Preferences {
        max_latency_ms: Some(3000),
        expected_output_tokens: Some(300),
        ..Default::default()
    };
    let r = client
        .route(request(FRANCE, fast))
        .await
        .expect("route")
        .into_inner();
    let (_, why, _) = reason_of(&r, "deepseek-v2.5-0908").expect("listed");
    assert_eq!(
        why,
        ExclusionReason::TooSlow as i32,
        "20 tok/s cannot write 300 tokens in 3 s"
    );
    assert!(
        r.candidates
            .iter()
            .all(|c| c.predicted_output_tokens == 300)
    );
}

#[tokio::test]
async fn nothing_eligible_is_failed_precondition_naming_the_constraints() {
    let (_server, mut client) = start().await;
    let impossible = Preferences {
        allowed_models: vec![
            "Meta-Llama-3.1-8B-Instruct".into(),
            "gpt-4o-2024-08-06".into(),
        ],
        required_capabilities: vec![Capability::Vision as i32],
        max_cost_usd: Some(1e-9),
        ..Default::default()
    };
    let status = client
        .route(request(FRANCE, impossible))
        .await
        .expect_err("no model fits");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let msg = status.message();
    assert!(msg.contains("allowed_models"), "{msg}");
    assert!(
        msg.contains("vision missing): Meta-Llama-3.1-8B-Instruct"),
        "{msg}"
    );
    assert!(msg.contains("over max_cost_usd"), "{msg}");
}
