//! The evaluation report: terminal table, JSON, exported choices.

use std::fmt::Write as _;
use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

use crate::TrainError;
use crate::eval::bootstrap::Bootstrap;
use crate::eval::curve::{PairMetrics, Point, aiq, cost_to_reach, hull, max_quality};

/// One router's curve and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct RouterResult {
    /// Name.
    pub name: String,
    /// Swept operating points.
    pub points: Vec<Point>,
    /// Non-decreasing upper hull of the points.
    pub hull: Vec<Point>,
    /// Area under the hull over the single models' cost range, normalised.
    pub aiq: f64,
    /// Least cost reaching the best single model's quality, % of that model's cost.
    pub cost_at_parity_pct: Option<f64>,
    /// … 95% of it.
    pub cost_at_95_pct: Option<f64>,
    /// … 90% of it.
    pub cost_at_90_pct: Option<f64>,
    /// Highest quality reached.
    pub max_quality: f64,
}

impl RouterResult {
    /// Metrics for `points` against the single models' cost range and the best single model.
    pub fn new(name: &str, points: Vec<Point>, lo: f64, hi: f64, best: Point) -> Self {
        let h = hull(&points);
        let pct =
            |share: f64| cost_to_reach(&h, best.quality * share).map(|c| 100.0 * c / best.cost);
        Self {
            name: name.into(),
            aiq: aiq(&h, lo, hi),
            cost_at_parity_pct: pct(1.0),
            cost_at_95_pct: pct(0.95),
            cost_at_90_pct: pct(0.90),
            max_quality: max_quality(&h),
            hull: h,
            points,
        }
    }
}

/// APGR / CPT for a strong/weak pair.
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    /// Strong model.
    pub strong: String,
    /// Weak model.
    pub weak: String,
    /// Its quality.
    pub strong_quality: f64,
    /// Its quality.
    pub weak_quality: f64,
    /// Triage restricted to the pair.
    pub triage: PairMetrics,
    /// kNN restricted to the pair.
    pub knn: PairMetrics,
    /// Random mix of the pair.
    pub random: PairMetrics,
}

/// Everything `triage eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Split evaluated.
    pub split: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Policy evaluated.
    pub policy_version: String,
    /// Highest-quality single model.
    pub best_single: (String, Point),
    /// Cheapest single model.
    pub cheapest_single: (String, Point),
    /// Every single model.
    pub singles: Vec<(String, Point)>,
    /// Triage's built-in modes.
    pub modes: Vec<(String, Point)>,
    /// Routers with metrics.
    pub routers: Vec<RouterResult>,
    /// The policy with parts taken out (see [`crate::eval::ablation`]), λ sweep only.
    pub ablations: Vec<RouterResult>,
    /// Paired bootstrap of Triage against the other rows, when resamples were asked for.
    pub bootstrap: Option<Bootstrap>,
    /// Pair metrics, when asked for.
    pub pair: Option<PairReport>,
    /// The balanced mode's predicted and realised quality by familiarity quintile (`None`: the
    /// policy cannot measure familiarity).
    pub calibration: Option<Vec<crate::eval::calibration::Bucket>>,
    /// Per knob setting: prompt ids and Triage's choices.
    #[serde(skip)]
    pub choices: Vec<(String, Vec<String>, Vec<Option<String>>)>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("not reached".into(), |v| format!("{v:.1}%"))
}

/// The readable table.
pub fn render_table(r: &EvalReport) -> String {
    let mut s = String::new();
    let (bn, bp) = &r.best_single;
    let (cn, cp) = &r.cheapest_single;
    let _ = writeln!(
        s,
        "split {} ({} prompts), policy {}",
        r.split, r.prompts, r.policy_version
    );
    let _ = writeln!(
        s,
        "best single: {bn} (quality {:.3}, ${:.6}/prompt)",
        bp.quality, bp.cost
    );
    let _ = writeln!(
        s,
        "cheapest single: {cn} (quality {:.3}, ${:.6}/prompt)\n",
        cp.quality, cp.cost
    );
    let _ = writeln!(
        s,
        "{:<36} {:>7} {:>14} {:>12} {:>12} {:>8}",
        "router", "AIQ", "cost@parity", "cost@95%", "cost@90%", "max q"
    );
    let row = |s: &mut String, x: &RouterResult| {
        let _ = writeln!(
            s,
            "{:<36} {:>7.4} {:>14} {:>12} {:>12} {:>8.3}",
            x.name,
            x.aiq,
            pct(x.cost_at_parity_pct),
            pct(x.cost_at_95_pct),
            pct(x.cost_at_90_pct),
            x.max_quality
        );
    };
    for x in &r.routers {
        row(&mut s, x);
    }
    let _ = writeln!(
        s,
        "\nwhat each part adds (the policy with parts taken out; compare with \"triage, λ sweep only\"):"
    );
    for x in &r.ablations {
        row(&mut s, x);
    }
    if let Some(b) = &r.bootstrap {
        render_bootstrap(&mut s, b, r.prompts);
    }
    let _ = writeln!(s, "\ntriage modes:");
    for (m, p) in &r.modes {
        let _ = writeln!(
            s,
            "  {m:<9} quality {:.3}  cost ${:.6}/prompt ({:.1}% of best single)",
            p.quality,
            p.cost,
            100.0 * p.cost / bp.cost
        );
    }
    if let Some(buckets) = &r.calibration {
        let _ = writeln!(
            s,
            "\ncalibration by familiarity (balanced mode's choice; predicted vs realised quality):"
        );
        for b in buckets {
            let _ = writeln!(
                s,
                "  familiarity {:.3}..{:.3}  {:>5} prompts  predicted {:.3}  observed {:.3}  gap {:+.3}",
                b.familiarity[0],
                b.familiarity[1],
                b.prompts,
                b.predicted,
                b.observed,
                b.predicted - b.observed
            );
        }
    }
    if let Some(pair) = &r.pair {
        let _ = writeln!(
            s,
            "\npair {} (strong, q {:.3}) / {} (weak, q {:.3}):",
            pair.strong, pair.strong_quality, pair.weak, pair.weak_quality
        );
        for (name, m) in [
            ("triage", &pair.triage),
            ("kNN", &pair.knn),
            ("random", &pair.random),
        ] {
            let share =
                |v: Option<f64>| v.map_or("not reached".into(), |v| format!("{:.1}%", 100.0 * v));
            let _ = writeln!(
                s,
                "  {name:<8} APGR {:.3}  CPT(50%) {}  CPT(80%) {}",
                m.apgr,
                share(m.cpt50),
                share(m.cpt80)
            );
        }
    }
    s
}

fn render_bootstrap(s: &mut String, b: &Bootstrap, prompts: usize) {
    let _ = writeln!(
        s,
        "\npaired bootstrap, {} resamples of the {prompts} prompts (seed {}): triage AIQ {:.4}, 95% {:.4} to {:.4}",
        b.resamples, b.seed, b.triage_aiq, b.triage_aiq_95[0], b.triage_aiq_95[1]
    );
    let _ = writeln!(
        s,
        "triage cost at parity {}, 95% {} to {}; reached in {:.1}% of resamples",
        pct(b.triage_cost_at_parity_pct),
        pct(b.triage_cost_at_parity_95[0]),
        pct(b.triage_cost_at_parity_95[1]),
        100.0 * b.share_parity_reached
    );
    let _ = writeln!(
        s,
        "{:<36} {:>9} {:>21} {:>16}",
        "triage minus", "AIQ", "95% interval", "triage ahead"
    );
    for c in &b.comparisons {
        let _ = writeln!(
            s,
            "{:<36} {:>+9.4} {:>+10.4} to {:>+7.4} {:>15.1}%",
            c.against,
            c.aiq_difference,
            c.difference_95[0],
            c.difference_95[1],
            100.0 * c.share_triage_ahead
        );
    }
}

/// Writes Triage's per-prompt choices, one row per (prompt, knob setting); Parquet when the
/// path ends in `.parquet`, CSV otherwise.
pub fn export_choices(r: &EvalReport, path: &Path) -> Result<(), TrainError> {
    let (mut ids, mut knobs, mut chosen) = (Vec::new(), Vec::new(), Vec::new());
    for (label, prompt_ids, choices) in &r.choices {
        for (id, c) in prompt_ids.iter().zip(choices) {
            ids.push(id.clone());
            knobs.push(label.clone());
            chosen.push(c.clone());
        }
    }
    write_columns(
        path,
        vec![
            Column::new("prompt_id".into(), ids),
            Column::new("knob_setting".into(), knobs),
            Column::new("chosen_model".into(), chosen),
        ],
    )
}

/// Writes equal-length `columns` as one table: Parquet when the path ends in `.parquet`, CSV
/// otherwise.
pub(crate) fn write_columns(path: &Path, columns: Vec<Column>) -> Result<(), TrainError> {
    let err = |e: PolarsError| TrainError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let height = columns.first().map_or(0, Column::len);
    let mut df = DataFrame::new(height, columns).map_err(err)?;
    let file = std::fs::File::create(path).map_err(|e| TrainError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if path.extension().is_some_and(|e| e == "parquet") {
        ParquetWriter::new(file).finish(&mut df).map_err(err)?;
    } else {
        CsvWriter::new(file).finish(&mut df).map_err(err)?;
    }
    Ok(())
}
