//! Matrices with prescribed singular values and subspaces, shared by the tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use tch::{Kind, Tensor};

use pe_analyze::matrices::{Layout, Matrices, PairKind, Role, TiePair, WeightMatrix};

/// Standard normal values of `shape`, a function of `seed` alone: libtorch's global generator is
/// shared by the tests a binary runs at once, so its draws would depend on their interleaving.
pub fn gaussian(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut uniform = move || {
        // splitmix64, mapped into (0, 1).
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + 0.5 / (1u64 << 53) as f64
    };
    // Box–Muller.
    let values: Vec<f64> = (0..n)
        .map(|_| (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos())
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// A random `[n, k]` matrix with orthonormal columns (QR of a Gaussian), reproducible by `seed`.
pub fn orthonormal(n: i64, k: i64, seed: i64) -> Tensor {
    let (q, _) = Tensor::linalg_qr(&gaussian(&[n, k], seed as u64), "reduced");
    q
}

/// `U diag(σ) Vᵀ` with random orthonormal `U: [rows, k]`, `V: [cols, k]`, as float32.
pub fn with_singular_values(rows: i64, cols: i64, sv: &[f64], seed: i64) -> Tensor {
    let k = sv.len() as i64;
    let u = orthonormal(rows, k, seed);
    let v = orthonormal(cols, k, seed + 1);
    let s = Tensor::from_slice(sv).to_kind(Kind::Double);
    (u * s).matmul(&v.tr()).to_kind(Kind::Float)
}

pub fn matrix(name: &str, weight: Tensor) -> WeightMatrix {
    WeightMatrix { name: name.into(), role: Role::Mlp, layout: Layout::Linear, weight }
}

/// One pair `W₁ = matrices[0]`, `W₂ = matrices[1]` (or tied when there is one matrix).
pub fn pair_of(weights: Vec<Tensor>) -> Matrices {
    let second = (weights.len() > 1).then_some(1);
    let matrices = weights.into_iter().enumerate().map(|(i, w)| matrix(&format!("w{}", i + 1), w)).collect();
    let pairs =
        vec![TiePair { name: "pair".into(), kind: PairKind::MlpFc1Fc2, first: 0, second, probe: None }];
    Matrices { matrices, pairs }
}
