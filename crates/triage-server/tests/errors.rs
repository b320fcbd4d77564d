//! Invalid input, overload and the other RPCs, against a real server on port 0.

mod common;

use common::{FRANCE, request, settings, start, start_with, user};
use tonic::Code;
use triage_proto::v1::{FeedbackRequest, ListModelsRequest, Message, Preferences, RouteRequest};

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} should name {field}",
        status.message()
    );
}

#[tokio::test]
async fn invalid_requests_name_the_field_and_the_fix() {
    let (_server, mut client) = start().await;
    let mut check = async |req: RouteRequest, field: &str, fix: &str| {
        let status = client.route(req).await.expect_err("rejected");
        assert_invalid(&status, field);
        assert!(
            status.message().contains(fix),
            "{:?} should say {fix:?}",
            status.message()
        );
    };
    check(RouteRequest::default(), "messages", "at least one message").await;
    let robot = RouteRequest {
        messages: vec![
            user("hi"),
            Message {
                role: "robot".into(),
                content: "beep".into(),
            },
        ],
        ..Default::default()
    };
    check(robot, "messages[1].role", "\"assistant\"").await;
    let system_only = RouteRequest {
        messages: vec![Message {
            role: "system".into(),
            content: "be nice".into(),
        }],
        ..Default::default()
    };
    check(system_only, "messages", "role \"user\"").await;
    let huge_session = RouteRequest {
        session_id: "s".repeat(1 << 20),
        ..request(FRANCE, Preferences::default())
    };
    check(huge_session, "session_id", "256 bytes").await;
    let negative = Preferences {
        max_cost_usd: Some(-1.0),
        ..Default::default()
    };
    check(
        request(FRANCE, negative),
        "preferences.max_cost_usd",
        ">= 0",
    )
    .await;
    let nan = Preferences {
        max_cost_usd: Some(f64::NAN),
        ..Default::default()
    };
    check(request(FRANCE, nan), "preferences.max_cost_usd", "finite").await;
    let lambda = Preferences {
        cost_weight: Some(f64::INFINITY),
        ..Default::default()
    };
    check(request(FRANCE, lambda), "preferences.cost_weight", "finite").await;
    let unknown = Preferences {
        allowed_models: vec!["gpt-17".into()],
        ..Default::default()
    };
    check(
        request(FRANCE, unknown),
        "preferences.allowed_models[0]",
        "ListModels",
    )
    .await;
    let mode = Preferences {
        mode: 42,
        ..Default::default()
    };
    check(request(FRANCE, mode), "preferences.mode", "MODE_BALANCED").await;
    let cap = Preferences {
        required_capabilities: vec![0],
        ..Default::default()
    };
    check(
        request(FRANCE, cap),
        "preferences.required_capabilities[0]",
        "CAPABILITY_VISION",
    )
    .await;
}

#[tokio::test]
async fn oversize_requests_are_invalid_argument() {
    let mut s = settings();
    s.server.max_text_bytes = 10_000;
    s.server.max_messages = 8;
    let (_server, mut client) = start_with(s).await;
    let big = request(&"lorem ipsum ".repeat(2_000), Preferences::default());
    let status = client.route(big).await.expect_err("too big");
    assert_invalid(&status, "messages");
    assert!(
        status.message().contains("limit of 10000"),
        "{}",
        status.message()
    );
    let many = RouteRequest {
        messages: vec![user("hi"); 9],
        ..Default::default()
    };
    let status = client.route(many).await.expect_err("too many");
    assert!(
        status.message().contains("limit of 8"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_full_encoder_queue_sheds_with_resource_exhausted() {
    let mut s = settings();
    s.encoder.workers = 1;
    s.encoder.queue_capacity = 1;
    s.encoder.max_batch = 1;
    s.encoder.intra_op_threads = 1;
    let (_server, client) = start_with(s).await;
    let long = "Summarise the following contract clause by clause. ".repeat(60);
    let calls = (0..40).map(|_| {
        let mut c = client.clone();
        let req = request(&long, Preferences::default());
        async move { c.route(req).await }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(ok >= 1, "some requests are served");
    assert!(!shed.is_empty(), "some requests are shed");
    for s in shed {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("retry"), "{}", s.message());
    }
}

#[tokio::test]
async fn list_models_feedback_health_and_reflection() {
    let (server, mut client) = start().await;
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(models.models.len(), 12);
    assert!(models.models.iter().all(|m| m.in_policy && m.enabled));
    let sonnet = models
        .models
        .iter()
        .find(|m| m.name == "claude-3-5-sonnet-20241022")
        .expect("sonnet");
    assert_eq!(
        (sonnet.input_usd_per_1m, sonnet.output_usd_per_1m),
        (3.0, 15.0)
    );

    let status = client
        .feedback(FeedbackRequest::default())
        .await
        .expect_err("empty report");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("request_id"), "{status:?}");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "triage.v1.Router".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter(vec![ask]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = stream.message().await.expect("reply").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"triage.v1.Router"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn multi_turn_conversations_route() {
    let (_server, mut client) = start().await;
    let req = RouteRequest {
        messages: vec![
            Message {
                role: "system".into(),
                content: "You are a careful assistant.".into(),
            },
            user("Here is my function: def f(x): return x * 2"),
            Message {
                role: "assistant".into(),
                content: "It doubles its input.".into(),
            },
            Message {
                role: "tool".into(),
                content: "{\"lint\": \"ok\"}".into(),
            },
            user("What does f(21) return?"),
        ],
        session_id: "s-1".into(),
        metadata: [("team".to_owned(), "search".to_owned())].into(),
        ..Default::default()
    };
    let r = client.route(req).await.expect("route").into_inner();
    assert_eq!(r.candidates.len(), 12);
    assert!(r.input_tokens > 20);
}
