//! Exact-repeat cache of embeddings: agents and retries resend the same conversation, and a
//! retry after a fallback routes the same prompt again; those skip the encoder.
//!
//! Keyed by SHA-256 of the exact encoder input (the primary turn and its context), so only a
//! byte-identical input hits; one engine serves one encoder, so the model needs no place in
//! the key. Bounded by `encoder.cache_entries` (each entry is one embedding, about 1.6 KB for a
//! 384-wide encoder, so entries bound bytes too); the oldest entries are evicted first.

use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use triage_core::EncoderInput;
use triage_encoder::Embedding;
use triage_guard::BoundedMap;

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
    entries: Mutex<BoundedMap<Arc<Embedding>>>,
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

    /// The cached embedding of `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Embedding>> {
        self.lock().get(key).cloned()
    }

    /// Caches `embedding` under `key`; returns whether an older entry was evicted.
    pub fn insert(&self, key: &str, embedding: Arc<Embedding>) -> bool {
        self.lock().insert(key, embedding)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<Arc<Embedding>>> {
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

    fn embedding(x: f32) -> Arc<Embedding> {
        Arc::new(Embedding {
            vector: vec![x],
            text_tokens: 1,
            encoded_tokens: 3,
        })
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
        assert_eq!(cache.get(&a).map(|e| e.vector[0]), Some(1.0));
        assert!(
            cache.insert("third", embedding(3.0)),
            "full: the oldest is evicted"
        );
        assert!(cache.get(&a).is_none() && cache.get(&b).is_some());
    }
}
