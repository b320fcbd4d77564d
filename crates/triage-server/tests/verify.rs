//! Verify, then escalate, over gRPC: `Route` with `STRATEGY_VERIFY` returns the draft plan, and
//! `Verify` accepts a draft or escalates, both logged; bad drafts and unknown or foreign
//! requests get the status that says what is wrong. A real server with the real encoder; the
//! bundled policy's acceptor replaced by one that trusts agreement (so the checks are of the
//! wiring, not of a trained head's judgement of one example).

mod common;

use common::{root, settings, start_with, user};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use triage_guard::{KeySpec, hash_key};
use triage_log::LogRecord;
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{
    Draft, Mode, Preferences, RouteRequest, RouteResponse, Strategy, VerifyRequest,
};

const DRAFTS: [&str; 2] = ["deepseek-v2.5-0908", "gpt-4o-mini-2024-07-18"];
const SUM: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as \
    many clips in May. How many clips did Natalia sell altogether in April and May?";

/// Settings serving the bundled policy with the agreement-trusting acceptor.
fn verify_settings() -> triage_core::Settings {
    let mut s = settings();
    let policy = triage_testkit::policy_trusting_agreement(
        &root().join("models/policy.json"),
        DRAFTS,
        &s.log.dir,
    )
    .expect("test policy written");
    s.policy.path = policy;
    s
}

fn verify_request(text: &str) -> RouteRequest {
    RouteRequest {
        messages: vec![user(text)],
        preferences: Some(Preferences {
            mode: Mode::Quality as i32,
            ..Default::default()
        }),
        strategy: Strategy::Verify as i32,
        ..Default::default()
    }
}

/// Routes [`SUM`] with `STRATEGY_VERIFY` in quality mode.
async fn route_verify(client: &mut RouterClient<Channel>) -> RouteResponse {
    client
        .route(verify_request(SUM))
        .await
        .expect("routes")
        .into_inner()
}

fn drafts(request_id: &str, answers: [(&str, &str); 2]) -> VerifyRequest {
    VerifyRequest {
        request_id: request_id.into(),
        drafts: answers
            .iter()
            .map(|(model, response)| Draft {
                model: (*model).into(),
                response: (*response).into(),
            })
            .collect(),
    }
}

fn eligible(r: &RouteResponse) -> Vec<String> {
    r.candidates
        .iter()
        .filter(|c| c.eligible)
        .map(|c| c.model.clone())
        .collect()
}

#[tokio::test]
async fn verify_accepts_agreeing_drafts_escalates_others_and_logs_both() {
    let s = verify_settings();
    let dir = s.log.dir.clone();
    let (server, mut client) = start_with(s).await;

    let routed = route_verify(&mut client).await;
    let plan = routed.draft_plan.clone().expect("a draft plan");
    assert_eq!(plan.drafts, DRAFTS);
    assert!(
        routed.explanation.contains("verify: drafts"),
        "{}",
        routed.explanation
    );
    assert!(
        !DRAFTS.contains(&routed.model.as_str()),
        "quality mode escalates to a dearer model"
    );

    // Both drafts say 72, in different forms: accepted, returning the draft rated higher.
    let agree = [
        (
            DRAFTS[1],
            "April: 48. May: 48 / 2 = 24. Total: 48 + 24 = 72.\nThe answer is 72.",
        ),
        (DRAFTS[0], "She sold 48 + 24 = **72** clips.\n\\boxed{72}"),
    ];
    let verdict = client
        .verify(drafts(&routed.request_id, agree))
        .await
        .expect("judged")
        .into_inner();
    assert!(verdict.accepted, "{verdict:?}");
    assert!(DRAFTS.contains(&verdict.model.as_str()), "{verdict:?}");
    assert!(
        verdict.probability > 0.9 && verdict.threshold == 0.5,
        "{verdict:?}"
    );
    assert!(verdict.fallbacks.is_empty() && !verdict.duplicate);
    // A retry with the same drafts gets the same verdict, marked as a repeat.
    let again = client
        .verify(drafts(&routed.request_id, agree))
        .await
        .expect("judged again")
        .into_inner();
    assert!(again.duplicate && again.accepted && again.model == verdict.model);
    // Other drafts for a request already verified are refused.
    let other = [(DRAFTS[0], "72"), (DRAFTS[1], "73")];
    let err = client
        .verify(drafts(&routed.request_id, other))
        .await
        .expect_err("verified once");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // They disagree: escalate to the routed model, with the ranked fallbacks after it.
    let routed2 = route_verify(&mut client).await;
    let differ = [
        (DRAFTS[0], "48 + 24 = 72. The answer is 72."),
        (DRAFTS[1], "48 * 2 = 96. The answer is 96."),
    ];
    let verdict2 = client
        .verify(drafts(&routed2.request_id, differ))
        .await
        .expect("judged")
        .into_inner();
    assert!(
        !verdict2.accepted && verdict2.probability < 0.1,
        "{verdict2:?}"
    );
    assert_eq!(verdict2.model, routed2.model);
    assert_eq!(verdict2.fallbacks, eligible(&routed2)[1..].to_vec());
    assert!(!verdict2.drafted);

    server.shutdown().await.expect("stops");
    let (records, _) = triage_log::read_log(&dir).expect("log reads");
    let planned = records
        .iter()
        .filter(|r| matches!(r, LogRecord::Decision(d) if d.draft_plan.is_some()))
        .count();
    let verdicts: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Verification(v) => Some(v),
            LogRecord::Decision(_) | LogRecord::Feedback(_) => None,
        })
        .collect();
    assert_eq!(planned, 2);
    assert_eq!(verdicts.len(), 2, "the retry was not logged twice");
    assert_eq!(
        verdicts[0].accepted.as_deref(),
        Some(verdict.model.as_str())
    );
    assert_eq!(verdicts[0].drafts[0].answer.as_deref(), Some("num:72"));
    assert_eq!(
        verdicts[1].escalated_to.as_deref(),
        Some(routed2.model.as_str())
    );
    assert_eq!(verdicts[1].drafts.len(), 2);
}

#[tokio::test]
async fn verify_refuses_bad_input_with_what_is_wrong() {
    let mut s = verify_settings();
    s.auth.allow_anonymous = Some(true);
    s.auth.keys = vec![KeySpec {
        name: "team-b".into(),
        sha256: hash_key("b-key"),
        allowed_models: vec![],
        daily_usd: None,
        monthly_usd: None,
        admin: false,
    }];
    let (server, mut client) = start_with(s).await;
    let routed = route_verify(&mut client).await;
    let id = routed.request_id.as_str();
    let huge = "7".repeat(200_001);
    // An attacker's megabyte id or model name is refused without being echoed whole.
    let (long_id, long_model) = ("x".repeat(1 << 20), "m".repeat(1 << 16));
    let cases: Vec<(VerifyRequest, Code, &str)> = vec![
        (
            drafts("no-such-request", [(DRAFTS[0], "1"), (DRAFTS[1], "1")]),
            Code::NotFound,
            "unknown request_id",
        ),
        (
            drafts(&long_id, [(DRAFTS[0], "1"), (DRAFTS[1], "1")]),
            Code::InvalidArgument,
            "request_id: must be 1..=128 bytes",
        ),
        (
            drafts(id, [(DRAFTS[0], "72"), (&long_model, "72")]),
            Code::InvalidArgument,
            "is not in this request's plan",
        ),
        (
            drafts(
                id,
                [(DRAFTS[0], "72"), ("claude-3-5-sonnet-20240620", "72")],
            ),
            Code::InvalidArgument,
            "is not in this request's plan",
        ),
        (
            drafts(id, [(DRAFTS[0], "72"), (DRAFTS[1], " \n ")]),
            Code::InvalidArgument,
            "the response is empty",
        ),
        (
            drafts(id, [(DRAFTS[0], "72"), (DRAFTS[1], &huge)]),
            Code::InvalidArgument,
            "more than the 200000 judged",
        ),
        (
            VerifyRequest {
                request_id: id.into(),
                drafts: vec![Draft {
                    model: DRAFTS[0].into(),
                    response: "72".into(),
                }],
            },
            Code::InvalidArgument,
            "the plan has 2 drafts",
        ),
    ];
    for (request, code, said) in cases {
        let err = client.verify(request).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(said), "{}", err.message());
        assert!(
            err.message().len() < 2_000,
            "bounded: {} bytes",
            err.message().len()
        );
    }

    // Another key may not verify this request.
    let mut foreign = tonic::Request::new(drafts(id, [(DRAFTS[0], "72"), (DRAFTS[1], "72")]));
    foreign.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from("Bearer b-key").expect("header"),
    );
    let err = client.verify(foreign).await.expect_err("not theirs");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A request routed without STRATEGY_VERIFY has no plan to verify against.
    let plain = RouteRequest {
        strategy: Strategy::Route as i32,
        ..verify_request(SUM)
    };
    let routed = client.route(plain).await.expect("routes").into_inner();
    assert!(routed.draft_plan.is_none());
    let err = client
        .verify(drafts(
            &routed.request_id,
            [(DRAFTS[0], "72"), (DRAFTS[1], "72")],
        ))
        .await
        .expect_err("no plan");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no draft plan"), "{}", err.message());

    // After every refusal, the request can still be verified properly.
    let ok = client
        .verify(drafts(
            id,
            [(DRAFTS[0], "72"), (DRAFTS[1], "The answer is 72.")],
        ))
        .await
        .expect("judged")
        .into_inner();
    assert!(ok.accepted);
    server.shutdown().await.expect("stops");
}

#[tokio::test]
async fn verify_routes_directly_when_a_draft_cannot_serve_or_there_is_no_acceptor() {
    let s = verify_settings();
    let (server, mut client) = start_with(s).await;
    // A draft model the request does not allow: no plan, and the explanation says why.
    let mut narrow = verify_request(SUM);
    if let Some(p) = narrow.preferences.as_mut() {
        p.allowed_models = vec![DRAFTS[0].into(), "gpt-4o-2024-08-06".into()];
    }
    let routed = client.route(narrow).await.expect("routes").into_inner();
    assert!(routed.draft_plan.is_none());
    assert!(
        routed.explanation.contains("routed directly") && routed.explanation.contains(DRAFTS[1]),
        "{}",
        routed.explanation
    );
    server.shutdown().await.expect("stops");

    // The policy as trained without responses has no acceptor.
    let mut s = settings();
    let file = std::fs::read_to_string(root().join("models/policy.json")).expect("policy reads");
    let mut v: serde_json::Value = serde_json::from_str(&file).expect("json");
    v.as_object_mut().expect("object").remove("acceptor");
    let path = s.log.dir.join("no-acceptor.json");
    std::fs::write(&path, v.to_string()).expect("writes");
    s.policy.path = path;
    let (server, mut client) = start_with(s).await;
    let routed = route_verify(&mut client).await;
    assert!(routed.draft_plan.is_none());
    assert!(
        routed.explanation.contains("no acceptor"),
        "{}",
        routed.explanation
    );
    server.shutdown().await.expect("stops");
}

#[tokio::test]
async fn a_plan_survives_a_restart() {
    let s = verify_settings();
    let (server, mut client) = start_with(s.clone()).await;
    let routed = route_verify(&mut client).await;
    server.shutdown().await.expect("stops");
    let (server, mut client) = start_with(s).await;
    let verdict = client
        .verify(drafts(
            &routed.request_id,
            [(DRAFTS[0], "72"), (DRAFTS[1], "72")],
        ))
        .await
        .expect("the plan was read back from the log")
        .into_inner();
    assert!(verdict.accepted);
    server.shutdown().await.expect("stops");
}

#[tokio::test]
async fn a_plan_the_reloaded_policy_lacks_is_refused_with_route_again() {
    let mut s = verify_settings();
    s.policy.reload_interval_ms = 50;
    let path = s.policy.path.clone();
    let (server, mut client) = start_with(s).await;
    let routed = route_verify(&mut client).await;
    // The policy file is replaced by one without an acceptor (written aside, then renamed in,
    // as a deployment would).
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reads")).expect("json");
    v.as_object_mut().expect("object").remove("acceptor");
    v["version"] = "without-acceptor".into();
    let aside = path.with_extension("new");
    std::fs::write(&aside, v.to_string()).expect("writes");
    std::fs::rename(&aside, &path).expect("renames");
    let mut reloaded = false;
    for _ in 0..100 {
        if route_verify(&mut client).await.policy_version == "without-acceptor" {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new policy was never served");
    let err = client
        .verify(drafts(
            &routed.request_id,
            [(DRAFTS[0], "72"), (DRAFTS[1], "72")],
        ))
        .await
        .expect_err("the plan is gone");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("route the request again"),
        "{}",
        err.message()
    );
    server.shutdown().await.expect("stops");
}
