//! Neighbourhood evidence: how each model did on the training prompts most similar to this one.
//!
//! The policy file carries the training prompts' embeddings (int8, base64) and each model's
//! quality on them. At prediction time the `k` nearest prompts by cosine similarity give a
//! per-model mean quality (each weighted `exp((s − s_max) / τ)` when training chose a
//! temperature τ) that is blended with the logistic head. Nearest-neighbour estimates
//! capture local structure a linear head misses; the blend weight is chosen on dev data. A model
//! only some of the neighbours have an outcome for (one learned from logged traffic) gets the
//! weight in proportion: two lucky answers among 160 neighbours must not outvote its head.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Quantisation scale of stored embedding components (unit vectors: components lie in −1..1).
const SCALE: f32 = 127.0;

/// The stored neighbourhood.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighbourSet {
    /// Neighbours averaged.
    pub k: usize,
    /// Blend weight of the neighbours' quality (0 = head only, 1 = neighbours only).
    pub weight: f64,
    /// Blend weight of the neighbours' answer length into the length head.
    #[serde(default)]
    pub length_weight: f64,
    /// Similarity temperature: each of the `k` neighbours counts `exp((s − s_max) / τ)`, so the
    /// closest count most. Absent: all `k` count the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Stored prompts.
    pub rows: usize,
    /// `rows × embedding_dim` int8 components (value × 127), row-major, base64.
    pub embeddings_i8: String,
    /// `quality[model][row]` in the order of the policy's models; negative = no outcome.
    pub quality: Vec<Vec<f32>>,
    /// `output_tokens[model][row]`, same layout; negative = unknown.
    pub output_tokens: Vec<Vec<f32>>,
}

impl NeighbourSet {
    /// Builds the set from unit-length embeddings and per-model qualities.
    pub fn new(
        k: usize,
        weight: f64,
        embeddings: &[&[f32]],
        quality: Vec<Vec<f32>>,
        output_tokens: Vec<Vec<f32>>,
    ) -> Self {
        let bytes: Vec<u8> = embeddings
            .iter()
            .flat_map(|e| {
                e.iter()
                    .map(|v| (v * SCALE).round().clamp(-127.0, 127.0) as i8 as u8)
            })
            .collect();
        Self {
            k,
            weight,
            length_weight: 0.0,
            temperature: None,
            rows: embeddings.len(),
            embeddings_i8: STANDARD.encode(bytes),
            quality,
            output_tokens,
        }
    }

    /// Decodes and checks the set against the policy's shape.
    pub fn decode(&self, dim: usize, models: usize) -> Result<Neighbours, String> {
        let bytes = STANDARD
            .decode(&self.embeddings_i8)
            .map_err(|e| format!("neighbours: {e}"))?;
        if bytes.len() != self.rows * dim {
            return Err(format!(
                "neighbours: {} bytes for {} rows of {dim}",
                bytes.len(),
                self.rows
            ));
        }
        for table in [&self.quality, &self.output_tokens] {
            if table.len() != models || table.iter().any(|q| q.len() != self.rows) {
                return Err("neighbours: quality and output_tokens need one row per model".into());
            }
        }
        if self.k == 0
            || !(0.0..=1.0).contains(&self.weight)
            || !(0.0..=1.0).contains(&self.length_weight)
        {
            return Err("neighbours: k must be positive and weights within 0..1".into());
        }
        if self
            .temperature
            .is_some_and(|t| !(t.is_finite() && t > 0.0))
        {
            return Err("neighbours: temperature must be a positive number".into());
        }
        // Kept as stored: a quarter of the memory of f32, which is what a scan costs (every
        // row is read per request, and the encoder's run has just flushed the caches).
        let embeddings = bytes.iter().map(|b| *b as i8).collect();
        Ok(Neighbours {
            k: self.k,
            weight: self.weight,
            length_weight: self.length_weight,
            temperature: self.temperature,
            dim,
            embeddings,
            quality: self.quality.clone(),
            output_tokens: self.output_tokens.clone(),
        })
    }
}

/// A decoded neighbourhood, ready to query.
#[derive(Clone, Debug)]
pub struct Neighbours {
    k: usize,
    weight: f64,
    length_weight: f64,
    temperature: Option<f64>,
    dim: usize,
    /// `rows × dim` components × [`SCALE`], row-major.
    embeddings: Vec<i8>,
    quality: Vec<Vec<f32>>,
    output_tokens: Vec<Vec<f32>>,
}

/// The similarity pass, as a [`pulp::WithSimd`] operation: its body is compiled once per
/// instruction set and the best the CPU has is chosen at run time.
struct Scan<'a> {
    query: &'a [f32],
    rows: &'a [i8],
    dim: usize,
}

impl pulp::WithSimd for Scan<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows.len() / self.dim.max(1));
        dot_rows(self.query, self.rows, self.dim, &mut out);
        out
    }
}

/// `query · row` for every `dim`-wide row of `rows`, into `out`. Plain loops over fixed-width
/// slices with eight partial sums, all inlined into the caller: compiled there with the vector
/// instructions the caller enables (a plain iterator sum of f32 cannot be reordered, and an
/// iterator adapter compiled apart from its caller gets the baseline instruction set only).
#[inline(always)]
fn dot_rows(query: &[f32], rows: &[i8], dim: usize, out: &mut Vec<f32>) {
    const LANES: usize = 8;
    let whole = dim / LANES * LANES;
    let mut start = 0;
    while start + dim <= rows.len() {
        let row = &rows[start..start + dim];
        let mut sums = [0.0f32; LANES];
        let mut i = 0;
        while i < whole {
            let (q, r) = (&query[i..i + LANES], &row[i..i + LANES]);
            for lane in 0..LANES {
                sums[lane] += q[lane] * f32::from(r[lane]);
            }
            i += LANES;
        }
        let mut total = 0.0;
        for lane in sums {
            total += lane;
        }
        for j in whole..dim {
            total += query[j] * f32::from(row[j]);
        }
        out.push(total);
        start += dim;
    }
}

/// What the neighbourhood says about one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Local {
    /// Mean quality of the neighbours with an outcome.
    pub quality: Option<f64>,
    /// Mean output tokens of the neighbours with a known length.
    pub output_tokens: Option<f64>,
    /// Share of the `k` neighbours with a quality outcome for this model (1 on a
    /// full-information table; small for a model seen only on a few logged prompts).
    pub support: f64,
}

impl Neighbours {
    /// Blend weight of quality.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Blend weight of answer length.
    pub fn length_weight(&self) -> f64 {
        self.length_weight
    }

    /// Mean quality and length per model over the `k` most similar stored prompts (`None` where
    /// none of them has a value for that model).
    pub fn estimate(&self, embedding: &[f32]) -> Vec<Local> {
        self.scan(embedding, 1).0
    }

    /// Mean cosine similarity of `embedding` to its `m` most similar stored prompts: how
    /// familiar the prompt is (see [`crate::Familiarity`]).
    pub fn familiarity(&self, embedding: &[f32], m: usize) -> f64 {
        self.scan(embedding, m).1
    }

    /// [`Self::estimate`] and [`Self::familiarity`] over `m` prompts, from one similarity pass.
    pub fn scan(&self, embedding: &[f32], m: usize) -> (Vec<Local>, f64) {
        let scores = self.similarities(embedding);
        let familiarity = mean_of_top(&scores, m);
        (self.local(scores), familiarity)
    }

    /// Cosine similarity of `embedding` to every stored prompt.
    fn similarities(&self, embedding: &[f32]) -> Vec<f32> {
        let query = &embedding[..self.dim.min(embedding.len())];
        if query.len() != self.dim || self.dim == 0 {
            return vec![0.0; self.embeddings.len() / self.dim.max(1)];
        }
        // The query is scaled once rather than every stored component.
        let query: Vec<f32> = query.iter().map(|v| v / SCALE).collect();
        let (rows, dim) = (&self.embeddings, self.dim);
        // Compiled for the widest vector instructions the CPU has (AVX2 and FMA on most
        // servers), chosen at run time: the scan is most of a decision's cost.
        pulp::Arch::new().dispatch(Scan {
            query: &query,
            rows,
            dim,
        })
    }

    /// The per-model estimates over the `k` highest of `scores`.
    fn local(&self, scores: Vec<f32>) -> Vec<Local> {
        let mut sims: Vec<(f32, usize)> = scores.into_iter().zip(0..).collect();
        let k = self.k.min(sims.len());
        if k > 0 && k < sims.len() {
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        let near = &sims[..k];
        let top = near
            .iter()
            .map(|(s, _)| *s)
            .fold(f32::NEG_INFINITY, f32::max);
        let counts: Vec<f64> = near
            .iter()
            .map(|(s, _)| match self.temperature {
                Some(t) => (f64::from(s - top) / t).exp(),
                None => 1.0,
            })
            .collect();
        let all: f64 = counts.iter().sum();
        let mean = |values: &[f32]| {
            let (mut total, mut weight) = (0.0, 0.0);
            for (&(_, r), c) in near.iter().zip(&counts) {
                if values[r] >= 0.0 {
                    total += c * f64::from(values[r]);
                    weight += c;
                }
            }
            let support = if all > 0.0 { weight / all } else { 0.0 };
            let mean = (weight > 0.0).then(|| total / weight);
            (mean, support)
        };
        self.quality
            .iter()
            .zip(&self.output_tokens)
            .map(|(q, t)| {
                let (quality, support) = mean(q);
                Local {
                    quality,
                    output_tokens: mean(t).0,
                    support,
                }
            })
            .collect()
    }
}

/// Mean of the `m` largest of `scores` (0 when there are none).
fn mean_of_top(scores: &[f32], m: usize) -> f64 {
    let m = m.min(scores.len());
    if m == 0 {
        return 0.0;
    }
    let mut sorted = scores.to_vec();
    sorted.select_nth_unstable_by(m - 1, |a, b| b.total_cmp(a));
    sorted[..m].iter().map(|s| f64::from(*s)).sum::<f64>() / m as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_prompts_decide_the_estimate() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let c = [0.8f32, 0.6];
        let quality = vec![vec![1.0, 0.0, 1.0], vec![0.0, 1.0, -1.0]];
        let tokens = vec![vec![10.0, 99.0, 30.0], vec![-1.0, 5.0, -1.0]];
        let set = NeighbourSet::new(2, 0.5, &[&a, &b, &c], quality, tokens);
        let n = set.decode(2, 2).expect("decodes");
        let est = n.estimate(&[0.9, 0.1]);
        // a and c are nearest; c has no outcome for the second model.
        assert_eq!(
            est[0],
            Local {
                quality: Some(1.0),
                output_tokens: Some(20.0),
                support: 1.0,
            }
        );
        assert_eq!(
            est[1],
            Local {
                quality: Some(0.0),
                output_tokens: None,
                support: 0.5,
            }
        );
        assert!(set.decode(3, 2).is_err());
        assert!(set.decode(2, 3).is_err());
    }

    #[test]
    fn a_temperature_lets_the_closest_neighbours_count_most() {
        let a = [1.0f32, 0.0];
        let b = [0.8f32, 0.6];
        let c = [0.0f32, 1.0];
        // The second model has no outcome on b, the less similar of the two nearest.
        let quality = vec![vec![1.0, 0.0, 0.0], vec![1.0, -1.0, 0.0]];
        let tokens = vec![vec![10.0, 30.0, 50.0], vec![-1.0, -1.0, -1.0]];
        let uniform = NeighbourSet::new(2, 0.5, &[&a, &b, &c], quality, tokens);
        let sharp = NeighbourSet {
            temperature: Some(0.05),
            ..uniform.clone()
        };
        let query = [1.0, 0.0];
        let even = uniform.decode(2, 2).expect("decodes").estimate(&query);
        assert_eq!(even[0].quality, Some(0.5));
        assert_eq!(even[1].support, 0.5);
        let near = sharp.decode(2, 2).expect("decodes").estimate(&query);
        // b is about 0.2 less similar: it counts e^-4 of a.
        let q = near[0].quality.expect("has outcomes");
        assert!(q > 0.97 && q < 0.99, "{q}");
        let t = near[0].output_tokens.expect("has lengths");
        assert!(t > 10.0 && t < 10.5, "{t}");
        assert!(near[1].support > 0.97 && near[1].support < 0.99, "{near:?}");
        // Without a temperature the file reads and writes as before.
        let json = serde_json::to_string(&uniform).expect("serialises");
        assert!(!json.contains("temperature"));
        for bad in [0.0, -0.1, f64::NAN] {
            let set = NeighbourSet {
                temperature: Some(bad),
                ..uniform.clone()
            };
            assert!(set.decode(2, 2).is_err(), "temperature {bad} accepted");
        }
    }
}
