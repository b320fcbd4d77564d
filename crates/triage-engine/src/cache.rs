//! Exact-repeat cache of embeddings and predictions: agents and retries resend the same
//! conversation, and a retry after a fallback routes the same prompt again; those skip the
//! encoder, and the policy's scoring too.
//!
//! Keyed by SHA-256 of the exact encoder input (the primary turn and its context), so only a
//! byte-identical input hits; one engine serves one encoder, so the model needs no place in
//! the key. An entry also keeps the last predictions made for it, tagged with the policy
//! version and a hash of the feature vector they were made from: the features also count the
//! conversation's shape, which the encoder input does not hold, and a reloaded policy predicts
//! anew. Bounded by `encoder.cache_entries` (an entry is about 2.7 KB for a 384-wide encoder
//! and twelve models, so entries bound bytes too); the oldest entries are evicted first.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use triage_core::EncoderInput;
use triage_encoder::Embedding;
use triage_guard::BoundedMap;
use triage_policy::Prediction;

/// One input's embedding, and the predictions last made from it.
pub struct CachedInput {
    /// The encoder's output.
    pub embedding: Embedding,
    scored: Mutex<Option<Arc<Scored>>>,
}

/// Predictions for one feature vector by one policy version.
pub struct Scored {
    policy_version: String,
    features: u64,
    /// Per model, in the policy's order.
    pub predictions: Vec<(String, Prediction)>,
    /// How familiar the input is to the policy (`None`: it cannot tell).
    pub familiarity: Option<f64>,
}

impl CachedInput {
    /// An entry for a fresh embedding.
    pub fn new(embedding: Embedding) -> Self {
        Self {
            embedding,
            scored: Mutex::new(None),
        }
    }

    /// The predictions made for exactly `features` by `policy_version`, if remembered.
    pub fn scored(&self, policy_version: &str, features: &[f32]) -> Option<Arc<Scored>> {
        let scored = self.lock().clone()?;
        (scored.policy_version == policy_version && scored.features == feature_hash(features))
            .then_some(scored)
    }

    /// Remembers `predictions` made for `features` by `policy_version`, and returns them.
    pub fn remember(
        &self,
        policy_version: &str,
        features: &[f32],
        predictions: Vec<(String, Prediction)>,
        familiarity: Option<f64>,
    ) -> Arc<Scored> {
        let scored = Arc::new(Scored {
            policy_version: policy_version.to_owned(),
            features: feature_hash(features),
            predictions,
            familiarity,
        });
        *self.lock() = Some(Arc::clone(&scored));
        scored
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Scored>>> {
        self.scored.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A hash of the exact bits of a feature vector.
fn feature_hash(features: &[f32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in features {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

/// How a request's embedding was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// The cache had it: no encoder run.
    Hit,
    /// The encoder ran, and the result was cached (`evicted`: an older entry made room).
    Miss {
        /// Whether an entry was evicted for it.
        evicted: bool,
    },
    /// The cache is off (`encoder.cache_entries = 0`).
    Off,
}

/// The cache.
pub struct EmbeddingCache {
    entries: Mutex<BoundedMap<Arc<CachedInput>>>,
}

impl EmbeddingCache {
    /// At most `entries` embeddings; `None` when `entries` is 0 (off).
    pub fn new(entries: usize) -> Option<Self> {
        (entries > 0).then(|| Self {
            entries: Mutex::new(BoundedMap::new(entries)),
        })
    }

    /// The key of an encoder input.
    pub fn key(input: &EncoderInput) -> String {
        let mut h = Sha256::new();
        h.update(input.primary.len().to_le_bytes());
        h.update(input.primary.as_bytes());
        h.update(input.context.as_bytes());
        hex::encode(h.finalize())
    }

    /// The cached entry of `key`.
    pub fn get(&self, key: &str) -> Option<Arc<CachedInput>> {
        self.lock().get(key).cloned()
    }

    /// Caches `entry` under `key`; returns whether an older entry was evicted.
    pub fn insert(&self, key: &str, embedding: Arc<CachedInput>) -> bool {
        self.lock().insert(key, embedding)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<Arc<CachedInput>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(primary: &str, context: &str) -> EncoderInput {
        EncoderInput {
            primary: primary.into(),
            context: context.into(),
        }
    }

    fn embedding(x: f32) -> Arc<CachedInput> {
        Arc::new(CachedInput::new(Embedding {
            vector: vec![x],
            text_tokens: 1,
            encoded_tokens: 3,
        }))
    }

    #[test]
    fn only_exact_inputs_hit_and_the_oldest_go_first() {
        assert!(EmbeddingCache::new(0).is_none());
        let cache = EmbeddingCache::new(2).expect("on");
        let (a, b) = (
            EmbeddingCache::key(&input("q", "")),
            EmbeddingCache::key(&input("q", " ")),
        );
        assert_ne!(a, b, "context counts");
        assert_ne!(
            EmbeddingCache::key(&input("ab", "c")),
            EmbeddingCache::key(&input("a", "bc")),
            "the split between turn and context counts"
        );
        assert!(!cache.insert(&a, embedding(1.0)));
        assert!(!cache.insert(&b, embedding(2.0)));
        assert_eq!(cache.get(&a).map(|e| e.embedding.vector[0]), Some(1.0));
        assert!(
            cache.insert("third", embedding(3.0)),
            "full: the oldest is evicted"
        );
        assert!(cache.get(&a).is_none() && cache.get(&b).is_some());
    }

    #[test]
    fn predictions_are_reused_only_for_the_same_policy_and_features() {
        let entry = embedding(1.0);
        let p = Prediction {
            quality: 0.5,
            output_tokens: 100.0,
        };
        entry.remember("v1", &[1.0, 2.0], vec![("m".into(), p)], None);
        assert!(entry.scored("v1", &[1.0, 2.0]).is_some());
        assert!(entry.scored("v2", &[1.0, 2.0]).is_none(), "a new policy");
        assert!(
            entry.scored("v1", &[1.0, 2.5]).is_none(),
            "another conversation shape"
        );
    }
}
