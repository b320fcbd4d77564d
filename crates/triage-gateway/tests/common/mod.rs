//! Both doors over one real engine (the real encoder and the bundled policy), with every
//! catalog model's provider pointed at a local upstream on loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use triage_core::Settings;
use triage_engine::startup::{self, Background};
use triage_engine::{RoutingEngine, Service};
use triage_gateway::{Gateway, GatewayHandle};
use triage_testkit::{Behaviour, LocalUpstream, local_providers};

pub const FRANCE: &str = "What is the capital of France?";
pub const PROOF: &str = "Let $a, b, c$ be positive reals with $abc = 1$. Prove that \
    $\\frac{1}{a^3(b+c)} + \\frac{1}{b^3(c+a)} + \\frac{1}{c^3(a+b)} \\ge \\frac{3}{2}$. \
    Give a complete, rigorous proof, justifying every step and stating which inequalities \
    (AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold.";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Default settings, the log under Cargo's scratch space, and one provider per catalog
/// `provider` name: Anthropic's models speak the Messages API, the others OpenAI's.
pub fn settings(upstream: &str) -> Settings {
    let mut s = Settings::load(None).expect("default settings");
    s.encoder.max_queue_wait_ms = 0;
    s.log.dir = tempfile::Builder::new()
        .prefix("triage-gateway-log-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
        .keep();
    s.providers = local_providers(&s, upstream);
    for p in &mut s.providers {
        p.connect_ms = 1000;
        p.first_byte_ms = 2000;
        p.total_ms = 10_000;
    }
    s
}

/// A running router (gRPC and HTTP) and its upstream.
pub struct Router {
    pub upstream: LocalUpstream,
    pub service: Service,
    pub gateway: GatewayHandle,
    pub grpc: SocketAddr,
    pub http: reqwest::Client,
    _background: Background,
}

impl Router {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    /// `POST /v1/chat/completions` with `body`.
    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("gateway answers")
    }

    /// `POST /v1/feedback` with `body`.
    pub async fn feedback(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/feedback"))
            .json(&body)
            .send()
            .await
            .expect("gateway answers")
    }

    /// Queues faults for `model` at the upstream.
    pub async fn script(&self, model: &str, faults: Value) {
        let r = self
            .http
            .post(format!("http://{}/_script", self.upstream.addr))
            .json(&json!({"model": model, "faults": faults}))
            .send()
            .await
            .expect("upstream answers");
        assert!(r.status().is_success());
    }

    /// Calls the upstream received per model.
    pub async fn calls(&self, model: &str) -> u64 {
        self.count("_calls", model).await
    }

    /// Calls to `model` whose caller (the gateway) hung up before the answer began.
    pub async fn abandoned(&self, model: &str) -> u64 {
        self.count("_abandoned", model).await
    }

    async fn count(&self, what: &str, model: &str) -> u64 {
        let v: Value = self
            .http
            .get(format!("http://{}/{what}", self.upstream.addr))
            .send()
            .await
            .expect("upstream answers")
            .json()
            .await
            .expect("json");
        v.get(model).and_then(Value::as_u64).unwrap_or(0)
    }

    /// The catalog's model names.
    pub fn model_names(&self) -> Vec<String> {
        self.service
            .engine()
            .catalog()
            .models()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        self.service.metrics().render()
    }

    /// What the records say was spent, USD.
    #[allow(dead_code)]
    pub fn spent(&self) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("triage_reported_cost_usd_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub async fn start() -> Router {
    start_with(Behaviour::default(), |_| {}).await
}

/// Starts an upstream, then both doors over one engine, with `tweak` applied to the settings.
pub async fn start_with(behaviour: Behaviour, tweak: impl FnOnce(&mut Settings)) -> Router {
    let upstream = LocalUpstream::start(behaviour)
        .await
        .expect("upstream starts");
    let mut settings = settings(&upstream.base_url());
    tweak(&mut settings);
    let engine = RoutingEngine::from_settings(&settings, &root())
        .expect("engine starts (run scripts/setup.sh first)");
    let service = startup::open(engine, &settings, None)
        .await
        .expect("log opens");
    let background = Background::start(&service, &settings, None, None);
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    let (grpc_service, grpc_settings) = (service.clone(), settings.clone());
    tokio::spawn(async move {
        let _ = triage_server::serve_grpc(
            grpc_service,
            &grpc_settings,
            grpc_listener,
            std::future::pending(),
        )
        .await;
    });
    let gateway = Gateway::new(service.clone(), &settings).expect("providers configured");
    let gateway = triage_gateway::start(gateway, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("gateway starts");
    Router {
        upstream,
        service,
        gateway,
        grpc,
        http: reqwest::Client::new(),
        _background: background,
    }
}

pub fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The `data:` payloads of a server-sent-event body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}
