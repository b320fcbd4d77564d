//! The cost–quality plot: every router's hull as a line, single models as points, log cost axis.

use std::path::Path;

use plotters::prelude::*;

use crate::TrainError;
use crate::eval::curve::Point;

/// A named curve to draw.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Points, drawn in cost order.
    pub points: &'a [Point],
}

/// Writes an SVG plot.
pub fn write_svg(
    path: &Path,
    title: &str,
    curves: &[Series<'_>],
    singles: &[(String, Point)],
) -> Result<(), TrainError> {
    let err = |e: String| TrainError::Write {
        path: path.display().to_string(),
        message: e,
    };
    let all = curves
        .iter()
        .flat_map(|s| s.points.iter())
        .chain(singles.iter().map(|(_, p)| p));
    let (mut lo, mut hi, mut qlo, mut qhi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in all.filter(|p| p.cost > 0.0) {
        lo = lo.min(p.cost);
        hi = hi.max(p.cost);
        qlo = qlo.min(p.quality);
        qhi = qhi.max(p.quality);
    }
    if lo >= hi {
        return Err(err("nothing to plot".into()));
    }
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (lo * 0.8..hi * 1.25).log_scale(),
            (qlo - 0.05).max(0.0)..(qhi + 0.03).min(1.0),
        )
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("mean cost per prompt, USD (log scale)")
        .y_desc("mean quality")
        .x_labels(8)
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|x| format!("{x:.1e}"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, s) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.cost > 0.0)
            .map(|p| (p.cost, p.quality))
            .collect();
        // Markers too, so a router with a single operating point still shows.
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .draw_series(
            singles
                .iter()
                .filter(|(_, p)| p.cost > 0.0)
                .map(|(name, p)| {
                    EmptyElement::at((p.cost, p.quality))
                        + Circle::new((0, 0), 4, BLACK.filled())
                        + Text::new(name.clone(), (6, -6), ("sans-serif", 11))
                }),
        )
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
