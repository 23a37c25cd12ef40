//! SVG figures (plotters): singular-value spectra of one model, and a three-panel comparison of
//! effective rank by depth, pair overlap and energy outside `col(W)` for several models.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{AnalyzeError, Result};
use crate::report::Report;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 420;

/// Distinct colours for up to 8 series (Tableau 10), then they repeat.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The points of one report in a panel.
type Series<'a> = dyn Fn(&Report) -> Vec<(f64, f64)> + 'a;

fn failed(path: &Path) -> impl Fn(String) -> AnalyzeError + '_ {
    move |message| AnalyzeError::Figure { path: path.to_owned(), message }
}

/// `spectra_<label>.svg`: σₖ/σ₁ (log scale) against k/K for every matrix, coloured by depth.
pub fn spectra(report: &Report, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(format!("spectra_{}.svg", file_stem(&report.label)));
    draw_spectra(report, &path)?;
    Ok(path)
}

fn draw_spectra(report: &Report, path: &Path) -> Result<()> {
    let err = failed(path);
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let floor = 1e-4;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: singular-value spectra (colour = depth)", report.label), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, (floor..1.0f64).log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("k / K (index over the matrix's singular values)")
        .y_desc("σₖ / σ₁")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let count = report.matrices.len().max(2);
    for (i, m) in report.matrices.iter().enumerate() {
        let top = m.singular_values.first().copied().unwrap_or(0.0);
        if top <= 0.0 {
            continue;
        }
        let last = (m.singular_values.len().max(2) - 1) as f64;
        let points =
            m.singular_values.iter().enumerate().map(|(k, s)| (k as f64 / last, (s / top).max(floor)));
        // Early layers blue, late layers red.
        let colour = HSLColor(0.66 * (1.0 - i as f64 / (count - 1) as f64), 0.8, 0.45);
        chart.draw_series(LineSeries::new(points, colour.stroke_width(1))).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// `weight_space.svg`: up to three panels (those with data), one series per report.
pub fn weight_space(reports: &[Report], dir: &Path) -> Result<PathBuf> {
    let path = dir.join("weight_space.svg");
    draw_weight_space(reports, &path)?;
    Ok(path)
}

fn draw_weight_space(reports: &[Report], path: &Path) -> Result<()> {
    let err = failed(path);
    // Positions are normalised to [0, 1] so models of different depth share an axis.
    let spread = |values: Vec<f64>| -> Vec<(f64, f64)> {
        let last = (values.len().max(2) - 1) as f64;
        values.into_iter().enumerate().map(|(i, v)| (i as f64 / last, v)).collect()
    };
    let by_depth = |r: &Report| spread(r.matrices.iter().map(|m| m.rank_ratio()).collect());
    // (overlap − chance) / (1 − chance): 0 for independent subspaces, 1 when tied; pairs whose
    // subspaces fill their space (chance = 1) say nothing and are left out.
    let overlap = |r: &Report| {
        spread(
            r.pairs
                .iter()
                .filter(|p| p.dominant.chance < 1.0)
                .map(|p| (p.dominant.mean_cos2 - p.dominant.chance) / (1.0 - p.dominant.chance))
                .collect(),
        )
    };
    let energy = |r: &Report| {
        spread(r.pairs.iter().filter_map(|p| p.energy_outside.as_ref().map(|e| e.effective_rank)).collect())
    };
    let panels: [(&str, &str, &Series<'_>); 3] = [
        ("effective rank / min(m, n) of every matrix", "relative depth", &by_depth),
        (
            "alignment of col(W₁) and row(W₂) above chance, at effective rank (tied = 1)",
            "tied pair, by relative depth",
            &overlap,
        ),
        (
            "share of hidden energy outside col(W₁) (r = effective rank)",
            "pair with a measured activation, by relative depth",
            &energy,
        ),
    ];
    let panels: Vec<_> =
        panels.into_iter().filter(|(_, _, f)| reports.iter().any(|r| !f(r).is_empty())).collect();
    let root = SVGBackend::new(path, (WIDTH, panels.len() as u32 * HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    for ((title, x_desc, series), area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
        panel(&area, reports, title, x_desc, *series).map_err(&err)?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// One panel with y in [−0.2, 1]: a line with markers per report, and a legend.
fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    reports: &[Report],
    title: &str,
    x_desc: &str,
    series: &Series<'_>,
) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, -0.2f64..1.05f64)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(x_desc).draw().map_err(|e| e.to_string())?;
    for (i, report) in reports.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points = series(report);
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(report.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(|e| e.to_string())
}

/// A label safe as part of a file name.
fn file_stem(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
