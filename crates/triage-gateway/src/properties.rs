//! Property tests over what a caller's (or an upstream's) JSON reaches: the request parser and
//! the Anthropic translation both ways. On arbitrary JSON none may panic, and what comes out
//! is bounded by what went in: an error stays small, a translation no larger than a small
//! multiple of its input.
//!
//! `PROPTEST_CASES=N cargo test -p triage-gateway --lib properties` runs a longer campaign.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use triage_core::request::{MAX_ECHO_BYTES, MAX_PROBLEM_BYTES, RequestLimits};

use crate::anthropic::{self, StreamTranslator};
use crate::wire;

const LIMITS: RequestLimits = RequestLimits {
    max_messages: 64,
    max_text_bytes: 256 * 1024,
};

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The fields a chat-completions body has, with arbitrary values, and arbitrary others.
fn chat_body() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("model".to_owned()),
        Just("messages".to_owned()),
        Just("stream".to_owned()),
        Just("n".to_owned()),
        Just("max_tokens".to_owned()),
        Just("max_completion_tokens".to_owned()),
        Just("tools".to_owned()),
        Just("triage".to_owned()),
        Just("service_tier".to_owned()),
        Just("stop".to_owned()),
        "[a-z_]{1,12}",
    ];
    let message = (
        prop_oneof![
            Just(json!("user")),
            Just(json!("assistant")),
            Just(json!("system")),
            Just(json!("tool")),
            json_value()
        ],
        json_value(),
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    (
        proptest::collection::vec(message, 0..6),
        proptest::collection::btree_map(key, json_value(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(messages, fields, routed)| {
            let mut body: Map<String, Value> = fields.into_iter().collect();
            body.insert("messages".into(), messages.into());
            if routed {
                body.insert("model".into(), "triage".into());
            }
            Value::Object(body)
        })
}

fn size(v: &Value) -> usize {
    v.to_string().len()
}

proptest! {
    #[test]
    fn the_parser_never_panics_and_its_errors_stay_small(body in chat_body()) {
        let bytes = serde_json::to_vec(&body).expect("serializes");
        match wire::parse(&bytes, LIMITS, &wire::Aliases::new()) {
            Ok(request) => {
                for stream in [false, true] {
                    if let Ok(translated) = anthropic::request(&request.body, "m", stream) {
                        prop_assert!(size(&translated) <= 2 * bytes.len() + 256);
                    }
                }
            }
            Err(e) => {
                prop_assert!(e.field.len() <= MAX_ECHO_BYTES + '…'.len_utf8());
                prop_assert!(e.problem.len() <= MAX_PROBLEM_BYTES + '…'.len_utf8());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_or_parsed_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::parse(&bytes, LIMITS, &wire::Aliases::new());
    }

    #[test]
    fn an_upstream_answer_of_any_shape_translates_bounded(answer in json_value()) {
        if let Some((body, _)) = anthropic::response(&answer, "m", 1) {
            prop_assert!(size(&body) <= 2 * size(&answer) + 512);
        }
    }

    #[test]
    fn stream_events_of_any_shape_translate_bounded(events in proptest::collection::vec(json_value(), 0..12)) {
        let mut translator = StreamTranslator::new("m", 1);
        for event in &events {
            if let Ok(chunks) = translator.event(event) {
                let out: usize = chunks.iter().map(size).sum();
                prop_assert!(out <= 2 * size(event) + 1024);
            }
        }
    }
}
