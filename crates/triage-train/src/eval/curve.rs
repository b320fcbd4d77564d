//! Cost–quality curves and the metrics read off them (RouterBench's AIQ, cost at parity;
//! RouteLLM's APGR and CPT).
//!
//! A router swept over its cost knob gives points (mean cost, mean quality). Any two operating
//! points can be mixed at random, so what a router can reach is the upper convex hull of its
//! points; and paying more never has to lower quality, so the hull is made non-decreasing.

use serde::Serialize;

/// One operating point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Mean cost per prompt, USD (or a call share for APGR).
    pub cost: f64,
    /// Mean quality.
    pub quality: f64,
}

/// The non-decreasing upper convex hull of `points`, sorted by cost.
pub fn hull(points: &[Point]) -> Vec<Point> {
    let mut pts: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.cost.is_finite() && p.quality.is_finite())
        .collect();
    pts.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(b.quality.total_cmp(&a.quality))
    });
    pts.dedup_by(|b, a| a.cost == b.cost); // keeps the best quality at each cost
    // Non-decreasing: a dearer point worse than a cheaper one is never worth choosing.
    let mut best = f64::NEG_INFINITY;
    pts.retain(|p| {
        let keep = p.quality > best;
        best = best.max(p.quality);
        keep
    });
    let mut upper: Vec<Point> = Vec::with_capacity(pts.len());
    for p in pts {
        while upper.len() >= 2 {
            let (a, b) = (upper[upper.len() - 2], upper[upper.len() - 1]);
            // Drop b if it lies on or below the segment a→p.
            let cross = (b.cost - a.cost) * (p.quality - a.quality)
                - (b.quality - a.quality) * (p.cost - a.cost);
            if cross >= 0.0 {
                upper.pop();
            } else {
                break;
            }
        }
        upper.push(p);
    }
    upper
}

/// Quality the hull reaches at `cost` (flat before the first and after the last point).
pub fn quality_at(hull: &[Point], cost: f64) -> f64 {
    let Some(first) = hull.first() else {
        return 0.0;
    };
    if cost <= first.cost {
        return first.quality;
    }
    for w in hull.windows(2) {
        let (a, b) = (w[0], w[1]);
        if cost <= b.cost {
            let t = (cost - a.cost) / (b.cost - a.cost);
            return a.quality + t * (b.quality - a.quality);
        }
    }
    hull.last().map_or(0.0, |p| p.quality)
}

/// Area under the hull over `[lo, hi]`, divided by `hi - lo` (AIQ when the range is the single
/// models' cost range).
pub fn aiq(hull: &[Point], lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return quality_at(hull, lo);
    }
    let mut xs: Vec<f64> = vec![lo, hi];
    xs.extend(hull.iter().map(|p| p.cost).filter(|c| *c > lo && *c < hi));
    xs.sort_by(f64::total_cmp);
    let area: f64 = xs
        .windows(2)
        .map(|w| (w[1] - w[0]) * (quality_at(hull, w[0]) + quality_at(hull, w[1])) / 2.0)
        .sum();
    area / (hi - lo)
}

/// Least cost at which the hull reaches `target` quality, if it does.
pub fn cost_to_reach(hull: &[Point], target: f64) -> Option<f64> {
    let first = hull.first()?;
    if first.quality >= target {
        return Some(first.cost);
    }
    for w in hull.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.quality >= target {
            let t = (target - a.quality) / (b.quality - a.quality);
            return Some(a.cost + t * (b.cost - a.cost));
        }
    }
    None
}

/// Highest quality on the hull.
pub fn max_quality(hull: &[Point]) -> f64 {
    hull.iter().map(|p| p.quality).fold(0.0, f64::max)
}

/// RouteLLM's pair metrics from points (share of calls to the strong model, quality).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PairMetrics {
    /// Average performance gap recovered over call shares 0..1.
    pub apgr: f64,
    /// Least share of strong calls recovering 50% of the gap.
    pub cpt50: Option<f64>,
    /// … 80% of the gap.
    pub cpt80: Option<f64>,
}

/// APGR and CPT from (strong-call share, quality) points; the all-weak and all-strong points are
/// always reachable and are added.
pub fn pair_metrics(points: &[Point], weak_quality: f64, strong_quality: f64) -> PairMetrics {
    let gap = strong_quality - weak_quality;
    let mut pts = points.to_vec();
    pts.push(Point {
        cost: 0.0,
        quality: weak_quality,
    });
    pts.push(Point {
        cost: 1.0,
        quality: strong_quality,
    });
    let h = hull(&pts);
    let pgr: Vec<Point> = h
        .iter()
        .map(|p| Point {
            cost: p.cost,
            quality: if gap.abs() < 1e-12 {
                1.0
            } else {
                (p.quality - weak_quality) / gap
            },
        })
        .collect();
    PairMetrics {
        apgr: aiq(&pgr, 0.0, 1.0),
        cpt50: cost_to_reach(&pgr, 0.5),
        cpt80: cost_to_reach(&pgr, 0.8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cost: f64, quality: f64) -> Point {
        Point { cost, quality }
    }

    #[test]
    fn hull_is_upper_convex_and_non_decreasing() {
        let h = hull(&[
            p(1.0, 0.5),
            p(2.0, 0.55),
            p(3.0, 0.9),
            p(4.0, 0.8),
            p(2.0, 0.6),
        ]);
        assert_eq!(h, vec![p(1.0, 0.5), p(3.0, 0.9)]);
    }

    #[test]
    fn aiq_of_a_line_is_its_mean_and_parity_is_interpolated() {
        let h = hull(&[p(0.0, 0.4), p(1.0, 0.8)]);
        assert!((aiq(&h, 0.0, 1.0) - 0.6).abs() < 1e-12);
        assert!((cost_to_reach(&h, 0.7).unwrap_or(f64::NAN) - 0.75).abs() < 1e-12);
        assert_eq!(cost_to_reach(&h, 0.9), None);
        // Flat beyond the last point.
        assert!((aiq(&h, 0.0, 2.0) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn pair_metrics_of_the_random_mix_are_half() {
        let m = pair_metrics(&[], 0.5, 0.9);
        assert!((m.apgr - 0.5).abs() < 1e-12);
        assert!((m.cpt50.unwrap_or(f64::NAN) - 0.5).abs() < 1e-12);
        let better = pair_metrics(&[p(0.2, 0.8)], 0.5, 0.9);
        assert!(better.apgr > 0.5);
        assert!(better.cpt50.unwrap_or(1.0) < 0.2);
    }
}
