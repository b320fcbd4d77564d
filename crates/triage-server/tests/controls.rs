//! Production controls against the real server on port 0: circuit breakers and fallback,
//! operator overrides, session affinity, API keys, budgets, cost alerts and metrics over HTTP.

mod common;

use std::time::Duration;

use common::{FRANCE, PROOF, request, settings, start_with};
use tonic::Code;
use tonic::metadata::MetadataValue;
use triage_guard::{AlertSpec, KeySpec, Period, hash_key};
use triage_proto::v1::{
    ErrorKind, ExclusionReason, FeedbackRequest, HealthOverride, ListModelsRequest, Preferences,
    ReportHealthRequest, RouteRequest,
};

fn failure(request_id: &str, id: &str, model: &str, error: ErrorKind) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.into(),
        feedback_id: id.into(),
        model: model.into(),
        error: error as i32,
        ..Default::default()
    }
}

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {key}")) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

#[tokio::test]
async fn a_failing_model_is_skipped_until_its_breaker_recovers() {
    let mut s = settings();
    s.health.min_reports = 2;
    s.health.failure_rate = 0.5;
    s.health.open_secs = 1.0;
    s.health.half_open_probes = 1;
    let (server, mut client) = start_with(s).await;
    let first = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    let failing = first.model.clone();
    let fallback = first.candidates[1].model.clone();
    client
        .feedback(failure(
            &first.request_id,
            "f1",
            &failing,
            ErrorKind::ErrorUnavailable,
        ))
        .await
        .expect("stored");
    // A second request fails too (one request counts one failure per model, however many
    // reports it sends).
    let second = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_eq!(second.model, failing);
    client
        .feedback(failure(
            &second.request_id,
            "f2",
            &failing,
            ErrorKind::ErrorTimeout,
        ))
        .await
        .expect("stored");

    // Open: routed to the next candidate, and the fallback list says why the first is skipped.
    let r = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_eq!(r.model, fallback);
    let skipped = r
        .candidates
        .iter()
        .find(|c| c.model == failing)
        .expect("listed");
    assert!(!skipped.eligible);
    assert_eq!(skipped.exclusion, ExclusionReason::Unavailable as i32);
    assert!(
        skipped.reason.contains("circuit open"),
        "{}",
        skipped.reason
    );
    assert_eq!(
        common::model_health(&mut client, &failing).await.as_deref(),
        Some("open")
    );

    // Only the failing model allowed: UNAVAILABLE with the reason.
    let only = Preferences {
        allowed_models: vec![failing.clone()],
        ..Default::default()
    };
    let status = client
        .route(request(FRANCE, only.clone()))
        .await
        .expect_err("down");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&failing), "{status:?}");

    // Half-open after open_secs: one probe goes through; its success closes the breaker.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probe = client
        .route(request(FRANCE, only.clone()))
        .await
        .expect("probe routed")
        .into_inner();
    assert_eq!(probe.model, failing);
    let waiting = client
        .route(request(FRANCE, only.clone()))
        .await
        .expect_err("second request waits for the probe");
    assert_eq!(waiting.code(), Code::Unavailable);
    client
        .feedback(FeedbackRequest {
            quality: Some(1.0),
            ..failure(
                &probe.request_id,
                "f3",
                &failing,
                ErrorKind::ErrorUnspecified,
            )
        })
        .await
        .expect("stored");
    let back = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_eq!(back.model, failing, "recovered model is chosen again");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn retry_after_and_operator_overrides() {
    let mut s = settings();
    // Anonymous callers are served (asked for explicitly beside a key) but are never admins.
    s.auth.allow_anonymous = Some(true);
    s.auth.keys = vec![KeySpec {
        name: "ops".into(),
        sha256: hash_key("ops-key"),
        allowed_models: vec![],
        daily_usd: None,
        monthly_usd: None,
        admin: true,
    }];
    let (server, mut client) = start_with(s).await;
    let first = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    let model = first.model.clone();
    client
        .feedback(FeedbackRequest {
            retry_after_ms: Some(60_000),
            ..failure(&first.request_id, "rl", &model, ErrorKind::ErrorRateLimited)
        })
        .await
        .expect("stored");
    let r = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_ne!(
        r.model, model,
        "a rate limit with retry-after opens the breaker at once"
    );

    // Operator: force it up, then mark another model down.
    let force_up = ReportHealthRequest {
        model: model.clone(),
        state: HealthOverride::Up as i32,
        reason: String::new(),
    };
    let anonymous = client
        .report_health(force_up.clone())
        .await
        .expect_err("anonymous callers are never admins");
    assert_eq!(anonymous.code(), Code::PermissionDenied);
    assert!(anonymous.message().contains("admin"), "{anonymous:?}");
    let up = client
        .report_health(with_key(force_up, "ops-key"))
        .await
        .expect("override")
        .into_inner();
    assert_eq!(up.health, "closed");
    let r = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_eq!(r.model, model);
    client
        .report_health(with_key(
            ReportHealthRequest {
                model: model.clone(),
                state: HealthOverride::Down as i32,
                reason: "provider maintenance".into(),
            },
            "ops-key",
        ))
        .await
        .expect("override");
    let r = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    let c = r
        .candidates
        .iter()
        .find(|c| c.model == model)
        .expect("listed");
    assert!(c.reason.contains("provider maintenance"), "{}", c.reason);
    let unknown = client
        .report_health(with_key(
            ReportHealthRequest {
                model: "gpt-99".into(),
                state: HealthOverride::Down as i32,
                reason: String::new(),
            },
            "ops-key",
        ))
        .await
        .expect_err("unknown model");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_session_stays_on_its_model_unless_it_opts_out() {
    let (server, mut client) = start_with(settings()).await;
    let turn = |text: &str, opt_out: bool| RouteRequest {
        session_id: "session-42".into(),
        ..request(
            text,
            Preferences {
                no_session_affinity: opt_out,
                ..Default::default()
            },
        )
    };
    let first = client
        .route(turn(FRANCE, false))
        .await
        .expect("routes")
        .into_inner();
    let alone = client
        .route(request(PROOF, Preferences::default()))
        .await
        .expect("routes")
        .into_inner();
    assert_ne!(
        first.model, alone.model,
        "the two prompts differ in isolation"
    );
    let second = client
        .route(turn(PROOF, false))
        .await
        .expect("routes")
        .into_inner();
    assert!(second.sticky);
    assert_eq!(second.model, first.model);
    assert!(
        second.explanation.contains("session affinity"),
        "{}",
        second.explanation
    );
    let opted_out = client
        .route(turn(PROOF, true))
        .await
        .expect("routes")
        .into_inner();
    assert!(!opted_out.sticky);
    assert_eq!(opted_out.model, alone.model);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn keys_limit_models_and_budgets_and_alerts_fire_once_into_metrics() {
    let mut s = settings();
    s.auth.allow_anonymous = Some(false);
    let cheap = ["gpt-4o-mini-2024-07-18", "gemini-1.5-flash"];
    s.auth.keys = vec![
        KeySpec {
            name: "interns".into(),
            sha256: hash_key("intern-key"),
            allowed_models: cheap.iter().map(|m| (*m).to_owned()).collect(),
            daily_usd: None,
            monthly_usd: None,
            admin: false,
        },
        KeySpec {
            name: "tight".into(),
            sha256: hash_key("tight-key"),
            allowed_models: vec![],
            daily_usd: Some(0.004),
            monthly_usd: None,
            admin: false,
        },
    ];
    s.alerts = vec![AlertSpec {
        scope: "tight".into(),
        period: Period::Day,
        threshold_usd: 0.002,
    }];
    s.metrics.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let (server, mut client) = start_with(s).await;

    let anonymous = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect_err("no key");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let wrong = client
        .route(with_key(request(FRANCE, Preferences::default()), "guess"))
        .await
        .expect_err("unknown key");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    // ListModels shows a key only the models it may use (prices and health of the others are
    // not its business).
    let listed: Vec<String> = client
        .list_models(with_key(ListModelsRequest::default(), "intern-key"))
        .await
        .expect("lists")
        .into_inner()
        .models
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(listed, cheap);

    // Frontier models are never chosen for the interns' key, even in QUALITY mode.
    let quality = Preferences {
        mode: triage_proto::v1::Mode::Quality as i32,
        ..Default::default()
    };
    let r = client
        .route(with_key(request(PROOF, quality.clone()), "intern-key"))
        .await
        .expect("routes")
        .into_inner();
    assert!(cheap.contains(&r.model.as_str()), "{}", r.model);
    let sonnet = r
        .candidates
        .iter()
        .find(|c| c.model == "claude-3-5-sonnet-20241022")
        .expect("listed");
    assert_eq!(sonnet.exclusion, ExclusionReason::NotPermitted as i32);
    let asked = Preferences {
        allowed_models: vec!["claude-3-5-sonnet-20241022".into()],
        ..Default::default()
    };
    let refused = client
        .route(with_key(request(PROOF, asked), "intern-key"))
        .await
        .expect_err("not permitted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("interns"), "{refused:?}");
    let admin = client
        .report_health(with_key(
            ReportHealthRequest {
                model: "gemini-1.5-flash".into(),
                state: HealthOverride::Down as i32,
                reason: String::new(),
            },
            "intern-key",
        ))
        .await
        .expect_err("not an admin");
    assert_eq!(admin.code(), Code::PermissionDenied);

    // The tight key: routed within what is left, then refused once the budget is spent.
    let mut costs = Vec::new();
    let mut exhausted = None;
    for _ in 0..40 {
        match client
            .route(with_key(request(PROOF, quality.clone()), "tight-key"))
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let c = r
                    .candidates
                    .iter()
                    .find(|c| c.model == r.model)
                    .expect("chosen");
                costs.push(c.predicted_cost_usd);
            }
            Err(status) => {
                exhausted = Some(status);
                break;
            }
        }
    }
    let status = exhausted.expect("the budget ran out");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("tight"), "{status:?}");
    let spent: f64 = costs.iter().sum();
    assert!(spent <= 0.004 + 1e-9, "spent {spent} of 0.004");
    assert!(costs.len() >= 2, "{costs:?}");

    let metrics = scrape(server.metrics_addr.expect("metrics bound")).await;
    for series in [
        "triage_route_requests_total{model=",
        "key=\"interns\"",
        "triage_decision_seconds_bucket{le=",
        "stage=\"encoder\"",
        "triage_predicted_cost_usd_total{model=",
        "triage_breaker_state{model=\"claude-3-5-sonnet-20241022\"} 0",
        "triage_encoder_queue_depth 0",
        "triage_errors_total{method=\"Route\",code=\"Unauthenticated\"} 2",
        "triage_cost_alerts_total{scope=\"tight\",period=\"day\"} 1",
        "triage_familiarity_bucket{le=",
        "triage_trust_bucket{le=",
    ] {
        assert!(metrics.contains(series), "missing {series:?} in\n{metrics}");
    }
    // Every routed prompt's familiarity to the bundled policy's training prompts is observed.
    let observed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("triage_familiarity_count "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(
        observed.is_some_and(|n| n >= costs.len() as u64),
        "{observed:?}"
    );
    server.shutdown().await.expect("clean shutdown");
}

/// `GET /metrics` over a plain HTTP/1.1 connection.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_spend_more_than_the_budget() {
    let limit = 0.004;
    let mut s = settings();
    s.auth.keys = vec![KeySpec {
        name: "tight".into(),
        sha256: hash_key("tight-key"),
        allowed_models: vec![],
        daily_usd: Some(limit),
        monthly_usd: None,
        admin: false,
    }];
    let (server, client) = start_with(s).await;
    let quality = Preferences {
        mode: triage_proto::v1::Mode::Quality as i32,
        ..Default::default()
    };
    // Warm the embedding cache so that the requests below reach the budget check together.
    let _ = client
        .clone()
        .route(with_key(request(PROOF, quality.clone()), "tight-key"))
        .await;
    let calls = (0..96).map(|_| {
        let mut client = client.clone();
        let r = with_key(request(PROOF, quality.clone()), "tight-key");
        tokio::spawn(async move { client.route(r).await })
    });
    let mut spent = 0.0;
    let mut refused = 0;
    for call in futures::future::join_all(calls).await {
        match call.expect("task") {
            Ok(r) => {
                let r = r.into_inner();
                spent += r
                    .candidates
                    .iter()
                    .find(|c| c.model == r.model)
                    .map_or(0.0, |c| c.predicted_cost_usd);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the budget ran out");
    // The warm-up request spent something too: the concurrent ones fit in the rest.
    assert!(spent <= limit + 1e-9, "spent {spent} of {limit}");
    server.shutdown().await.expect("clean shutdown");
}
