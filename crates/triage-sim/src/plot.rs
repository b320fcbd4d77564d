//! The simulation plot: per round, mean quality, mean cost and each model's share of traffic.

use std::path::Path;

use plotters::prelude::*;

use crate::SimError;
use crate::run::SimReport;

/// Writes a three-panel SVG: quality, cost (log scale) and traffic shares against requests.
pub fn write_svg(path: &Path, title: &str, report: &SimReport) -> Result<(), SimError> {
    let err = |e: String| SimError::Write {
        path: path.display().to_string(),
        message: e,
    };
    let rounds = &report.rounds;
    if rounds.is_empty() {
        return Err(err("no rounds to plot".into()));
    }
    let x_max = rounds.iter().map(|r| r.requests).max().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((3, 1));

    let series = |r: &[crate::run::Round],
                  f: &dyn Fn(&crate::run::Round) -> f64|
     -> Vec<(f64, f64)> { r.iter().map(|x| (x.requests as f64, f(x))).collect() };
    let quality = series(rounds, &|r| r.mean_quality);
    let (qlo, qhi) = bounds(quality.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&panels[0])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (qlo - 0.02).max(0.0)..(qhi + 0.02).min(1.0))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .y_desc("mean quality per round")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(quality, BLUE.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?;

    let cost = series(rounds, &|r| r.mean_cost.max(1e-9));
    let (clo, chi) = bounds(cost.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&panels[1])
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (clo * 0.8..chi * 1.25).log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .y_desc("mean cost per round, USD")
        .y_label_formatter(&|y| format!("{y:.1e}"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(cost, RED.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?;

    let mut models: Vec<&String> = rounds.iter().flat_map(|r| r.shares.keys()).collect();
    models.sort();
    models.dedup();
    let mut chart = ChartBuilder::on(&panels[2])
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("requests replayed")
        .y_desc("share of traffic")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, model) in models.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = series(rounds, &|r| r.shares.get(*model).copied().unwrap_or(0.0));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(model.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}
