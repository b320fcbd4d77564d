//! A real server on a loopback port, with the real encoder and the bundled policy.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tonic::transport::Channel;
use triage_core::Settings;
use triage_proto::v1::router_client::RouterClient;
use triage_proto::v1::{Message, Preferences, RouteRequest};
use triage_server::{RoutingEngine, ServerHandle};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Default settings, with the decision log in a fresh directory under Cargo's scratch space for
/// integration tests (`target/tmp`, removed by `cargo clean`), not the system's temporary
/// directory: it is kept after the test, like any server's data, so a failure can be inspected.
pub fn settings() -> Settings {
    let mut s = Settings::load(None).expect("default settings");
    // Tests run many servers at once on two cores: no shedding by queue wait unless a test
    // asks for it.
    s.encoder.max_queue_wait_ms = 0;
    s.log.dir = tempfile::Builder::new()
        .prefix("triage-test-log-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
        .keep();
    s
}

pub async fn start_with(settings: Settings) -> (ServerHandle, RouterClient<Channel>) {
    let engine = RoutingEngine::from_settings(&settings, &root())
        .expect("engine starts (run scripts/setup.sh first)");
    let handle = triage_server::start(engine, &settings, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    let client = RouterClient::connect(format!("http://{}", handle.addr))
        .await
        .expect("connects");
    (handle, client)
}

pub async fn start() -> (ServerHandle, RouterClient<Channel>) {
    start_with(settings()).await
}

/// A model's breaker state as `ListModels` shows it to an anonymous caller.
pub async fn model_health(client: &mut RouterClient<Channel>, model: &str) -> Option<String> {
    client
        .list_models(triage_proto::v1::ListModelsRequest {})
        .await
        .expect("lists")
        .into_inner()
        .models
        .into_iter()
        .find(|m| m.name == model)
        .map(|m| m.health)
}

pub fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: text.into(),
    }
}

pub fn request(text: &str, preferences: Preferences) -> RouteRequest {
    RouteRequest {
        messages: vec![user(text)],
        preferences: Some(preferences),
        ..Default::default()
    }
}

pub const FRANCE: &str = "What is the capital of France?";
pub const PROOF: &str = "Let $a, b, c$ be positive reals with $abc = 1$. Prove that \
    $\\frac{1}{a^3(b+c)} + \\frac{1}{b^3(c+a)} + \\frac{1}{c^3(a+b)} \\ge \\frac{3}{2}$. \
    Give a complete, rigorous proof, justifying every step and stating which inequalities \
    (AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold.";
