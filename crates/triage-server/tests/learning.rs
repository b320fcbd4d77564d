//! Learning while serving, against the real server: hot policy reload, exploration within the
//! constraints, corrections from feedback, and priors for new models.

mod common;

use std::time::Duration;

use common::{FRANCE, PROOF, request, root, settings, start_with};
use triage_core::Settings;
use triage_proto::v1::{ErrorKind, FeedbackRequest, Preferences};

fn bundled_policy() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("models/policy.json")).expect("bundled policy");
    serde_json::from_str(&text).expect("policy json")
}

/// Writes `value` to `path` the way `triage train` does: temporary file, then rename.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn a_new_policy_file_is_served_without_restart_and_a_bad_one_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.json");
    let mut policy = bundled_policy();
    replace(&path, &serde_json::to_vec(&policy).expect("json"));
    let mut s: Settings = settings();
    s.policy.path = path.clone();
    s.policy.reload_interval_ms = 50;
    let (server, client) = start_with(s).await;

    // Traffic keeps flowing through every swap.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let mut client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut versions = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .route(request(FRANCE, Preferences::default()))
                    .await
                    .expect("no request fails during reloads");
                versions.push(r.into_inner().policy_version);
            }
            versions
        })
    };
    let version_now = |mut client: triage_proto::v1::router_client::RouterClient<_>| async move {
        client
            .route(request(FRANCE, Preferences::default()))
            .await
            .expect("routes")
            .into_inner()
            .policy_version
    };
    let original = version_now(client.clone()).await;

    // Garbage, then a policy for a wider encoder: both rejected, the old one keeps serving.
    replace(&path, b"{\"format\": \"triage-policy\", \"trunc");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version_now(client.clone()).await, original);
    let mut wrong = policy.clone();
    wrong["embedding_dim"] = serde_json::json!(768);
    replace(&path, &serde_json::to_vec(&wrong).expect("json"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version_now(client.clone()).await, original);

    policy["version"] = serde_json::json!("hot-swapped-2");
    replace(&path, &serde_json::to_vec(&policy).expect("json"));
    let mut swapped = false;
    for _ in 0..100 {
        if version_now(client.clone()).await == "hot-swapped-2" {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "the new policy was never served");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let versions = traffic.await.expect("traffic task");
    assert!(versions.len() > 3);
    assert!(
        versions
            .iter()
            .all(|v| *v == original || v == "hot-swapped-2")
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn exploration_reports_propensities_and_never_breaks_a_constraint() {
    let mut s = settings();
    s.exploration.rate = 0.5;
    let (server, mut client) = start_with(s).await;
    let budget = Preferences {
        max_cost_usd: Some(0.0005),
        ..Default::default()
    };
    let (mut explored, mut models) = (0, std::collections::BTreeSet::new());
    let mut eligible = 0;
    for _ in 0..60 {
        let r = client
            .route(request(PROOF, budget.clone()))
            .await
            .expect("routes")
            .into_inner();
        let chosen = r
            .candidates
            .iter()
            .find(|c| c.model == r.model)
            .expect("chosen is a candidate");
        assert!(chosen.eligible, "explored into an excluded model: {r:?}");
        assert!(chosen.predicted_cost_usd <= 0.0005);
        assert!(r.propensity > 0.0 && r.propensity <= 1.0);
        if r.explored {
            explored += 1;
            assert!(r.explanation.starts_with("exploring"), "{}", r.explanation);
        } else {
            assert!(r.propensity >= 0.5);
        }
        eligible = r.candidates.iter().filter(|c| c.eligible).count();
        models.insert(r.model);
    }
    // 60 draws at rate 0.5: fewer than 15 explorations has probability below 1e-4.
    assert!(explored >= 15, "{explored}");
    assert!(eligible >= 2);
    assert!(
        models.len() >= eligible.min(3),
        "{models:?} of {eligible} eligible"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_feedback_moves_traffic_away_from_a_degraded_model() {
    let mut s = settings();
    s.exploration.learning_rate = 0.5;
    let (server, mut client) = start_with(s.clone()).await;
    let first = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner()
        .model;
    let mut moved_after = None;
    for i in 0..60 {
        let r = client
            .route(request(FRANCE, Preferences::default()))
            .await
            .expect("routes")
            .into_inner();
        if r.model != first {
            moved_after = Some(i);
            break;
        }
        client
            .feedback(FeedbackRequest {
                request_id: r.request_id,
                feedback_id: format!("drift-{i}"),
                model: r.model,
                quality: Some(0.0),
                error: ErrorKind::ErrorUnspecified as i32,
                ..Default::default()
            })
            .await
            .expect("stored");
    }
    let moved_after = moved_after.expect("traffic never left the failing model");
    assert!(moved_after >= 1, "moved before any feedback");
    let predicted = |r: &triage_proto::v1::RouteResponse| -> f64 {
        r.candidates
            .iter()
            .find(|c| c.model == first)
            .map(|c| c.predicted_quality)
            .expect("the degraded model is still a candidate")
    };
    let before = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    server.shutdown().await.expect("clean shutdown");

    // A restart on the same log replays the corrections: the model stays avoided.
    let (server, mut client) = start_with(s).await;
    let after = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_ne!(after.model, first, "the restart forgot the correction");
    assert!(
        (predicted(&after) - predicted(&before)).abs() < 1e-9,
        "corrected prediction {} after restart, {} before",
        predicted(&after),
        predicted(&before)
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_new_catalog_model_borrows_a_prior_and_is_routable() {
    let mut s = settings();
    let mut newcomer = s
        .models
        .iter()
        .find(|m| m.name == "gpt-4o-mini-2024-07-18")
        .expect("listed")
        .clone();
    newcomer.name = "gpt-4o-mini-next".into();
    newcomer.input_usd_per_1m /= 2.0;
    newcomer.output_usd_per_1m /= 2.0;
    newcomer.prior_from = Some("gpt-4o-mini-2024-07-18".into());
    newcomer.prior_offset = 0.0;
    s.models.push(newcomer);
    let (server, mut client) = start_with(s).await;
    let r = client
        .route(request(
            FRANCE,
            Preferences {
                mode: triage_proto::v1::Mode::Quality as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("routes")
        .into_inner();
    let quality = |name: &str| {
        r.candidates
            .iter()
            .find(|c| c.model == name)
            .map(|c| (c.eligible, c.predicted_quality))
            .expect("listed")
    };
    let (eligible, q_new) = quality("gpt-4o-mini-next");
    let (_, q_source) = quality("gpt-4o-mini-2024-07-18");
    assert!(eligible);
    assert!((q_new - q_source).abs() < 1e-9);
    server.shutdown().await.expect("clean shutdown");
}
