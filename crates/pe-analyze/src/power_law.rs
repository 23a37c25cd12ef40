//! WeightWatcher's power-law exponent α of a layer's eigenvalues `λ = σ²`.
//!
//! As WeightWatcher (Martin & Mahoney) fits it: for every candidate `λ_min` among the sorted
//! eigenvalues (all but the largest), the maximum-likelihood `α = 1 + n / Σ ln(λ/λ_min)` over the
//! `n` eigenvalues ≥ `λ_min`, and the Kolmogorov–Smirnov distance between the empirical tail and
//! the fitted CDF `1 − (λ/λ_min)^(1−α)`; the candidate with the smallest distance wins.

use serde::Serialize;

/// Fewer eigenvalues than this give no fit (WeightWatcher's `min_evals`).
pub const MIN_EIGENVALUES: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerLawFit {
    pub alpha: f64,
    pub lambda_min: f64,
    /// KS distance of the chosen fit.
    pub ks_distance: f64,
    /// Eigenvalues in the fitted tail (`λ ≥ λ_min`).
    pub tail: usize,
}

/// Fits positive, finite `eigenvalues` (any order); `None` with fewer than [`MIN_EIGENVALUES`].
pub fn fit(eigenvalues: &[f64]) -> Option<PowerLawFit> {
    let mut data: Vec<f64> = eigenvalues.iter().copied().filter(|x| x.is_finite() && *x > 0.0).collect();
    if data.len() < MIN_EIGENVALUES {
        return None;
    }
    data.sort_by(f64::total_cmp);
    let logs: Vec<f64> = data.iter().map(|x| x.ln()).collect();
    // suffix[i] = Σ_{j ≥ i} ln λ_j, so each candidate's MLE costs O(1).
    let mut suffix = vec![0.0; data.len() + 1];
    for i in (0..data.len()).rev() {
        suffix[i] = suffix[i + 1] + logs[i];
    }
    let mut best: Option<PowerLawFit> = None;
    for i in 0..data.len() - 1 {
        let n = (data.len() - i) as f64;
        let log_sum = suffix[i] - n * logs[i];
        if log_sum <= 0.0 {
            continue; // all of the tail equals λ_min: no exponent fits
        }
        let alpha = 1.0 + n / log_sum;
        let ks_distance = data[i..]
            .iter()
            .enumerate()
            .map(|(k, x)| (1.0 - (x / data[i]).powf(1.0 - alpha) - k as f64 / n).abs())
            .fold(0.0, f64::max);
        if best.as_ref().is_none_or(|b| ks_distance < b.ks_distance) {
            best = Some(PowerLawFit { alpha, lambda_min: data[i], ks_distance, tail: data.len() - i });
        }
    }
    best
}
