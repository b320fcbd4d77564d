//! One server taken through the abuse of issue 23 in a row, by a caller holding a valid key
//! (and by callers holding none), then serving a well-behaved tenant normally and losing none
//! of its acknowledged reports.

mod common;

use std::time::Duration;

use common::{FRANCE, PROOF, request, settings, start_with};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::metadata::MetadataValue;
use triage_guard::{KeySpec, hash_key};
use triage_proto::v1::{
    ErrorKind, FeedbackRequest, HealthOverride, ListModelsRequest, Preferences,
    ReportHealthRequest, RouteRequest,
};

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {key}")) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn key(name: &str, secret: &str, admin: bool) -> KeySpec {
    KeySpec {
        name: name.into(),
        sha256: hash_key(secret),
        allowed_models: vec![],
        daily_usd: Some(5.0),
        monthly_usd: None,
        admin,
    }
}

/// The outcome's code; a refusal's message must be short whatever was sent.
fn code<T>(outcome: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match outcome {
        Ok(_) => Code::Ok,
        Err(status) => {
            assert!(status.message().len() < 1024, "{}", status.message());
            status.code()
        }
    }
}

fn report(request_id: &str, id: &str, model: &str) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.into(),
        feedback_id: id.into(),
        model: model.into(),
        quality: Some(1.0),
        cost_usd: 0.001,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_hostile_tenant_cannot_take_down_bill_or_fill_up_another() {
    let mut s = settings();
    s.auth.keys = vec![
        key("victim", "victim-key", false),
        key("mallory", "mallory-key", false),
        key("ops", "ops-key", true),
    ];
    s.metrics.listen = Some("127.0.0.1:0".parse().expect("addr"));
    s.metrics.header_read_ms = 300;
    let log_dir = s.log.dir.clone();
    let (server, client) = start_with(s).await;
    let mut c = client.clone();

    // No key: nothing, not even as an admin.
    let anonymous = c.route(request(FRANCE, Preferences::default())).await;
    assert_eq!(code(anonymous), Code::Unauthenticated);
    let down = ReportHealthRequest {
        model: "claude-3-5-sonnet-20241022".into(),
        state: HealthOverride::Down as i32,
        reason: "x".repeat(2048),
    };
    assert_eq!(
        code(c.report_health(down.clone()).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(c.report_health(with_key(down.clone(), "mallory-key")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.report_health(with_key(down, "ops-key")).await),
        Code::InvalidArgument,
        "a 2 KiB reason is refused even from an admin"
    );

    // The victim's request: Mallory can neither fail it, bill it, refund it nor judge it.
    let victim = c
        .route(with_key(
            request(PROOF, Preferences::default()),
            "victim-key",
        ))
        .await
        .expect("routes")
        .into_inner();
    for (i, forged) in [
        FeedbackRequest {
            error: ErrorKind::ErrorRateLimited as i32,
            retry_after_ms: Some(u32::MAX),
            ..report(&victim.request_id, "m1", &victim.model)
        },
        FeedbackRequest {
            cost_usd: 0.0,
            ..report(&victim.request_id, "m2", &victim.model)
        },
        FeedbackRequest {
            quality: Some(0.0),
            ..report(&victim.request_id, "m3", &victim.model)
        },
    ]
    .into_iter()
    .enumerate()
    {
        let refused = c.feedback(with_key(forged, "mallory-key")).await;
        assert_eq!(code(refused), Code::PermissionDenied, "forged report {i}");
    }
    let billion = FeedbackRequest {
        cost_usd: 1e308,
        ..report(&victim.request_id, "m4", &victim.model)
    };
    assert_eq!(
        code(c.feedback(with_key(billion, "mallory-key")).await),
        Code::InvalidArgument
    );
    // A NUL in an id (which a database text column cannot hold) is refused at the door.
    let nul = report(&victim.request_id, "m5\u{0}", &victim.model);
    assert_eq!(
        code(c.feedback(with_key(nul, "mallory-key")).await),
        Code::InvalidArgument
    );

    // Mallory's own request: a retry-after of 49 days and a flood of reports count once, and
    // hold the breaker for at most health.max_retry_after_secs.
    let own = c
        .route(with_key(
            request(FRANCE, Preferences::default()),
            "mallory-key",
        ))
        .await
        .expect("routes")
        .into_inner();
    for i in 0..50 {
        let flood = FeedbackRequest {
            error: ErrorKind::ErrorRateLimited as i32,
            retry_after_ms: Some(u32::MAX),
            quality: Some(0.0),
            ..report(&own.request_id, &format!("flood-{i}"), &own.model)
        };
        assert_eq!(
            code(c.feedback(with_key(flood, "mallory-key")).await),
            Code::Ok
        );
    }

    // Oversized and unknown identifiers: clear refusals, nothing stored.
    let huge_session = RouteRequest {
        session_id: "s".repeat(300),
        ..request(FRANCE, Preferences::default())
    };
    assert_eq!(
        code(c.route(with_key(huge_session, "mallory-key")).await),
        Code::InvalidArgument
    );
    let named = Preferences {
        allowed_models: vec!["m".repeat(3 << 20)],
        ..Default::default()
    };
    let oversized = c
        .route(with_key(request(FRANCE, named), "mallory-key"))
        .await;
    assert_ne!(code(oversized), Code::Ok);
    for i in 0..200 {
        let unknown = report(&format!("no-such-request-{i}"), &format!("u{i}"), "gpt-4o");
        assert_eq!(
            code(c.feedback(with_key(unknown, "mallory-key")).await),
            Code::NotFound
        );
    }

    // A slow-loris connection on /metrics is dropped.
    let metrics = server.metrics_addr.expect("metrics bound");
    let mut slow = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("connect");
    slow.write_all(b"GET /met").await.expect("send");

    // The victim is served normally: every request routed, every report acknowledged once.
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let routed = c
            .route(with_key(
                request(PROOF, Preferences::default()),
                "victim-key",
            ))
            .await
            .expect("the victim is still served")
            .into_inner();
        let id = format!("victim-{i}");
        let taken = c
            .feedback(with_key(
                report(&routed.request_id, &id, &routed.model),
                "victim-key",
            ))
            .await
            .expect("acknowledged")
            .into_inner();
        assert!(!taken.duplicate);
        acknowledged.push(id);
    }
    let models = c
        .list_models(with_key(ListModelsRequest {}, "victim-key"))
        .await
        .expect("lists")
        .into_inner()
        .models;
    let open: Vec<&str> = models
        .iter()
        .filter(|m| m.health == "open")
        .map(|m| m.name.as_str())
        .collect();
    assert!(
        open.len() <= 1,
        "at most Mallory's own model is held open (for <= 300 s): {open:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(slow);
    server.shutdown().await.expect("clean shutdown");

    let (records, _) = triage_log::read_log(&log_dir).expect("reads");
    let stored: Vec<&triage_log::FeedbackRecord> = records
        .iter()
        .filter_map(|r| match r {
            triage_log::LogRecord::Feedback(f) => Some(f),
            triage_log::LogRecord::Decision(_) | triage_log::LogRecord::Verification(_) => None,
        })
        .collect();
    for id in &acknowledged {
        assert!(
            stored.iter().any(|f| &f.feedback_id == id),
            "acknowledged report {id} is in the log"
        );
    }
    assert!(
        stored
            .iter()
            .all(|f| f.api_key.as_deref() != Some("mallory") || f.request_id == own.request_id),
        "nothing Mallory sent about another's request was stored"
    );
}
