//! Shared fixtures for Triage's benchmarks: prompts of known token lengths and an engine on the
//! real encoder and the bundled policy.

use std::path::{Path, PathBuf};

/// The workspace root (benchmarks run from anywhere).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A prompt of roughly `tokens` encoder tokens (plain English words are one token each).
pub fn prompt_of(tokens: usize) -> String {
    const WORDS: [&str; 16] = [
        "please", "explain", "how", "the", "tax", "on", "a", "small", "business", "is", "computed",
        "when", "income", "comes", "from", "abroad",
    ];
    let mut out = Vec::with_capacity(tokens);
    for i in 0..tokens.saturating_sub(1) {
        out.push(WORDS[i % WORDS.len()]);
    }
    out.join(" ") + "?"
}

/// The `i`-th of a stream of `Route` requests cycling through `distinct` prompts of 16 to 39
/// tokens (every later one is an exact repeat, answered from the encoder's cache).
pub fn case_request(i: usize, distinct: usize) -> triage_proto::v1::RouteRequest {
    triage_proto::v1::RouteRequest {
        messages: vec![triage_proto::v1::Message {
            role: "user".into(),
            content: format!("{} (case {})", prompt_of(16 + i % 24), i % distinct),
        }],
        ..Default::default()
    }
}

/// The value after `--flag` on the command line, parsed (`None` when the flag is absent).
pub fn flag<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    let args: Vec<String> = std::env::args().collect();
    let Some(raw) = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    else {
        return Ok(None);
    };
    raw.parse()
        .map(Some)
        .map_err(|_| format!("{name} {raw:?} is not a valid value"))
}

/// A decision record of the size serving writes: a 384-wide feature vector and twelve scored
/// candidates (for measuring the stores alone).
pub fn sample_decision() -> triage_log::DecisionRecord {
    let names: Vec<String> = (0..12).map(|i| format!("model-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut d = triage_testkit::records::decision("", &names, 0.0001);
    let features: Vec<f32> = (0..384).map(|i| (i as f32 * 0.37).sin()).collect();
    d.features = triage_log::encode_features(&features);
    d
}
