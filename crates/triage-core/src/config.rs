//! Layered configuration: embedded defaults, then an optional TOML file, then `TRIAGE_*`
//! environment variables (nested keys joined by `__`, e.g. `TRIAGE_SERVER__LISTEN=0.0.0.0:50051`
//! or `TRIAGE_ENCODER__QUEUE_CAPACITY=128`). Each layer overrides the one before it; a file's
//! `[[models]]` list replaces the default catalog as a whole.
//!
//! Relative paths are resolved against the process's working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use triage_guard::{AlertSpec, AuthSettings, BreakerSettings};

use crate::catalog::{Catalog, CatalogError, ModelSpec};
use crate::request::RequestLimits;

/// The longest duration a setting may hold, seconds (a year).
const MAX_DURATION_SECS: f64 = 365.0 * 86_400.0;

/// The embedded defaults: the twelve-model catalog at list prices, and local paths.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// Server transport settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Largest accepted gRPC message, bytes.
    pub max_message_bytes: usize,
    /// Most messages in one conversation.
    pub max_messages: usize,
    /// Most bytes of message text per request.
    pub max_text_bytes: usize,
    /// Serve TLS with this certificate chain and private key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Seconds in-flight requests get to finish after SIGTERM before the server stops anyway.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: f64,
    /// Largest `cost_usd` one feedback report may carry (more is refused as invalid), so that
    /// no report can book an absurd spend against a budget.
    #[serde(default = "default_max_reported_cost_usd")]
    pub max_reported_cost_usd: f64,
    /// Calls in flight on one HTTP/2 connection (more wait for the client's next window).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A call still running after this long ends with `CANCELLED`, whatever deadline the
    /// client sent, ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Interval of HTTP/2 PINGs and TCP keepalive probes to idle clients, s.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: f64,
    /// A client that does not answer a PING within this long is dropped, s.
    #[serde(default = "default_keepalive_timeout_secs")]
    pub keepalive_timeout_secs: f64,
    /// Time a client has to finish the TLS handshake, ms.
    #[serde(default = "default_tls_handshake_ms")]
    pub tls_handshake_ms: u64,
}

fn default_max_concurrent_streams() -> u32 {
    256
}

fn default_request_timeout_ms() -> u64 {
    60_000
}

fn default_keepalive_secs() -> f64 {
    60.0
}

fn default_keepalive_timeout_secs() -> f64 {
    20.0
}

fn default_tls_handshake_ms() -> u64 {
    10_000
}

fn default_max_reported_cost_usd() -> f64 {
    1000.0
}

fn default_drain_secs() -> f64 {
    30.0
}

/// TLS certificate and key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` on this address (`triage serve --metrics-listen`); unset: off.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Time a client has to send its request head, ms.
    #[serde(default = "default_header_read_ms")]
    pub header_read_ms: u64,
    /// Connections served at once (more wait in the listen backlog).
    #[serde(default = "default_metrics_connections")]
    pub max_connections: usize,
    /// Longest a connection is kept open, keep-alive included, s.
    #[serde(default = "default_connection_secs")]
    pub connection_secs: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: None,
            header_read_ms: default_header_read_ms(),
            max_connections: default_metrics_connections(),
            connection_secs: default_connection_secs(),
        }
    }
}

fn default_header_read_ms() -> u64 {
    5_000
}

fn default_metrics_connections() -> usize {
    16
}

fn default_connection_secs() -> u64 {
    60
}

impl ServerSettings {
    /// The request size limits.
    pub fn limits(&self) -> RequestLimits {
        RequestLimits {
            max_messages: self.max_messages,
            max_text_bytes: self.max_text_bytes,
        }
    }
}

/// Where the encoder's parts are and how it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSettings {
    /// The ONNX model file.
    pub model: PathBuf,
    /// The Hugging Face `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The ONNX Runtime shared library; `ORT_DYLIB_PATH` is used when this is unset.
    #[serde(default)]
    pub onnxruntime: Option<PathBuf>,
    /// Inference threads, each with its own session (requests are spread over them).
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_op_threads: usize,
    /// Let ONNX Runtime's intra-op threads spin between the parallel parts of a run instead of
    /// sleeping (faster runs); they stop as soon as the last run returns.
    #[serde(default)]
    pub intra_op_spinning: bool,
    /// Requests that may wait for a worker; beyond that `Route` answers RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Most requests one worker embeds in a single batch.
    pub max_batch: usize,
    /// A request that waited longer than this for the encoder is refused with
    /// RESOURCE_EXHAUSTED (0: no limit); bounds the latency of accepted requests under overload.
    #[serde(default)]
    pub max_queue_wait_ms: u64,
    /// Tokens the encoder sees, special tokens included (see the truncation rule in `features`).
    pub max_tokens: usize,
    /// Run on the CUDA execution provider (needs the `cuda` build feature and a CUDA runtime).
    #[serde(default)]
    pub cuda: bool,
    /// Embeddings kept for byte-identical repeats of an encoder input (0: no cache).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_cache_entries() -> usize {
    10_000
}

/// Which policy file to serve.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Path of the policy JSON file.
    pub path: PathBuf,
    /// How often the server checks the file for a new policy, ms (0: never reload).
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    2000
}

/// The decision and feedback log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Where decisions and reports are kept: `file` (the embedded log in `dir`, for one
    /// machine) or `postgres` (a database at `url`, shared by replicas).
    #[serde(default)]
    pub backend: LogBackend,
    /// The PostgreSQL connection URL (`postgres://user:password@host:port/db`) when `backend` is
    /// `postgres`; set it with `TRIAGE_LOG__URL` to keep the password out of files.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections to PostgreSQL (the writer's, reservations' and lookups' together).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Directory of the log segments (`triage serve --data-dir` overrides it).
    pub dir: PathBuf,
    /// Store the prompt text with each decision (off: only the feature vector is kept).
    pub store_prompts: bool,
    /// Segment size before a new one is started, bytes.
    pub segment_bytes: u64,
    /// Records waiting for the writer before new ones are refused with RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Bytes waiting for the writer before new records are refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_log_queue_bytes")]
    pub queue_bytes: u64,
    /// The most memory the file log's index of decisions (for late reports and `Verify`)
    /// takes, bytes; past it the oldest are dropped and reports on them refused as evicted.
    /// 0: the retention alone bounds it.
    #[serde(default = "default_index_max_bytes")]
    pub index_max_bytes: usize,
    /// Days decisions and reports are kept in the server's index and read at start (0: for
    /// ever). Feedback must come within this; monthly budgets need at least 32.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// The server compacts sealed segments into a Parquet archive once this many wait
    /// (0: never; `triage log compact` does it by hand).
    pub compact_after_segments: usize,
    /// How often the server checks whether to compact, ms.
    pub compact_interval_ms: u64,
}

/// Where the log lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// Segment files in `log.dir` (one server per directory).
    #[default]
    File,
    /// A PostgreSQL database at `log.url`, shared by any number of replicas.
    Postgres,
}

fn default_pool_size() -> usize {
    8
}

fn default_retention_days() -> u64 {
    35
}

fn default_log_queue_bytes() -> u64 {
    256 << 20
}

/// The OpenAI-compatible HTTP gateway (`POST /v1/chat/completions` and friends).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address the HTTP gateway listens on (`triage serve --http-listen`); unset: no gateway.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Most models one request tries (the chosen one and its fallbacks).
    pub max_attempts: usize,
    /// Largest accepted request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Longest a whole request may take, fallbacks included, ms.
    pub deadline_ms: u64,
    /// Time a client has to send a request head, ms (slow clients are cut off).
    #[serde(default = "default_gateway_header_read_ms")]
    pub header_read_ms: u64,
    /// Connections served at once (more wait in the listen backlog).
    #[serde(default = "default_gateway_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's body once its head is in, ms (408 after).
    #[serde(default = "default_gateway_body_read_ms")]
    pub body_read_ms: u64,
    /// Longest a connection is kept open with no request in flight, ms (HTTP/1 keep-alive and
    /// HTTP/2 alike).
    #[serde(default = "default_gateway_idle_ms")]
    pub idle_ms: u64,
    /// Longest a connection lives, ms: then it takes no new request, and the ones in flight
    /// get `deadline_ms` to finish.
    #[serde(default = "default_gateway_connection_lifetime_ms")]
    pub connection_lifetime_ms: u64,
    /// Largest whole (non-streamed) answer read from an upstream, bytes (a larger one is a
    /// failed attempt).
    #[serde(default = "default_gateway_upstream_body_bytes")]
    pub max_upstream_body_bytes: usize,
    /// Other names for models: alias → a virtual model (`triage`, …) or a catalog model.
    /// `model-router` (Azure's router) means `triage` unless mapped here otherwise.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Keys that may ask for a routing trace (`"triage": {"explain": true}`), by name; `"*"`:
    /// every caller. Admin keys always may. A trace shows predictions and the catalog's
    /// exclusions, which an operator may not want every caller to read.
    #[serde(default)]
    pub explain_keys: Vec<String>,
}

fn default_index_max_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_gateway_body_read_ms() -> u64 {
    30_000
}

fn default_gateway_idle_ms() -> u64 {
    60_000
}

fn default_gateway_connection_lifetime_ms() -> u64 {
    3_600_000
}

fn default_gateway_upstream_body_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_gateway_header_read_ms() -> u64 {
    10_000
}

fn default_gateway_connections() -> usize {
    1024
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: None,
            max_attempts: 3,
            max_body_bytes: 4 * 1024 * 1024,
            deadline_ms: 600_000,
            header_read_ms: default_gateway_header_read_ms(),
            max_connections: default_gateway_connections(),
            body_read_ms: default_gateway_body_read_ms(),
            idle_ms: default_gateway_idle_ms(),
            connection_lifetime_ms: default_gateway_connection_lifetime_ms(),
            max_upstream_body_bytes: default_gateway_upstream_body_bytes(),
            aliases: Default::default(),
            explain_keys: Vec::new(),
        }
    }
}

/// The API an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI chat completions: OpenAI, Azure OpenAI, vLLM, Ollama, DeepSeek, Together, ...
    Openai,
    /// Anthropic's native Messages API.
    Anthropic,
}

/// One upstream LLM endpoint (`[[providers]]`); catalog models name it in `provider`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// The name `[[models]]` entries refer to.
    pub name: String,
    /// Which API it speaks.
    pub kind: ProviderKind,
    /// Base URL, e.g. `https://api.openai.com/v1` (the gateway appends `/chat/completions` or
    /// `/messages`).
    pub base_url: String,
    /// Name of the environment variable holding the upstream API key (keys never live in the
    /// config file); unset: no key is sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra headers sent on every call (e.g. `api-version`, `anthropic-version`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Connection timeout, ms.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Longest wait for the response's first byte, ms (then the next model is tried).
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_ms: u64,
    /// Longest a whole upstream call may take, ms.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

fn default_connect_ms() -> u64 {
    2_000
}

fn default_first_byte_ms() -> u64 {
    30_000
}

fn default_total_ms() -> u64 {
    300_000
}

/// Online learning between retrains.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplorationSettings {
    /// Share of requests routed to a random eligible model instead of the best (0 turns
    /// exploration off; at most 0.5).
    pub rate: f64,
    /// The share on prompts the policy knows nothing like (trust 0 on its familiarity curve);
    /// between, the rate moves with trust. Never below `rate`; at most 0.5.
    #[serde(default)]
    pub unfamiliar_rate: f64,
    /// A model with fewer feedback reports than this counts as unproven and is explored
    /// `new_model_boost` times more often than the others.
    pub confident_after: u32,
    /// How much more often unproven models are drawn when exploring.
    pub new_model_boost: f64,
    /// Step size of the per-model quality correction learned from feedback (0: off).
    pub learning_rate: f64,
    /// Seed of the exploration draws (unset: random); fixed seeds make simulations repeatable.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Seed for [`Settings`] fields that tests and tools build by hand.
impl Default for ExplorationSettings {
    fn default() -> Self {
        Self {
            rate: 0.0,
            unfamiliar_rate: 0.0,
            confident_after: 50,
            new_model_boost: 4.0,
            learning_rate: 0.0,
            seed: None,
        }
    }
}

/// Everything the service is configured with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Transport.
    pub server: ServerSettings,
    /// Encoder.
    pub encoder: EncoderSettings,
    /// Policy.
    pub policy: PolicySettings,
    /// Decision and feedback log.
    pub log: LogSettings,
    /// Exploration and online updates.
    pub exploration: ExplorationSettings,
    /// Circuit breakers.
    pub health: BreakerSettings,
    /// API keys.
    pub auth: AuthSettings,
    /// Cost alerts.
    #[serde(default)]
    pub alerts: Vec<AlertSpec>,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// The HTTP gateway.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Upstream LLM endpoints the gateway calls.
    #[serde(default)]
    pub providers: Vec<ProviderSettings>,
    /// The LLM judge and shadow answers (off unless configured).
    #[serde(default)]
    pub judge: crate::learning::JudgeSettings,
    /// Retraining inside `serve` (off unless configured).
    #[serde(default)]
    pub learning: crate::learning::LearningSettings,
    /// The catalog.
    pub models: Vec<ModelSpec>,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The given file does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// A layer could not be parsed or has a wrong or unknown key.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    /// The catalog is malformed.
    #[error("invalid model catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// A setting is out of range.
    #[error("invalid setting `{key}`: {problem}")]
    OutOfRange {
        /// Dotted key.
        key: &'static str,
        /// Why.
        problem: String,
    },
}

impl Settings {
    /// Loads defaults ← `file` ← environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        // Only nested keys (`SECTION__KEY`) are settings: TRIAGE_CONFIG and other TRIAGE_*
        // variables of scripts must not be mistaken for unknown settings.
        let env = Env::prefixed("TRIAGE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        Self::load_with_env(file, env)
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let settings: Settings = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("server.max_message_bytes", self.server.max_message_bytes),
            ("server.max_messages", self.server.max_messages),
            ("server.max_text_bytes", self.server.max_text_bytes),
            ("encoder.workers", self.encoder.workers),
            ("encoder.intra_op_threads", self.encoder.intra_op_threads),
            ("encoder.queue_capacity", self.encoder.queue_capacity),
            ("encoder.max_batch", self.encoder.max_batch),
            ("log.queue_capacity", self.log.queue_capacity),
            (
                "log.queue_bytes",
                usize::try_from(self.log.queue_bytes).unwrap_or(usize::MAX),
            ),
            (
                "server.max_concurrent_streams",
                self.server.max_concurrent_streams as usize,
            ),
            (
                "server.request_timeout_ms",
                usize::try_from(self.server.request_timeout_ms).unwrap_or(usize::MAX),
            ),
            (
                "server.tls_handshake_ms",
                usize::try_from(self.server.tls_handshake_ms).unwrap_or(usize::MAX),
            ),
            (
                "metrics.header_read_ms",
                usize::try_from(self.metrics.header_read_ms).unwrap_or(usize::MAX),
            ),
            ("metrics.max_connections", self.metrics.max_connections),
            (
                "gateway.header_read_ms",
                usize::try_from(self.gateway.header_read_ms).unwrap_or(usize::MAX),
            ),
            ("gateway.max_connections", self.gateway.max_connections),
            (
                "gateway.body_read_ms",
                usize::try_from(self.gateway.body_read_ms).unwrap_or(usize::MAX),
            ),
            (
                "gateway.idle_ms",
                usize::try_from(self.gateway.idle_ms).unwrap_or(usize::MAX),
            ),
            (
                "gateway.connection_lifetime_ms",
                usize::try_from(self.gateway.connection_lifetime_ms).unwrap_or(usize::MAX),
            ),
            (
                "gateway.max_upstream_body_bytes",
                self.gateway.max_upstream_body_bytes,
            ),
            (
                "metrics.connection_secs",
                usize::try_from(self.metrics.connection_secs).unwrap_or(usize::MAX),
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::OutOfRange {
                    key,
                    problem: "must be at least 1".into(),
                });
            }
        }
        if (1..32).contains(&self.log.retention_days) {
            return Err(ConfigError::OutOfRange {
                key: "log.retention_days",
                problem: format!(
                    "{} days would forget spend within a month: use at least 32 (or 0 to keep \
                     everything)",
                    self.log.retention_days
                ),
            });
        }
        if self.log.pool_size == 0 {
            return Err(ConfigError::OutOfRange {
                key: "log.pool_size",
                problem: "must be at least 1 (PostgreSQL connections per replica)".into(),
            });
        }
        if self.log.backend == LogBackend::Postgres
            && self.log.url.as_deref().is_none_or(|u| u.trim().is_empty())
        {
            return Err(ConfigError::OutOfRange {
                key: "log.url",
                problem:
                    "log.backend = \"postgres\" needs log.url = \"postgres://user@host:port/db\" \
                          (or TRIAGE_LOG__URL in the environment)"
                        .into(),
            });
        }
        if self.log.compact_after_segments > 0 && self.log.compact_interval_ms == 0 {
            return Err(ConfigError::OutOfRange {
                key: "log.compact_interval_ms",
                problem: "must be at least 1 while log.compact_after_segments is on (set that \
                          to 0 to turn compaction off)"
                    .into(),
            });
        }
        if !(8..=512).contains(&self.encoder.max_tokens) {
            return Err(ConfigError::OutOfRange {
                key: "encoder.max_tokens",
                problem: format!(
                    "{} is outside 8..=512 (the encoder's position embeddings stop at 512)",
                    self.encoder.max_tokens
                ),
            });
        }
        let e = &self.exploration;
        if !(0.0..=0.5).contains(&e.rate) {
            return Err(ConfigError::OutOfRange {
                key: "exploration.rate",
                problem: format!("{} is outside 0..=0.5", e.rate),
            });
        }
        if !(0.0..=0.5).contains(&e.unfamiliar_rate) {
            return Err(ConfigError::OutOfRange {
                key: "exploration.unfamiliar_rate",
                problem: format!("{} is outside 0..=0.5", e.unfamiliar_rate),
            });
        }
        if !(e.new_model_boost >= 1.0 && e.new_model_boost.is_finite()) {
            return Err(ConfigError::OutOfRange {
                key: "exploration.new_model_boost",
                problem: "must be a finite number of at least 1".into(),
            });
        }
        if !(0.0..=1.0).contains(&e.learning_rate) {
            return Err(ConfigError::OutOfRange {
                key: "exploration.learning_rate",
                problem: format!("{} is outside 0..=1", e.learning_rate),
            });
        }
        let h = &self.health;
        // Durations past a year would overflow clocks (and mean a model is never retried).
        let duration = |x: f64| (0.0..=MAX_DURATION_SECS).contains(&x);
        let sane = (h.failure_rate > 0.0 && h.failure_rate <= 1.0)
            && (h.window_secs > 0.0 && duration(h.window_secs))
            && duration(h.open_secs)
            && duration(h.max_retry_after_secs)
            && h.half_open_probes >= 1;
        if !sane {
            return Err(ConfigError::OutOfRange {
                key: "health",
                problem: format!(
                    "failure_rate must be in (0, 1], window_secs in (0, {MAX_DURATION_SECS}], \
                     open_secs and max_retry_after_secs in [0, {MAX_DURATION_SECS}], and \
                     half_open_probes at least 1 (a breaker with no probes never recovers)"
                ),
            });
        }
        let ceiling = self.server.max_reported_cost_usd;
        if !(ceiling.is_finite() && ceiling > 0.0) {
            return Err(ConfigError::OutOfRange {
                key: "server.max_reported_cost_usd",
                problem: format!("{ceiling} must be a finite number > 0"),
            });
        }
        for (key, secs) in [
            ("server.drain_secs", self.server.drain_secs),
            ("server.keepalive_secs", self.server.keepalive_secs),
            (
                "server.keepalive_timeout_secs",
                self.server.keepalive_timeout_secs,
            ),
        ] {
            if !duration(secs) {
                return Err(ConfigError::OutOfRange {
                    key,
                    problem: format!("{secs} is outside [0, {MAX_DURATION_SECS}]"),
                });
            }
        }
        if let Some(a) = self
            .alerts
            .iter()
            .find(|a| !(a.threshold_usd.is_finite() && a.threshold_usd >= 0.0))
        {
            return Err(ConfigError::OutOfRange {
                key: "alerts",
                problem: format!("alert for {:?}: threshold_usd must be >= 0", a.scope),
            });
        }
        self.check_gateway()?;
        self.judge.check()?;
        self.learning.check()?;
        self.catalog().map(|_| ())
    }

    fn check_gateway(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        if g.max_attempts == 0 || g.max_body_bytes == 0 || g.deadline_ms == 0 {
            return Err(ConfigError::OutOfRange {
                key: "gateway",
                problem: "max_attempts, max_body_bytes and deadline_ms must be at least 1".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.providers {
            if p.name.trim().is_empty() || !seen.insert(p.name.as_str()) {
                return Err(ConfigError::OutOfRange {
                    key: "providers",
                    problem: format!("provider name {:?} is empty or listed twice", p.name),
                });
            }
            let scheme_ok = p.base_url.starts_with("http://") || p.base_url.starts_with("https://");
            if !scheme_ok {
                return Err(ConfigError::OutOfRange {
                    key: "providers",
                    problem: format!(
                        "provider {:?}: base_url {:?} must start with http:// or https://",
                        p.name, p.base_url
                    ),
                });
            }
            if p.connect_ms == 0 || p.first_byte_ms == 0 || p.total_ms == 0 {
                return Err(ConfigError::OutOfRange {
                    key: "providers",
                    problem: format!(
                        "provider {:?}: connect_ms, first_byte_ms and total_ms must be at least 1",
                        p.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// The `[[providers]]` entry that serves `model`, if any.
    pub fn provider_of(&self, model: &ModelSpec) -> Option<&ProviderSettings> {
        self.providers.iter().find(|p| p.name == model.provider)
    }

    /// The validated catalog.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        Ok(Catalog::new(self.models.clone())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("TRIAGE_TEST_UNSET_PREFIX_")
    }

    #[test]
    fn embedded_defaults_hold_the_twelve_model_catalog() {
        let s = Settings::load_with_env(None, no_env()).expect("defaults load");
        let catalog = s.catalog().expect("valid catalog");
        assert_eq!(catalog.models().len(), 12);
        let sonnet = catalog
            .get("claude-3-5-sonnet-20241022")
            .expect("sonnet listed");
        assert_eq!(
            (sonnet.input_usd_per_1m, sonnet.output_usd_per_1m),
            (3.0, 15.0)
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn the_database_url_comes_from_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[log]\nbackend = \"postgres\"\n").expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRIAGE_LOG__URL", "postgres://triage:secret@db:5432/triage");
            let s = Settings::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(s.log.backend, LogBackend::Postgres);
            assert_eq!(
                s.log.url.as_deref(),
                Some("postgres://triage:secret@db:5432/triage")
            );
            Ok(())
        });
        let defaults = Settings::load_with_env(None, no_env()).expect("defaults load");
        assert_eq!(
            defaults.log.backend,
            LogBackend::File,
            "no database by default"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn file_and_environment_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:6000\"\n[encoder]\nworkers = 3\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRIAGE_ENCODER__QUEUE_CAPACITY", "7");
            jail.set_env("TRIAGE_CONFIG", "ignored-here");
            let s = Settings::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(s.server.listen.port(), 6000);
            assert_eq!(s.encoder.workers, 3);
            assert_eq!(s.encoder.queue_capacity, 7);
            Ok(())
        });
    }

    #[test]
    fn clear_errors_for_missing_file_unknown_key_and_bad_catalog() {
        let missing = Settings::load_with_env(Some(Path::new("/nonexistent/x.toml")), no_env());
        assert!(matches!(missing, Err(ConfigError::Missing(_))));

        let dir = tempfile::tempdir().expect("tempdir");
        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "[server]\nlisen = \"127.0.0.1:1\"\n").expect("write");
        let err = Settings::load_with_env(Some(&typo), no_env())
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("lisen"));

        let dup = dir.path().join("dup.toml");
        let model = "[[models]]\nname = \"a\"\nprovider = \"p\"\ninput_usd_per_1m = 1.0\n\
                     output_usd_per_1m = 1.0\ncontext_window = 10\n\
                     latency = { first_token_ms = 1.0, output_tokens_per_s = 1.0 }\n";
        std::fs::write(&dup, format!("{model}{model}")).expect("write");
        let err = Settings::load_with_env(Some(&dup), no_env())
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("listed twice"));

        // Values that used to panic or wedge the server are refused at load, naming the key.
        for (section, line, key) in [
            ("health", "open_secs = 1e20", "health"),
            ("health", "half_open_probes = 0", "health"),
            ("health", "max_retry_after_secs = -1.0", "health"),
            ("server", "drain_secs = inf", "server.drain_secs"),
            ("log", "backend = \"postgres\"", "log.url"),
            ("log", "backend = \"postgres\"\nurl = \" \"", "log.url"),
            ("log", "backend = \"mysql\"", "backend"),
            ("log", "pool_size = 0", "log.pool_size"),
        ] {
            let bad = dir.path().join("bad.toml");
            std::fs::write(&bad, format!("[{section}]\n{line}\n")).expect("write");
            let err = Settings::load_with_env(Some(&bad), no_env())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{line}: {err}");
        }
    }
}
