//! What an analysis logs to TensorBoard: singular-value histograms and per-layer scalars.
//!
//! The event format stays in the runner (`pe_runner::tensorboard`), which implements
//! [`SummarySink`]; this module only decides tags and values.

use std::io;

use serde::Serialize;

use crate::report::Report;

/// A destination for scalars and histograms (the runner's TensorBoard event writer).
pub trait SummarySink {
    fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()>;
    /// A histogram of `values` (TensorBoard bins them).
    fn histogram(&mut self, tag: &str, values: &[f64], step: u64) -> io::Result<()>;
}

/// The snake_case name serde gives an enum variant (`bottleneck1x1`, `mlp_fc1_fc2`).
fn key(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Logs `report` at `step`: `spectrum/<matrix>` histograms of singular values,
/// `weights/<matrix>/<metric>`, `pairs/<block>/<kind>/<metric>` and per-block-type means
/// under `weight_space/`.
pub fn log_to_tensorboard(report: &Report, sink: &mut impl SummarySink, step: u64) -> io::Result<()> {
    for m in &report.matrices {
        sink.histogram(&format!("spectrum/{}", m.name), &m.singular_values, step)?;
        let mut scalar =
            |metric: &str, value: f64| sink.scalar(&format!("weights/{}/{metric}", m.name), value, step);
        scalar("effective_rank", m.metrics.effective_rank)?;
        scalar("rank_ratio", m.rank_ratio())?;
        scalar("stable_rank", m.metrics.stable_rank)?;
        scalar("spectral_norm", m.metrics.spectral_norm)?;
        if let Some(fit) = &m.metrics.power_law {
            scalar("alpha", fit.alpha)?;
        }
    }
    for p in &report.pairs {
        let prefix = format!("pairs/{}/{}", p.name, key(&p.kind));
        sink.scalar(&format!("{prefix}/overlap_dominant"), p.dominant.mean_cos2, step)?;
        sink.scalar(&format!("{prefix}/grassmann_dominant"), p.dominant.grassmann, step)?;
        if let Some(energy) = &p.energy_outside {
            sink.scalar(&format!("{prefix}/energy_outside_effective"), energy.effective_rank, step)?;
            sink.scalar(&format!("{prefix}/energy_outside_full"), energy.full_rank, step)?;
        }
    }
    for (tag, value) in headline_scalars(report) {
        sink.scalar(&tag, value, step)?;
    }
    Ok(())
}

/// Per-block-type means under `weight_space/` (rank ratio, pair overlap, energy outside col(W)):
/// the few numbers worth a column in TensorBoard's HParams table.
pub fn headline_scalars(report: &Report) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for s in report.role_summaries() {
        out.push((format!("weight_space/{}/rank_ratio", key(&s.role)), s.mean_rank_ratio));
    }
    for s in report.pair_summaries() {
        let prefix = format!("weight_space/{}", key(&s.kind));
        out.push((format!("{prefix}/overlap_dominant"), s.mean_overlap_dominant));
        if let Some(value) = s.mean_energy_outside_effective {
            out.push((format!("{prefix}/energy_outside_effective"), value));
        }
    }
    out
}
