//! The exact-repeat cache on the real encoder: a repeat is a hit, and its decision is the one
//! the encoder's own embedding gives; with the cache off, every request is embedded.

use std::path::Path;

use triage_core::{Conversation, Preferences, Settings};
use triage_engine::{CacheUse, RoutingEngine, RoutingRequest};

fn request(prompt: &str) -> RoutingRequest {
    RoutingRequest::anonymous(
        Conversation::single_user(prompt).expect("valid"),
        Preferences::default(),
    )
}

fn engine(cache_entries: usize) -> RoutingEngine {
    let mut settings = Settings::load(None).expect("defaults");
    settings.encoder.cache_entries = cache_entries;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    RoutingEngine::from_settings(&settings, &root).expect("engine (run scripts/setup.sh first)")
}

#[tokio::test]
async fn a_repeat_hits_and_decides_exactly_as_a_miss() {
    let prompt = "Explain how a circuit breaker protects a service from a failing dependency.";
    let cached = engine(16);
    let miss = cached.route("a", &request(prompt)).await.expect("routes");
    let hit = cached.route("b", &request(prompt)).await.expect("routes");
    assert_eq!(miss.cache, CacheUse::Miss { evicted: false });
    assert_eq!(hit.cache, CacheUse::Hit);
    assert_eq!(
        hit.decision, miss.decision,
        "same candidates, predictions and reasons"
    );
    assert_eq!(hit.features, miss.features);

    let other = cached
        .route("c", &request("What is 2 + 2?"))
        .await
        .expect("routes");
    assert!(
        matches!(other.cache, CacheUse::Miss { .. }),
        "a different prompt is embedded"
    );

    let uncached = engine(0);
    let first = uncached.route("d", &request(prompt)).await.expect("routes");
    let again = uncached.route("e", &request(prompt)).await.expect("routes");
    assert_eq!((first.cache, again.cache), (CacheUse::Off, CacheUse::Off));
    assert_eq!(first.decision, miss.decision, "cached or not, one decision");
}
