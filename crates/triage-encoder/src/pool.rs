//! Encoder worker threads behind one bounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use triage_core::EncoderInput;

use crate::{Embedder, Embedding, EncoderError};

/// Sizing of an [`EncoderPool`].
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    /// Worker threads (one embedder each).
    pub workers: usize,
    /// Requests that may wait; more are refused with [`EncodeError::QueueFull`].
    pub queue_capacity: usize,
    /// Most requests a worker embeds in one model run.
    pub max_batch: usize,
    /// A request that waited longer than this for a worker is refused with
    /// [`EncodeError::Overloaded`] instead of being embedded late (`None`: no limit). This bounds
    /// the latency of accepted requests under overload.
    pub max_queue_wait: Option<Duration>,
}

/// Why a request got no embedding.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Every queue slot is taken: the caller should back off and retry.
    #[error("the encoder queue is full ({capacity} requests waiting); retry with backoff")]
    QueueFull {
        /// The configured capacity.
        capacity: usize,
    },
    /// The request waited longer than the configured limit: the server is overloaded.
    #[error(
        "the encoder is overloaded (this request waited {waited_ms} ms for a worker); retry with \
         backoff"
    )]
    Overloaded {
        /// How long it waited.
        waited_ms: u64,
    },
    /// The workers have stopped (shutdown or a crashed worker).
    #[error("the encoder has stopped")]
    Stopped,
    /// The embedder failed on this input.
    #[error(transparent)]
    Failed(#[from] EncoderError),
}

struct Job {
    input: EncoderInput,
    reply: oneshot::Sender<Result<Embedding, EncodeError>>,
    enqueued: Instant,
}

/// Handle to the encoder threads; cheap to clone.
#[derive(Clone)]
pub struct EncoderPool {
    sender: Sender<Job>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dim: usize,
}

impl EncoderPool {
    /// Starts `options.workers` threads, each owning the embedder `make(worker_index)` returns.
    /// Fails if any embedder fails to build, so a misconfigured server does not start.
    pub fn start<E, F>(options: PoolOptions, make: F) -> Result<Self, EncoderError>
    where
        E: Embedder + 'static,
        F: Fn(usize) -> Result<E, EncoderError>,
    {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(options.queue_capacity.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut dim = 0;
        for index in 0..options.workers.max(1) {
            let embedder = make(index)?;
            dim = embedder.dim();
            let receiver = receiver.clone();
            let queued = Arc::clone(&queued);
            let limits = (options.max_batch.max(1), options.max_queue_wait);
            thread::Builder::new()
                .name(format!("triage-encoder-{index}"))
                .spawn(move || worker_loop(embedder, receiver, queued, limits))
                .map_err(|e| {
                    EncoderError::Inference(format!("cannot spawn encoder thread: {e}"))
                })?;
        }
        Ok(Self {
            sender,
            queued,
            capacity: options.queue_capacity.max(1),
            dim,
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Requests waiting for a worker right now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Embeds one input; fails fast when the queue is full. Dropping the returned future before
    /// it completes (caller deadline, disconnect) lets the worker skip the job.
    pub async fn embed(&self, input: EncoderInput) -> Result<Embedding, EncodeError> {
        let (reply, response) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            input,
            reply,
            enqueued: Instant::now(),
        };
        match self.sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(EncodeError::QueueFull {
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(EncodeError::Stopped);
            }
        }
        response.await.unwrap_or(Err(EncodeError::Stopped))
    }
}

fn worker_loop<E: Embedder>(
    mut embedder: E,
    receiver: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    (max_batch, max_wait): (usize, Option<Duration>),
) {
    // Ends when every sender (every pool handle) is dropped.
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        jobs.retain(|job| !job.reply.is_closed());
        if let Some(limit) = max_wait {
            let (late, on_time): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|job| job.enqueued.elapsed() > limit);
            for job in late {
                let waited_ms =
                    u64::try_from(job.enqueued.elapsed().as_millis()).unwrap_or(u64::MAX);
                let _ = job.reply.send(Err(EncodeError::Overloaded { waited_ms }));
            }
            jobs = on_time;
        }
        if jobs.is_empty() {
            continue;
        }
        let inputs: Vec<&EncoderInput> = jobs.iter().map(|j| &j.input).collect();
        match embedder.embed_batch(&inputs) {
            Ok(embeddings) => {
                for (job, embedding) in jobs.into_iter().zip(embeddings) {
                    let _ = job.reply.send(Ok(embedding));
                }
            }
            Err(batch_error) if jobs.len() == 1 => {
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(Err(batch_error.into()));
                }
            }
            Err(_) => {
                // One bad input must not fail its batch-mates: retry each alone.
                for job in jobs {
                    let result = embedder
                        .embed_batch(&[&job.input])
                        .map_err(EncodeError::from)
                        .and_then(|mut v| v.pop().ok_or(EncodeError::Stopped));
                    let _ = job.reply.send(result);
                }
            }
        }
    }
    tracing::debug!("encoder worker stopped");
}
