//! Embeds training prompts with the serving encoder, through an on-disk cache.
//!
//! The cache file is named by the encoder model's sha256 and token budget, and holds one record
//! per prompt: `sha256(prompt) (32 bytes) | text_tokens (u32 LE) | dim × f32 LE`. A different
//! model or budget reads a different file; re-training reuses every vector already computed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use triage_core::features::{PromptStats, features};
use triage_core::{Conversation, EncoderInput};
use triage_encoder::{Embedder, Embedding};

use crate::TrainError;

/// Prompts embedded per model run.
const BATCH: usize = 32;

/// An embedding cache bound to one encoder model and token budget.
pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    entries: HashMap<[u8; 32], Embedding>,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache for `model_file` under `dir`.
    pub fn open(
        dir: &Path,
        model_file: &Path,
        max_tokens: usize,
        dim: usize,
    ) -> Result<Self, TrainError> {
        let io = |e: std::io::Error| TrainError::Cache(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let model_hash = hex::encode(Sha256::digest(std::fs::read(model_file).map_err(io)?));
        let path = dir.join(format!("{}-{max_tokens}.bin", &model_hash[..16]));
        let mut entries = HashMap::new();
        if path.exists() {
            let mut reader = BufReader::new(File::open(&path).map_err(io)?);
            let record = 32 + 4 + 4 * dim;
            let mut buf = vec![0u8; record];
            // A torn final record (interrupted run) is ignored: it is simply recomputed.
            while reader.read_exact(&mut buf).is_ok() {
                let mut key = [0u8; 32];
                key.copy_from_slice(&buf[..32]);
                let text_tokens = u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]);
                let vector = buf[36..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                entries.insert(
                    key,
                    Embedding {
                        vector,
                        text_tokens,
                        encoded_tokens: 0,
                    },
                );
            }
        }
        Ok(Self { path, dim, entries })
    }

    /// Vectors already cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(input: &EncoderInput) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(input.primary.as_bytes());
        h.update([0u8]);
        h.update(input.context.as_bytes());
        h.finalize().into()
    }

    fn append(&mut self, new: &[([u8; 32], Embedding)]) -> Result<(), TrainError> {
        let io = |e: std::io::Error| TrainError::Cache(format!("{}: {e}", self.path.display()));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let mut w = BufWriter::new(file);
        for (key, e) in new {
            w.write_all(key).map_err(io)?;
            w.write_all(&e.text_tokens.to_le_bytes()).map_err(io)?;
            for v in &e.vector {
                w.write_all(&v.to_le_bytes()).map_err(io)?;
            }
        }
        w.flush().map_err(io)?;
        for (key, e) in new {
            self.entries.insert(*key, e.clone());
        }
        Ok(())
    }
}

/// Feature vectors and input-token estimates for `texts`, computed exactly as the server does
/// for a one-turn conversation.
#[derive(Clone, Debug)]
pub struct PromptFeatures {
    /// One feature vector per prompt.
    pub features: Vec<Vec<f32>>,
    /// Estimated input tokens per prompt (for predicted cost).
    pub input_tokens: Vec<u32>,
}

/// Embeds every text (cached ones are not re-run), showing progress and throughput on stderr.
pub fn prompt_features(
    texts: &[&str],
    embedder: &mut dyn Embedder,
    cache: &mut EmbeddingCache,
    show_progress: bool,
) -> Result<PromptFeatures, TrainError> {
    let conversations: Vec<Conversation> = texts
        .iter()
        .map(|t| Conversation::single_user(t))
        .collect::<Result<_, _>>()
        .map_err(|e| TrainError::Data(format!("a prompt cannot be routed: {e}")))?;
    let inputs: Vec<EncoderInput> = conversations
        .iter()
        .map(EncoderInput::from_conversation)
        .collect();
    let keys: Vec<[u8; 32]> = inputs.iter().map(EmbeddingCache::key).collect();
    let mut todo: Vec<usize> = (0..inputs.len())
        .filter(|&i| !cache.entries.contains_key(&keys[i]))
        .collect();
    todo.sort_by_key(|&i| inputs[i].primary.len()); // similar lengths batch with less padding
    todo.dedup_by_key(|i| keys[*i]);

    let mut progress = Progress::new(todo.len(), show_progress, PROGRESS_LOG_EVERY);
    let started = Instant::now();
    for chunk in todo.chunks(BATCH) {
        let batch: Vec<&EncoderInput> = chunk.iter().map(|&i| &inputs[i]).collect();
        let out = embedder
            .embed_batch(&batch)
            .map_err(|e| TrainError::Encoder(e.to_string()))?;
        if out.iter().any(|e| e.vector.len() != cache.dim) {
            return Err(TrainError::Encoder(
                "encoder width differs from the cache's".into(),
            ));
        }
        let new: Vec<_> = chunk.iter().map(|&i| keys[i]).zip(out).collect();
        cache.append(&new)?;
        progress.advance(chunk.len());
    }
    progress.finish();
    if !todo.is_empty() {
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            embedded = todo.len(),
            cached = inputs.len() - todo.len(),
            prompts_per_s = format!("{:.1}", todo.len() as f64 / secs.max(1e-9)),
            "embedded prompts"
        );
    }

    let mut features_out = Vec::with_capacity(inputs.len());
    let mut input_tokens = Vec::with_capacity(inputs.len());
    for (conversation, key) in conversations.iter().zip(&keys) {
        let e = cache
            .entries
            .get(key)
            .ok_or_else(|| TrainError::Cache("embedding vanished".into()))?;
        let stats = PromptStats::new(conversation, e.text_tokens);
        input_tokens.push(stats.input_tokens);
        features_out.push(features(&stats, &e.vector));
    }
    Ok(PromptFeatures {
        features: features_out,
        input_tokens,
    })
}

/// How often embedding progress is logged when no bar is drawn.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Embedding progress: a bar for a person at a terminal; otherwise (CI, `nohup`, a file) a
/// plain log line every `PROGRESS_LOG_EVERY`, so a long step is never silent and writes no
/// terminal escapes.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: std::time::Duration,
    total: usize,
    done: usize,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: usize, bar_wanted: bool, every: std::time::Duration) -> Self {
        use std::io::IsTerminal;
        let bar = (bar_wanted && total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "embedding {bar:40} {pos}/{len} prompts  {per_sec}  eta {eta}",
            );
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            every,
            total,
            done: 0,
            started: now,
            last_line: now,
        }
    }

    /// Counts `n` more done; returns whether a log line was written.
    fn advance(&mut self, n: usize) -> bool {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
            return false;
        }
        let due = self.last_line.elapsed() >= self.every && self.done < self.total;
        if due {
            self.last_line = Instant::now();
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            tracing::info!(
                done = self.done,
                total = self.total,
                prompts_per_s = format!("{rate:.1}"),
                eta_s = eta.round() as u64,
                "embedding"
            );
        }
        due
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_bar_progress_is_logged_at_intervals_until_done() {
        let mut often = Progress::new(10, false, std::time::Duration::ZERO);
        assert!(often.bar.is_none());
        assert!(often.advance(4), "a line when one is due");
        assert!(!often.advance(6), "none once everything is done");
        let mut rarely = Progress::new(10, false, std::time::Duration::from_secs(3600));
        assert!(!rarely.advance(4), "none before the interval");
    }
}
