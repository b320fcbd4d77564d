//! Prompt-cache tokens are priced at the catalog's cached rates: an OpenAI-style model's
//! repeated prompt (all of it read from the cache), and an Anthropic model's cache write and
//! then read at a `cache_control` breakpoint, through chat completions and the Messages door.

mod common;

use common::{Router, header, start_with};
use serde_json::{Value, json};
use triage_testkit::Behaviour;

const MINI: &str = "gpt-4o-mini-2024-07-18";
const HAIKU: &str = "claude-3-haiku-20240307";

async fn cached() -> Router {
    let behaviour = Behaviour {
        prompt_cache: true,
        ..Behaviour::default()
    };
    start_with(behaviour, |s| {
        for m in &mut s.models {
            // A tenth of the input price to read, a quarter more to write (Anthropic's ratios).
            m.cached_input_usd_per_1m = Some(m.input_usd_per_1m / 10.0);
            m.cache_write_usd_per_1m = Some(m.input_usd_per_1m * 1.25);
        }
    })
    .await
}

/// The answer's cost and its input and output tokens as the client was told.
async fn cost_of(r: reqwest::Response) -> (f64, f64, f64) {
    assert_eq!(r.status(), 200);
    let cost: f64 = header(&r, "x-triage-cost-usd").parse().expect("a cost");
    let body: Value = r.json().await.expect("json");
    let (i, o) = match body.get("usage") {
        Some(u) if u.get("prompt_tokens").is_some() => {
            (&u["prompt_tokens"], &u["completion_tokens"])
        }
        Some(u) => (&u["input_tokens"], &u["output_tokens"]),
        None => panic!("no usage: {body}"),
    };
    (cost, i.as_f64().unwrap_or(0.0), o.as_f64().unwrap_or(0.0))
}

#[tokio::test]
async fn a_repeated_prompt_is_priced_at_the_cached_rate() {
    let router = cached().await;
    let spec = router
        .service
        .engine()
        .catalog()
        .get(MINI)
        .cloned()
        .expect("catalog");
    let ask = json!({"model": MINI, "messages": [{"role": "user", "content": "A long shared preamble."}]});
    let (first, input, output) = cost_of(router.chat(ask.clone()).await).await;
    assert!((first - spec.cost_usd(input, output)).abs() < 1e-9);
    let (second, input, output) = cost_of(router.chat(ask).await).await;
    let priced = spec.cost_with_cache(input, input, 0.0, output);
    assert!((second - priced).abs() < 1e-9, "{second} vs {priced}");
    assert!(second < first);
}

#[tokio::test]
async fn anthropic_cache_writes_and_reads_are_priced_apart() {
    let router = cached().await;
    let spec = router
        .service
        .engine()
        .catalog()
        .get(HAIKU)
        .cloned()
        .expect("catalog");
    let ask = json!({"model": HAIKU, "max_tokens": 100,
        "system": [{"type": "text", "text": "A long shared preamble.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "What is 2+2?"}]});
    let send = || {
        router
            .http
            .post(router.url("/v1/messages"))
            .json(&ask)
            .send()
    };
    // The Messages door reports Anthropic's usage: input_tokens without the cache's.
    let mut written_then_read = Vec::new();
    for _ in 0..2 {
        let r = send().await.expect("answers");
        assert_eq!(r.status(), 200);
        let cost: f64 = header(&r, "x-triage-cost-usd").parse().expect("a cost");
        let body: Value = r.json().await.expect("json");
        let n = |k: &str| body["usage"][k].as_f64().unwrap_or(-1.0);
        let (fresh, read, write) = (
            n("input_tokens"),
            n("cache_read_input_tokens"),
            n("cache_creation_input_tokens"),
        );
        let priced = spec.cost_with_cache(fresh + read + write, read, write, n("output_tokens"));
        // The header has eight decimals.
        assert!((cost - priced).abs() < 1e-8, "{cost} vs {priced}: {body}");
        written_then_read.push((read, write, cost));
    }
    let [(read0, write0, first), (read1, write1, second)] = written_then_read[..] else {
        unreachable!("two calls")
    };
    assert!(
        read0 == 0.0 && write0 > 0.0,
        "the first call writes the cache"
    );
    assert!(read1 == write0 && write1 == 0.0, "the second reads it");
    assert!(first > second);
}
