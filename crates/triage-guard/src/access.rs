//! API keys: who may route, to which models, within which spend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One API key. Only its SHA-256 is stored (`triage keys hash KEY` prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Name shown in logs and metrics.
    pub name: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Models this key may be routed to (empty: every model).
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Spend limit per UTC day, USD.
    #[serde(default)]
    pub daily_usd: Option<f64>,
    /// Spend limit per UTC calendar month, USD.
    #[serde(default)]
    pub monthly_usd: Option<f64>,
    /// May call administrative methods (`ReportHealth`).
    #[serde(default)]
    pub admin: bool,
}

impl KeySpec {
    /// Whether the key has a daily or monthly limit.
    pub fn has_limits(&self) -> bool {
        self.daily_usd.is_some() || self.monthly_usd.is_some()
    }

    /// The key's spend limits.
    pub fn limits(&self) -> crate::ledger::Limits {
        crate::ledger::Limits {
            daily_usd: self.daily_usd,
            monthly_usd: self.monthly_usd,
        }
    }
}

/// The `[auth]` configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Serve requests without a key (as the `anonymous` caller, without limits and never as an
    /// admin). Unset: only when no key is configured, so adding a key closes the server.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Keys given inline.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// A TOML file with more `[[keys]]`.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AccessError {
    /// No key, and anonymous access is off.
    #[error(
        "this server needs an API key: send `authorization: Bearer <key>` (gRPC metadata or an \
         HTTP header; the HTTP gateway also takes `api-key: <key>`)"
    )]
    Missing,
    /// Administrative methods need a key with `admin = true`; anonymous callers have none.
    #[error(
        "this method needs an API key with admin = true (anonymous callers are never admins): \
         configure one under [[auth.keys]] and send `authorization: Bearer <key>`"
    )]
    AnonymousNotAdmin,
    /// The key is not configured.
    #[error("unknown API key (check for typos; keys are configured under [[auth.keys]])")]
    Unknown,
    /// The header is not `Bearer <key>`.
    #[error("malformed authorization header: expected `Bearer <key>`")]
    Malformed,
    /// The key may not call this method.
    #[error("API key {0:?} may not call this method (it needs admin = true)")]
    NotAdmin(String),
    /// The keys file or a key entry is invalid.
    #[error("invalid API key configuration: {0}")]
    Config(String),
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    /// `None`: anonymous.
    pub key: Option<Arc<KeySpec>>,
}

impl Caller {
    /// The key's name (`None`: anonymous), as records store it.
    pub fn key_name(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.name.as_str())
    }

    /// The key's name, or `anonymous`.
    pub fn name(&self) -> &str {
        self.key.as_ref().map_or("anonymous", |k| k.name.as_str())
    }

    /// Whether the key may be routed to `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.key.as_ref().is_none_or(|k| {
            k.allowed_models.is_empty() || k.allowed_models.iter().any(|m| m == model)
        })
    }

    /// Fails unless the caller holds an admin key. Anonymous callers never are admins: an
    /// operator's override must be traceable to a key, and an open server must not let any
    /// passer-by take models out of service.
    pub fn require_admin(&self) -> Result<(), AccessError> {
        match &self.key {
            Some(k) if k.admin => Ok(()),
            Some(k) => Err(AccessError::NotAdmin(k.name.clone())),
            None => Err(AccessError::AnonymousNotAdmin),
        }
    }
}

/// Lower-case hex SHA-256 of a key, as stored in the configuration.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeySpec>,
}

/// Configured keys, looked up by hash.
#[derive(Clone, Debug)]
pub struct AccessControl {
    allow_anonymous: bool,
    by_hash: HashMap<String, Arc<KeySpec>>,
}

impl AccessControl {
    /// Validates the keys (inline and from `keys_file`, relative to `base`).
    pub fn new(settings: &AuthSettings, base: &Path) -> Result<Self, AccessError> {
        let mut keys = settings.keys.clone();
        if let Some(file) = &settings.keys_file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| AccessError::Config(format!("{}: {e}", path.display())))?;
            let parsed: KeysFile = toml::from_str(&text)
                .map_err(|e| AccessError::Config(format!("{}: {e}", path.display())))?;
            keys.extend(parsed.keys);
        }
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for k in keys {
            // Spend is kept per key name: two keys with one name, or a key named like the
            // anonymous caller or the global scope, would share a budget and alerts.
            if k.name.trim().is_empty() || ["anonymous", "global"].contains(&k.name.as_str()) {
                return Err(AccessError::Config(format!(
                    "key name {:?} is empty or reserved (anonymous and global are not key names)",
                    k.name
                )));
            }
            if !names.insert(k.name.clone()) {
                return Err(AccessError::Config(format!(
                    "key name {:?} is used twice: each key needs its own name",
                    k.name
                )));
            }
            let valid_hash =
                k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid_hash {
                return Err(AccessError::Config(format!(
                    "key {:?}: sha256 must be 64 hex digits (`triage keys hash <key>` prints it)",
                    k.name
                )));
            }
            for (what, limit) in [("daily_usd", k.daily_usd), ("monthly_usd", k.monthly_usd)] {
                if limit.is_some_and(|l| !l.is_finite() || l < 0.0) {
                    return Err(AccessError::Config(format!(
                        "key {:?}: {what} must be a finite number >= 0",
                        k.name
                    )));
                }
            }
            let hash = k.sha256.to_ascii_lowercase();
            if by_hash.insert(hash, Arc::new(k.clone())).is_some() {
                return Err(AccessError::Config(format!(
                    "key {:?}: the same key is configured twice",
                    k.name
                )));
            }
        }
        let allow_anonymous = settings.allow_anonymous.unwrap_or(by_hash.is_empty());
        if allow_anonymous && !by_hash.is_empty() {
            tracing::warn!(
                keys = by_hash.len(),
                "auth.allow_anonymous = true beside configured keys: callers without a key are \
                 served without allow-lists or budgets"
            );
        }
        Ok(Self {
            allow_anonymous,
            by_hash,
        })
    }

    /// Whether callers without a key are served.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The caller behind an `authorization` header value (`None`: no header).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AccessError> {
        let Some(header) = authorization else {
            return if self.allow_anonymous {
                Ok(Caller::default())
            } else {
                Err(AccessError::Missing)
            };
        };
        if self.by_hash.is_empty() && self.allow_anonymous {
            // No keys are configured: every caller is anonymous. OpenAI SDKs always send some
            // key (`api_key="unused"`), and a server without keys must not refuse them.
            return Ok(Caller::default());
        }
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AccessError::Malformed)?;
        self.by_hash
            .get(&hash_key(key))
            .map(|k| Caller {
                key: Some(Arc::clone(k)),
            })
            .ok_or(AccessError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_by_hash_and_limit_models() {
        let settings = AuthSettings {
            allow_anonymous: Some(false),
            keys: vec![KeySpec {
                name: "team".into(),
                sha256: hash_key("s3cret"),
                allowed_models: vec!["small".into()],
                daily_usd: Some(1.0),
                monthly_usd: None,
                admin: false,
            }],
            keys_file: None,
        };
        let access = AccessControl::new(&settings, Path::new(".")).expect("valid");
        let caller = access
            .authenticate(Some("Bearer s3cret"))
            .expect("known key");
        assert_eq!(caller.name(), "team");
        assert!(caller.may_use("small") && !caller.may_use("big"));
        assert_eq!(access.authenticate(None), Err(AccessError::Missing));
        assert_eq!(
            access.authenticate(Some("Bearer nope")),
            Err(AccessError::Unknown)
        );
        assert_eq!(
            access.authenticate(Some("s3cret")),
            Err(AccessError::Malformed)
        );
        assert!(caller.require_admin().is_err());
    }

    #[test]
    fn without_keys_any_presented_key_is_anonymous() {
        let open = AuthSettings {
            allow_anonymous: Some(true),
            ..AuthSettings::default()
        };
        let access = AccessControl::new(&open, Path::new(".")).expect("valid");
        let caller = access.authenticate(Some("Bearer unused")).expect("served");
        assert!(caller.key.is_none() && caller.may_use("anything"));
        let closed = AuthSettings {
            allow_anonymous: Some(false),
            ..AuthSettings::default()
        };
        let access = AccessControl::new(&closed, Path::new(".")).expect("valid");
        assert!(access.authenticate(Some("Bearer unused")).is_err());
    }

    #[test]
    fn configured_keys_close_the_server_unless_anonymous_is_asked_for() {
        let key = KeySpec {
            name: "ops".into(),
            sha256: hash_key("s3cret"),
            allowed_models: vec![],
            daily_usd: None,
            monthly_usd: None,
            admin: true,
        };
        let unset = AuthSettings {
            allow_anonymous: None,
            keys: vec![key.clone()],
            keys_file: None,
        };
        let access = AccessControl::new(&unset, Path::new(".")).expect("valid");
        assert!(!access.allows_anonymous());
        assert_eq!(access.authenticate(None), Err(AccessError::Missing));
        let open = AuthSettings {
            allow_anonymous: Some(true),
            ..unset.clone()
        };
        let access = AccessControl::new(&open, Path::new(".")).expect("valid");
        let anonymous = access.authenticate(None).expect("explicitly allowed");
        assert_eq!(
            anonymous.require_admin(),
            Err(AccessError::AnonymousNotAdmin),
            "anonymous callers are never admins"
        );
        let keyless = AccessControl::new(&AuthSettings::default(), Path::new(".")).expect("valid");
        assert!(
            keyless.allows_anonymous(),
            "no keys: an open server by default"
        );
        let ops = access.authenticate(Some("Bearer s3cret")).expect("known");
        assert_eq!(ops.require_admin(), Ok(()));
    }

    #[test]
    fn key_names_are_unique_and_not_reserved() {
        let key = |name: &str, secret: &str| KeySpec {
            name: name.into(),
            sha256: hash_key(secret),
            allowed_models: vec![],
            daily_usd: None,
            monthly_usd: None,
            admin: false,
        };
        for keys in [
            vec![key("a", "1"), key("a", "2")],
            vec![key("global", "1")],
            vec![key("anonymous", "1")],
        ] {
            let settings = AuthSettings {
                allow_anonymous: Some(false),
                keys,
                keys_file: None,
            };
            assert!(matches!(
                AccessControl::new(&settings, Path::new(".")),
                Err(AccessError::Config(_))
            ));
        }
    }

    #[test]
    fn bad_key_entries_are_configuration_errors() {
        let mut settings = AuthSettings::default();
        settings.keys.push(KeySpec {
            name: "x".into(),
            sha256: "abc".into(),
            allowed_models: vec![],
            daily_usd: None,
            monthly_usd: None,
            admin: false,
        });
        assert!(matches!(
            AccessControl::new(&settings, Path::new(".")),
            Err(AccessError::Config(m)) if m.contains("64 hex")
        ));
    }
}
