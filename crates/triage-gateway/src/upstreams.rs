//! Which provider serves each catalog model, with one pooled HTTP client per provider.
//!
//! Upstream keys are read from the environment once, at start; they live only in the request
//! headers built here and never reach logs, errors, metrics or the decision log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use triage_core::Settings;
use triage_core::config::{ProviderKind, ProviderSettings};

/// One configured provider.
pub struct Provider {
    /// `[[providers]]` name.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// Where its chat endpoint is.
    pub endpoint: String,
    /// Headers sent on every call: the key and the configured extras.
    pub headers: HeaderMap,
    /// Longest wait for the first response byte.
    pub first_byte: Duration,
    /// Longest a whole call may take.
    pub total: Duration,
    /// Largest whole answer read, bytes (`gateway.max_upstream_body_bytes`).
    pub max_body: usize,
    /// Pooled connections (HTTP/2 where the upstream offers it over TLS).
    pub client: reqwest::Client,
}

/// A model as the gateway calls it.
#[derive(Clone)]
pub struct Target {
    /// Its provider.
    pub provider: Arc<Provider>,
    /// The provider's name for it.
    pub upstream_model: String,
    /// A reasoning model (its parameters follow [`crate::params`]).
    pub reasoning: bool,
}

/// Why the configured providers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// `api_key_env` names a variable that is not set.
    #[error(
        "provider {provider:?}: environment variable {var} (its api_key_env) is not set; export \
         it with the upstream API key, or remove api_key_env for an upstream without keys"
    )]
    MissingKey {
        /// Provider name.
        provider: String,
        /// Variable name.
        var: String,
    },
    /// A header name or value cannot be sent.
    #[error("provider {provider:?}: header {header:?} is not a valid HTTP header")]
    BadHeader {
        /// Provider name.
        provider: String,
        /// Header name.
        header: String,
    },
    /// A `gateway.aliases` entry names nothing, or hides a model.
    #[error(
        "gateway.aliases: {alias:?} → {target:?}: {problem}; map an alias to a virtual model \
         (triage, triage-quality, triage-cost, triage-verify) or a [[models]] name"
    )]
    Alias {
        /// The alias.
        alias: String,
        /// What it maps to.
        target: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `judge.model` names no catalog model, or one without a provider.
    #[error(
        "judge.model {model:?}: {problem}; name a [[models]] entry whose provider has a \
         [[providers]] entry, or set judge.provider and judge.upstream_model instead"
    )]
    JudgeModel {
        /// The model named.
        model: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `judge.provider` names no `[[providers]]` entry.
    #[error("judge.provider {provider:?} is not a [[providers]] name")]
    JudgeProvider {
        /// The provider named.
        provider: String,
    },
    /// The judge's rubric file cannot be used.
    #[error(transparent)]
    Rubric(#[from] crate::rubric::RubricError),
    /// The HTTP client could not be built.
    #[error("provider {provider:?}: cannot build its HTTP client: {message}")]
    Client {
        /// Provider name.
        provider: String,
        /// Why.
        message: String,
    },
}

/// The models the gateway can call.
pub struct Upstreams {
    by_model: HashMap<String, Target>,
    reachable: Arc<HashSet<String>>,
    providers: HashMap<String, Arc<Provider>>,
}

impl Upstreams {
    /// From `[[providers]]` and the catalog's `provider` / `upstream_model` fields.
    pub fn from_settings(settings: &Settings) -> Result<Self, ProviderError> {
        let mut providers = HashMap::new();
        for p in &settings.providers {
            let max_body = settings.gateway.max_upstream_body_bytes;
            providers.insert(p.name.clone(), Arc::new(provider(p, max_body)?));
        }
        let mut by_model = HashMap::new();
        for spec in &settings.models {
            if let Some(p) = providers.get(&spec.provider) {
                by_model.insert(
                    spec.name.clone(),
                    Target {
                        provider: Arc::clone(p),
                        upstream_model: spec.upstream_name().to_owned(),
                        reasoning: spec.reasoning,
                    },
                );
            }
        }
        let reachable = Arc::new(by_model.keys().cloned().collect());
        Ok(Self {
            by_model,
            reachable,
            providers,
        })
    }

    /// How `model` is called, if it can be.
    pub fn target(&self, model: &str) -> Option<&Target> {
        self.by_model.get(model)
    }

    /// The catalog models with a provider.
    pub fn reachable(&self) -> &Arc<HashSet<String>> {
        &self.reachable
    }

    /// Configured providers.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
    }

    /// `upstream_model` called through the provider named `provider` (a model outside the
    /// catalog, such as a judge), if that provider is configured.
    pub fn provider_target(&self, provider: &str, upstream_model: &str) -> Option<Target> {
        self.providers.get(provider).map(|p| Target {
            provider: Arc::clone(p),
            upstream_model: upstream_model.to_owned(),
            reasoning: false,
        })
    }
}

fn provider(p: &ProviderSettings, max_body: usize) -> Result<Provider, ProviderError> {
    let mut headers = HeaderMap::new();
    let bad = |header: &str| ProviderError::BadHeader {
        provider: p.name.clone(),
        header: header.to_owned(),
    };
    if let Some(var) = &p.api_key_env {
        let key = std::env::var(var).map_err(|_| ProviderError::MissingKey {
            provider: p.name.clone(),
            var: var.clone(),
        })?;
        let (name, value) = match p.kind {
            ProviderKind::Openai => ("authorization", format!("Bearer {key}")),
            ProviderKind::Anthropic => ("x-api-key", key),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| bad(name))?;
        value.set_sensitive(true);
        headers.insert(HeaderName::from_static(name), value);
    }
    if p.kind == ProviderKind::Anthropic && !p.headers.contains_key("anthropic-version") {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static("2023-06-01"),
        );
    }
    for (name, value) in &p.headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(name))?;
        let v = HeaderValue::from_str(value).map_err(|_| bad(name))?;
        headers.insert(n, v);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(p.connect_ms))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        // A redirect would carry the provider's key (and the prompt) to wherever it points:
        // never followed; the attempt fails and the next model answers.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ProviderError::Client {
            provider: p.name.clone(),
            message: e.to_string(),
        })?;
    let path = match p.kind {
        ProviderKind::Openai => "chat/completions",
        ProviderKind::Anthropic => "messages",
    };
    Ok(Provider {
        name: p.name.clone(),
        kind: p.kind,
        endpoint: format!("{}/{path}", p.base_url.trim_end_matches('/')),
        headers,
        first_byte: Duration::from_millis(p.first_byte_ms),
        total: Duration::from_millis(p.total_ms),
        max_body,
        client,
    })
}
