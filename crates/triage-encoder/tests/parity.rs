//! The Rust encoder against reference vectors computed independently in Python (numpy forward
//! pass over the original fp32 weights; see scripts/make_embedding_reference.py).

use std::path::{Path, PathBuf};

use triage_core::{EncoderInput, Settings};
use triage_encoder::{
    Embedder, EncodeError, EncoderPool, OnnxEmbedder, OnnxOptions, PoolOptions, init_onnxruntime,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn embedder(max_batch_threads: usize) -> OnnxEmbedder {
    let settings = Settings::load(None).expect("default settings");
    let lib = root().join(
        settings
            .encoder
            .onnxruntime
            .clone()
            .expect("library path in defaults"),
    );
    init_onnxruntime(Some(&lib)).expect("ONNX Runtime loads (run scripts/setup.sh first)");
    let mut options = OnnxOptions::from_settings(&settings.encoder, &root());
    options.intra_op_threads = max_batch_threads;
    OnnxEmbedder::load(&options).expect("encoder loads (run scripts/setup.sh first)")
}

struct Case {
    input: EncoderInput,
    text_tokens: u32,
    encoded_tokens: u32,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference_embeddings.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference file"))
            .expect("json");
    let cases = json["cases"].as_array().expect("cases");
    cases
        .iter()
        .map(|c| Case {
            input: EncoderInput {
                primary: c["primary"].as_str().expect("primary").into(),
                context: c["context"].as_str().expect("context").into(),
            },
            text_tokens: c["text_tokens"].as_u64().expect("text_tokens") as u32,
            encoded_tokens: c["encoded_tokens"].as_u64().expect("encoded_tokens") as u32,
            embedding: c["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|v| v.as_f64().expect("number") as f32)
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_the_python_reference() {
    let mut e = embedder(1);
    assert_eq!(e.dim(), 384);
    let cases = reference();
    assert!(cases.len() >= 8);
    for case in &cases {
        let got = e.embed_batch(&[&case.input]).expect("embeds").remove(0);
        let cos = cosine(&got.vector, &case.embedding);
        assert!(
            cos >= 0.999,
            "cosine {cos} < 0.999 for {:?}",
            case.input.primary
        );
        assert_eq!(
            got.encoded_tokens, case.encoded_tokens,
            "{:?}",
            case.input.primary
        );
        assert_eq!(
            got.text_tokens, case.text_tokens,
            "{:?}",
            case.input.primary
        );
        let norm: f32 = got.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}

#[test]
fn batching_with_padding_gives_the_same_vectors_as_one_by_one() {
    let mut e = embedder(2);
    let cases = reference();
    let inputs: Vec<&EncoderInput> = cases.iter().map(|c| &c.input).collect();
    let batch = e.embed_batch(&inputs).expect("batch");
    for (case, got) in cases.iter().zip(&batch) {
        assert!(cosine(&got.vector, &case.embedding) >= 0.999);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_refuses_work_beyond_its_queue_instead_of_queueing() {
    let pool = EncoderPool::start(
        PoolOptions {
            workers: 1,
            queue_capacity: 2,
            max_batch: 1,
            max_queue_wait: None,
        },
        |_| Ok(embedder(1)),
    )
    .expect("pool");
    let long = EncoderInput {
        primary: "word ".repeat(400),
        context: String::new(),
    };
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let pool = pool.clone();
            let input = long.clone();
            tokio::spawn(async move { pool.embed(input).await })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(e) => {
                assert_eq!(e.vector.len(), 384);
                ok += 1;
            }
            Err(EncodeError::QueueFull { capacity }) => {
                assert_eq!(capacity, 2);
                full += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(ok >= 1 && full >= 1, "ok={ok} full={full}");
    assert_eq!(pool.queue_depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_sheds_requests_that_waited_too_long() {
    let pool = EncoderPool::start(
        PoolOptions {
            workers: 1,
            queue_capacity: 64,
            max_batch: 1,
            max_queue_wait: Some(std::time::Duration::from_millis(5)),
        },
        |_| Ok(embedder(1)),
    )
    .expect("pool");
    let long = EncoderInput {
        primary: "word ".repeat(400),
        context: String::new(),
    };
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let pool = pool.clone();
            let input = long.clone();
            tokio::spawn(async move { pool.embed(input).await })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(EncodeError::Overloaded { waited_ms }) => {
                assert!(waited_ms >= 5);
                shed += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    // Each long input takes tens of ms, so most of the twelve wait past 5 ms.
    assert!(ok >= 1 && shed >= 1, "ok={ok} shed={shed}");
}
