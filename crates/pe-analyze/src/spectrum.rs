//! Per-matrix metrics computed from singular values alone.

use serde::Serialize;

use crate::power_law::{self, PowerLawFit};

/// Machine epsilon of float32, the dtype weights are analysed in; torch's `matrix_rank` default
/// tolerance scales it by the larger side.
pub const F32_EPS: f64 = f32::EPSILON as f64;

/// What one weight matrix's spectrum says about how much of its space it uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpectrumMetrics {
    /// Roy & Vetterli: `exp(−Σ pₖ ln pₖ)`, `pₖ = σₖ / Σσ`.
    pub effective_rank: f64,
    /// `Σσ² / σ₁²`.
    pub stable_rank: f64,
    /// `#{σ > σ₁ · max(m, n) · eps}`, torch.linalg.matrix_rank's default tolerance.
    pub numerical_rank: usize,
    /// `σ₁`.
    pub spectral_norm: f64,
    /// `sqrt(Σσ²)`.
    pub frobenius_norm: f64,
    /// WeightWatcher's power-law fit of `λ = σ²` (`None` with fewer than 10 non-zero λ).
    pub power_law: Option<PowerLawFit>,
}

impl SpectrumMetrics {
    /// Metrics of a `rows × cols` matrix from its singular values (any order), with `eps` the
    /// machine epsilon of the dtype they were computed in.
    pub fn from_singular_values(sv: &[f64], rows: usize, cols: usize, eps: f64) -> Self {
        let spectral_norm = sv.iter().copied().fold(0.0, f64::max);
        let squares: f64 = sv.iter().map(|s| s * s).sum();
        let rank = numerical_rank(sv, rows, cols, eps);
        // λ below the rank tolerance are rounding noise, not spectrum: a power law is fitted to the rest.
        let tolerance = spectral_norm * rows.max(cols) as f64 * eps;
        let eigenvalues: Vec<f64> = sv.iter().filter(|&&s| s > tolerance).map(|s| s * s).collect();
        Self {
            effective_rank: effective_rank(sv),
            stable_rank: stable_rank(sv),
            numerical_rank: rank,
            spectral_norm,
            frobenius_norm: squares.sqrt(),
            power_law: power_law::fit(&eigenvalues),
        }
    }
}

/// `exp` of the Shannon entropy of the normalised singular values; 0 for the zero matrix.
pub fn effective_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = sv.iter().map(|s| s / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    entropy.exp()
}

/// `‖W‖_F² / ‖W‖₂²`; 0 for the zero matrix.
pub fn stable_rank(sv: &[f64]) -> f64 {
    let top = sv.iter().copied().fold(0.0, f64::max);
    if top <= 0.0 {
        return 0.0;
    }
    sv.iter().map(|s| s * s).sum::<f64>() / (top * top)
}

/// Singular values strictly above `σ₁ · max(rows, cols) · eps`.
pub fn numerical_rank(sv: &[f64], rows: usize, cols: usize, eps: f64) -> usize {
    let top = sv.iter().copied().fold(0.0, f64::max);
    let tolerance = top * rows.max(cols) as f64 * eps;
    sv.iter().filter(|&&s| s > tolerance).count()
}
