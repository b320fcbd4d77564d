//! Writing a policy out: its version (a hash of what it decides with), the heads it keeps from
//! the policy it replaces, and the atomic write (temporary file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use triage_policy::{Policy, PolicyFile};

use crate::TrainError;
use crate::table::Outcomes;

/// Where a candidate the gate refused is written: `policy.json` → `policy.candidate.json`.
pub fn candidate_path(out: &Path) -> PathBuf {
    out.with_extension("candidate.json")
}

/// Keeps `current`'s heads for the models `candidate` has no data on (a model nobody routed to
/// since the last retrain must not drop out of the policy, or it could never be explored again).
/// The heads are re-expressed over the candidate's standardisation, which is exact because both
/// are affine in the raw features. Returns the models carried over.
pub(crate) fn carry_over_heads(candidate: &mut PolicyFile, current: &PolicyFile) -> Vec<String> {
    let (new_s, old_s) = (&candidate.standardize, &current.standardize);
    if candidate.feature_schema != current.feature_schema
        || candidate.embedding_dim != current.embedding_dim
        || new_s.mean.len() != old_s.mean.len()
    {
        return Vec::new();
    }
    // w·(x−m)/s + b  =  Σ w_j s'_j/s_j · (x_j−m'_j)/s'_j  +  b + Σ w_j (m'_j−m_j)/s_j
    let convert = |weights: &[f32], bias: f32| -> (Vec<f32>, f32) {
        let mut shift = f64::from(bias);
        let w = weights
            .iter()
            .enumerate()
            .map(|(j, w)| {
                let (m_new, s_new) = (new_s.mean[j], new_s.scale[j]);
                let (m_old, s_old) = (old_s.mean[j], old_s.scale[j]);
                shift += f64::from(*w) * f64::from(m_new - m_old) / f64::from(s_old);
                w * s_new / s_old
            })
            .collect();
        (w, shift as f32)
    };
    let mut carried = Vec::new();
    for head in &current.models {
        if candidate.models.iter().any(|m| m.name == head.name) {
            continue;
        }
        let (qw, qb) = convert(&head.quality.weights, head.quality.bias);
        let (lw, lb) = convert(&head.output_tokens.weights, head.output_tokens.bias);
        let mut moved = head.clone();
        moved.quality.weights = qw;
        moved.quality.bias = qb;
        moved.output_tokens.weights = lw;
        moved.output_tokens.bias = lb;
        candidate.models.push(moved);
        if let Some(n) = &mut candidate.neighbours {
            n.quality.push(vec![-1.0; n.rows]);
            n.output_tokens.push(vec![-1.0; n.rows]);
        }
        // Its prompt-blind quality: the current policy's, or its head's at the mean prompt.
        if let Some(f) = &mut candidate.familiarity {
            let prior = current
                .familiarity
                .as_ref()
                .zip(current.models.iter().position(|m| m.name == head.name))
                .and_then(|(c, i)| c.prior.get(i).copied())
                .unwrap_or_else(|| crate::fit::sigmoid(f64::from(head.quality.bias)));
            f.prior.push(prior);
        }
        // The classifier never saw this model: its own head alone speaks for it.
        if let Some(c) = &mut candidate.shared {
            c.w2.extend(std::iter::repeat_n(0.0, c.hidden));
            c.b2.push(0.0);
            c.share.push(0.0);
        }
        carried.push(head.name.clone());
    }
    if !carried.is_empty() {
        candidate.version = format!("{}-c{}", candidate.version, &content_hash(candidate)[..6]);
    }
    carried
}

pub(crate) fn data_label(o: &Outcomes) -> String {
    format!("m{}-{}", o.models.len(), &o.data_sha256[..8])
}

pub(crate) fn content_hash(file: &PolicyFile) -> String {
    let core = (&file.models, &file.standardize, &file.decision);
    // Without a shared classifier or an acceptor the hash stays what it was before they existed.
    let bytes = match (&file.shared, &file.acceptor) {
        (None, None) => serde_json::to_vec(&core),
        (Some(shared), None) => serde_json::to_vec(&(core, shared)),
        (shared, Some(acceptor)) => serde_json::to_vec(&(core, shared, acceptor)),
    }
    .unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Writes `policy` to a temporary file beside `out`, fsyncs it and renames it into place, so a
/// reader never sees a half-written policy. The file is validated before it is written.
pub fn write_policy_atomically(policy: &PolicyFile, out: &Path) -> Result<(), TrainError> {
    let err = |message: String| TrainError::Write {
        path: out.display().to_string(),
        message,
    };
    Policy::new(policy.clone()).map_err(|e| err(e.to_string()))?;
    let json = serde_json::to_vec_pretty(policy).map_err(|e| err(e.to_string()))?;
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("policy"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::prior_policy;

    #[test]
    fn carried_heads_predict_the_same_under_a_new_standardisation() {
        let models = ["a".to_owned(), "b".to_owned()];
        let mut current = prior_policy(&models, 0.5, 100.0);
        let width = current.standardize.mean.len();
        current.standardize.mean = (0..width).map(|j| j as f32 * 0.01).collect();
        current.standardize.scale = (0..width).map(|j| 1.0 + j as f32 * 0.02).collect();
        for (i, head) in current.models.iter_mut().enumerate() {
            head.quality.weights = (0..width)
                .map(|j| ((i + j) % 7) as f32 * 0.01 - 0.03)
                .collect();
            head.output_tokens.weights = (0..width).map(|j| (j % 5) as f32 * 0.002).collect();
        }
        let mut candidate = prior_policy(&models[..1], 0.5, 100.0);
        candidate.standardize.mean = vec![0.3; width];
        candidate.standardize.scale = vec![2.0; width];
        // The candidate's shared classifier never saw "b": it must gain a silent output for it.
        candidate.shared = Some(triage_policy::SharedClassifier {
            hidden: 2,
            w1: vec![0.01; 2 * width],
            b1: vec![0.1, -0.1],
            w2: vec![1.0, -1.0],
            b2: vec![0.2],
            share: vec![1.0],
        });
        // Its familiarity curve has a prior per model: "b" brings the current policy's.
        let width_e = candidate.embedding_dim;
        let embedding: Vec<f32> = (0..width_e)
            .map(|j| if j == 0 { 1.0 } else { 0.0 })
            .collect();
        candidate.neighbours = Some(triage_policy::NeighbourSet::new(
            1,
            0.0,
            &[&embedding],
            vec![vec![1.0]],
            vec![vec![10.0]],
        ));
        candidate.familiarity = Some(triage_policy::Familiarity {
            neighbours: 1,
            curve: None,
            prior: vec![0.6],
        });
        current.neighbours = Some(triage_policy::NeighbourSet::new(
            1,
            0.0,
            &[&embedding],
            vec![vec![1.0], vec![0.0]],
            vec![vec![10.0], vec![10.0]],
        ));
        current.familiarity = Some(triage_policy::Familiarity {
            neighbours: 1,
            curve: None,
            prior: vec![0.6, 0.3],
        });
        let carried = carry_over_heads(&mut candidate, &current);
        assert_eq!(carried, ["b"]);
        assert_eq!(
            candidate.familiarity.as_ref().map(|f| f.prior.clone()),
            Some(vec![0.6, 0.3])
        );
        assert_eq!(
            candidate.shared.as_ref().map(|c| c.share.clone()),
            Some(vec![1.0, 0.0])
        );

        let x: Vec<f32> = (0..width)
            .map(|j| ((j * 13) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let (current, candidate) = (
            Policy::new(current).expect("valid"),
            Policy::new(candidate).expect("valid"),
        );
        let before = current.predict(&x).expect("scores");
        let after = candidate.predict(&x).expect("scores");
        let b = |p: &[(&str, triage_policy::Prediction)]| {
            p.iter()
                .find(|(m, _)| *m == "b")
                .map(|(_, p)| *p)
                .expect("b scored")
        };
        let (old, new) = (b(&before), b(&after));
        assert!((old.quality - new.quality).abs() < 1e-4, "{old:?} {new:?}");
        assert!((old.output_tokens - new.output_tokens).abs() / old.output_tokens < 1e-3);
    }
}
