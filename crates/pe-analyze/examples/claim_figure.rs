//! The claim table's figure (issue 15, `bench/claim_table.py`): test top-1 against parameters for
//! the baseline, PE twin and parameter-matched baseline of each family, one panel per family
//! (their sizes differ tenfold), mean ± std over seeds as error bars. An example rather than a
//! `pe` subcommand: it only reads the table's JSON and draws with the plotters SVG backend that
//! `pe analyze` uses.
//!
//! `cargo run --release -p pe-analyze --example claim_figure -- bench/results/claim.json claim.svg`

use std::error::Error;

use plotters::prelude::*;
use serde::Deserialize;

/// One row of `claim.json`, the fields the figure needs.
#[derive(Debug, Deserialize)]
struct Row {
    family: String,
    variant: String,
    params: i64,
    mean: f64,
    std: f64,
}

const PANEL: (u32, u32) = (520, 400);

/// The variant's colour, the same in every panel.
fn colour(variant: &str) -> RGBColor {
    match variant {
        "baseline" => RGBColor(31, 119, 180),
        "PE" => RGBColor(214, 39, 40),
        _ => RGBColor(44, 160, 44),
    }
}

/// `(lo, hi)` widened by `pad` of its span (at least `min_span`) so points sit inside the frame.
fn padded(lo: f64, hi: f64, pad: f64, min_span: f64) -> (f64, f64) {
    let span = (hi - lo).max(min_span);
    (lo - pad * span, hi + pad * span)
}

/// Share of the plot's width and height the three-entry legend box takes (about 110 x 80 px of a
/// ~460 x 330 px plot, with a margin).
const LEGEND: (f64, f64) = (0.3, 0.3);

/// The corner of `x0..x1 x y0..y1` where the legend covers no point or error bar, or `None`.
fn free_corner(
    rows: &[&Row],
    x: impl Fn(&Row) -> f64,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Option<SeriesLabelPosition> {
    let (w, h) = (LEGEND.0 * (x1 - x0), LEGEND.1 * (y1 - y0));
    let corners = [
        (SeriesLabelPosition::UpperLeft, x0, y1 - h),
        (SeriesLabelPosition::LowerRight, x1 - w, y0),
        (SeriesLabelPosition::UpperRight, x1 - w, y1 - h),
        (SeriesLabelPosition::LowerLeft, x0, y0),
    ];
    let covers = |left: f64, bottom: f64, r: &Row| {
        let inside_x = (left..=left + w).contains(&x(r));
        inside_x && r.mean - r.std <= bottom + h && r.mean + r.std >= bottom
    };
    corners
        .into_iter()
        .find(|&(_, left, bottom)| !rows.iter().any(|r| covers(left, bottom, r)))
        .map(|(pos, ..)| pos)
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    family: &str,
    rows: &[&Row],
) -> Result<(), Box<dyn Error>> {
    let thousands = |r: &Row| r.params as f64 / 1e3;
    let (x0, x1) =
        rows.iter().map(|r| thousands(r)).fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) =
        rows.iter().fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(r.mean - r.std), b.max(r.mean + r.std)));
    let (x0, x1) = padded(x0, x1, 0.15, 1.0);
    let (y0, mut y1) = padded(y0, y1, 0.2, 0.5);
    // Where every corner holds data, make room above it: the legend then sits over empty space.
    let legend_at = free_corner(rows, thousands, (x0, x1), (y0, y1)).unwrap_or_else(|| {
        y1 += (y1 - y0) * LEGEND.1 / (1.0 - LEGEND.1);
        SeriesLabelPosition::UpperLeft
    });
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{family}: test top-1 against parameters"), ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc("parameters with head (thousands)").y_desc("top-1 (%)").draw()?;
    for row in rows {
        let (x, c) = (thousands(row), colour(&row.variant));
        let cap = 0.01 * (x1 - x0);
        let bar = [(x, row.mean - row.std), (x, row.mean + row.std)];
        chart
            .draw_series([bar[0], bar[1]].map(|(_, y)| PathElement::new([(x - cap, y), (x + cap, y)], c)))?;
        chart.draw_series([PathElement::new(bar, c.stroke_width(2))])?;
        chart
            .draw_series([Circle::new((x, row.mean), 5, c.filled())])?
            .label(row.variant.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: claim_figure <claim.json> <figure.svg>".into());
    };
    let rows: Vec<Row> = serde_json::from_str(&std::fs::read_to_string(&input)?)?;
    let mut families: Vec<&str> = rows.iter().map(|r| r.family.as_str()).collect();
    families.dedup();
    if families.is_empty() {
        return Err(format!("{input} has no rows").into());
    }
    let root = SVGBackend::new(&output, (PANEL.0 * families.len() as u32, PANEL.1)).into_drawing_area();
    root.fill(&WHITE)?;
    for (family, area) in families.iter().zip(root.split_evenly((1, families.len()))) {
        let members: Vec<&Row> = rows.iter().filter(|r| r.family == *family).collect();
        panel(&area, family, &members)?;
    }
    root.present()?;
    Ok(())
}
