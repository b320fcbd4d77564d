//! Encoder cost per prompt at ~16, 64 and 256 tokens (tokenisation, ONNX run, pooling), with the
//! default settings (2 intra-op threads).

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use triage_core::{EncoderInput, Settings};
use triage_encoder::{Embedder, OnnxEmbedder, OnnxOptions, init_onnxruntime};

fn bench(c: &mut Criterion) {
    let root = triage_benches::root();
    let settings = Settings::load(None).expect("settings");
    let lib = settings.encoder.onnxruntime.as_ref().map(|p| root.join(p));
    init_onnxruntime(lib.as_deref()).expect("onnxruntime (run scripts/setup.sh)");
    let mut embedder =
        OnnxEmbedder::load(&OnnxOptions::from_settings(&settings.encoder, &root)).expect("encoder");
    let mut group = c.benchmark_group("encoder");
    group.sample_size(30);
    for tokens in [16, 64, 256] {
        let input = EncoderInput {
            primary: triage_benches::prompt_of(tokens),
            context: String::new(),
        };
        group.bench_function(format!("{tokens} tokens"), |b| {
            b.iter(|| embedder.embed_batch(&[black_box(&input)]).expect("embed"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
