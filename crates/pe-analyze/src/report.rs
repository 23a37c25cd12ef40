//! The result of an analysis as plain data (JSON via serde), and its summaries per block type.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::energy::EnergyOutside;
use crate::matrices::{Layout, PairKind, Role};
use crate::spectrum::SpectrumMetrics;
use crate::subspace::Overlap;

/// Where the analysed weights came from, as far as the caller knows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunInfo {
    /// The run folder, checkpoint or weights file given.
    pub source: String,
    /// The registry model or the run's architecture.
    pub model: Option<String>,
    /// The checkpoint actually read.
    pub checkpoint: Option<String>,
    /// Final validation top-1 (%) the run recorded.
    pub top1: Option<f64>,
    /// All trainable parameters, head included.
    pub params: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    pub name: String,
    pub role: Role,
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    #[serde(flatten)]
    pub metrics: SpectrumMetrics,
    /// Descending.
    pub singular_values: Vec<f64>,
}

impl MatrixReport {
    /// Effective rank as a fraction of the largest possible rank, `min(rows, cols)`.
    pub fn rank_ratio(&self) -> f64 {
        self.metrics.effective_rank / self.rows.min(self.cols).max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub name: String,
    pub kind: PairKind,
    /// `W₂ = W₁ᵀ` (a PE layer): the overlap is 1 by construction.
    pub tied: bool,
    pub first: String,
    pub second: String,
    /// `col(W₁)` vs `row(W₂)`, each at its numerical rank (the whole space each uses).
    pub full: Overlap,
    /// The same at each matrix's effective rank (the directions that carry most of the spectrum).
    pub dominant: Overlap,
    /// Present when activations were measured and this pair reads one.
    pub energy_outside: Option<EnergyOutside>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub run: RunInfo,
    pub matrices: Vec<MatrixReport>,
    pub pairs: Vec<PairReport>,
    /// How many batches of activations were measured (0 = weights only).
    pub batches: usize,
}

/// Means over the matrices of one [`Role`].
#[derive(Debug, Clone, Serialize)]
pub struct RoleSummary {
    pub role: Role,
    pub matrices: usize,
    /// Entries of these matrices (a tied matrix counts once).
    pub params: i64,
    pub mean_effective_rank: f64,
    pub mean_rank_ratio: f64,
    pub mean_stable_rank: f64,
    /// Over the matrices that had enough eigenvalues for a fit.
    pub mean_alpha: Option<f64>,
}

/// Means over the pairs of one [`PairKind`].
#[derive(Debug, Clone, Serialize)]
pub struct PairSummary {
    pub kind: PairKind,
    pub pairs: usize,
    pub tied: bool,
    pub mean_overlap_full: f64,
    pub mean_overlap_dominant: f64,
    pub mean_chance_dominant: f64,
    pub mean_energy_outside_full: Option<f64>,
    pub mean_energy_outside_effective: Option<f64>,
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (count > 0).then(|| sum / count as f64)
}

impl Report {
    pub fn role_summaries(&self) -> Vec<RoleSummary> {
        let mut groups: BTreeMap<Role, Vec<&MatrixReport>> = BTreeMap::new();
        for matrix in &self.matrices {
            groups.entry(matrix.role).or_default().push(matrix);
        }
        groups
            .into_iter()
            .map(|(role, ms)| RoleSummary {
                role,
                matrices: ms.len(),
                params: ms.iter().map(|m| (m.rows * m.cols) as i64).sum(),
                mean_effective_rank: mean(ms.iter().map(|m| m.metrics.effective_rank)).unwrap_or(0.0),
                mean_rank_ratio: mean(ms.iter().map(|m| m.rank_ratio())).unwrap_or(0.0),
                mean_stable_rank: mean(ms.iter().map(|m| m.metrics.stable_rank)).unwrap_or(0.0),
                mean_alpha: mean(ms.iter().filter_map(|m| m.metrics.power_law.as_ref().map(|f| f.alpha))),
            })
            .collect()
    }

    pub fn pair_summaries(&self) -> Vec<PairSummary> {
        let mut groups: BTreeMap<PairKind, Vec<&PairReport>> = BTreeMap::new();
        for pair in &self.pairs {
            groups.entry(pair.kind).or_default().push(pair);
        }
        groups
            .into_iter()
            .map(|(kind, ps)| {
                let energy = |pick: fn(&EnergyOutside) -> f64| {
                    mean(ps.iter().filter_map(|p| p.energy_outside.as_ref().map(pick)))
                };
                PairSummary {
                    kind,
                    pairs: ps.len(),
                    tied: ps.iter().all(|p| p.tied),
                    mean_overlap_full: mean(ps.iter().map(|p| p.full.mean_cos2)).unwrap_or(0.0),
                    mean_overlap_dominant: mean(ps.iter().map(|p| p.dominant.mean_cos2)).unwrap_or(0.0),
                    mean_chance_dominant: mean(ps.iter().map(|p| p.dominant.chance)).unwrap_or(0.0),
                    mean_energy_outside_full: energy(|e| e.full_rank),
                    mean_energy_outside_effective: energy(|e| e.effective_rank),
                }
            })
            .collect()
    }
}
