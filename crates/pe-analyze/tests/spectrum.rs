//! Per-matrix metrics against values computed by hand and by torch.linalg.

mod common;

use tch::{Kind, Tensor};

use pe_analyze::matrices::Matrices;
use pe_analyze::spectrum::{effective_rank, numerical_rank, stable_rank, SpectrumMetrics, F32_EPS};
use pe_analyze::{Analysis, RunInfo};

use common::{gaussian, matrix, with_singular_values};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

/// The metrics the full pipeline (batched SVD in libtorch) reports for one matrix.
fn metrics_of(weight: Tensor) -> SpectrumMetrics {
    let matrices = Matrices { matrices: vec![matrix("w", weight)], pairs: vec![] };
    let report = Analysis::from_matrices(matrices).unwrap().report("t", RunInfo::default(), None).unwrap();
    report.matrices[0].metrics.clone()
}

#[test]
fn identity_uses_every_direction_equally() {
    let m = metrics_of(Tensor::eye(64, (Kind::Float, tch::Device::Cpu)));
    assert!(close(m.effective_rank, 64.0, 1e-5), "{}", m.effective_rank);
    assert!(close(m.stable_rank, 64.0, 1e-5), "{}", m.stable_rank);
    assert_eq!(m.numerical_rank, 64);
    assert!(close(m.spectral_norm, 1.0, 1e-6));
    assert!(close(m.frobenius_norm, 8.0, 1e-6));
}

#[test]
fn prescribed_singular_values_by_hand() {
    // σ = (3, 2, 1): p = (1/2, 1/3, 1/6), exp(½ln2 + ⅓ln3 + ⅙ln6) = 2.749459…; Σσ²/σ₁² = 14/9.
    let by_hand = (0.5 * 2f64.ln() + 3f64.ln() / 3.0 + 6f64.ln() / 6.0).exp();
    assert!(close(by_hand, 2.749459273997205, 1e-12));
    assert!(close(effective_rank(&[3.0, 2.0, 1.0]), by_hand, 1e-12));
    assert!(close(stable_rank(&[3.0, 2.0, 1.0]), 14.0 / 9.0, 1e-12));
    // The same numbers through libtorch's SVD of a rotated 40×30 matrix with that spectrum.
    let m = metrics_of(with_singular_values(40, 30, &[3.0, 2.0, 1.0], 7));
    assert!(close(m.effective_rank, by_hand, 1e-4), "{}", m.effective_rank);
    assert!(close(m.stable_rank, 14.0 / 9.0, 1e-4), "{}", m.stable_rank);
    assert_eq!(m.numerical_rank, 3);
    assert!(close(m.spectral_norm, 3.0, 1e-5));
    assert!(close(m.frobenius_norm, 14f64.sqrt(), 1e-5));
}

#[test]
fn rank_k_product_has_rank_k() {
    let a = gaussian(&[96, 5], 3).to_kind(Kind::Float);
    let b = gaussian(&[5, 48], 4).to_kind(Kind::Float);
    let m = metrics_of(a.matmul(&b));
    assert_eq!(m.numerical_rank, 5);
    assert!(m.effective_rank > 1.0 && m.effective_rank <= 5.0 + 1e-6, "{}", m.effective_rank);
    assert!(m.stable_rank >= 1.0 && m.stable_rank <= 5.0 + 1e-6, "{}", m.stable_rank);
}

#[test]
fn numerical_rank_uses_torch_default_tolerance() {
    // torch.linalg.matrix_rank(torch.diag(torch.tensor([1, 1e-3, 1e-6, 4e-7, 5e-7]))) == 3:
    // the tolerance is σ₁ · max(m, n) · eps(float32) = 5.96e-7.
    assert_eq!(numerical_rank(&[1.0, 1e-3, 1e-6, 4e-7, 5e-7], 5, 5, F32_EPS), 3);
    let diagonal = Tensor::from_slice(&[1.0f32, 1e-3, 1e-6, 4e-7, 5e-7]).diag(0);
    assert_eq!(metrics_of(diagonal).numerical_rank, 3);
}

#[test]
fn zero_matrix_has_no_rank() {
    let m = metrics_of(Tensor::zeros([8, 4], (Kind::Float, tch::Device::Cpu)));
    assert_eq!((m.effective_rank, m.stable_rank, m.numerical_rank), (0.0, 0.0, 0));
    assert!(m.power_law.is_none());
}
