//! Matrices with prescribed singular values and subspaces, shared by the tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use tch::{Kind, Tensor};

use pe_analyze::matrices::{Layout, Matrices, PairKind, Role, TiePair, WeightMatrix};

/// A random `[n, k]` matrix with orthonormal columns (QR of a Gaussian), reproducible by `seed`.
pub fn orthonormal(n: i64, k: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let (q, _) = Tensor::linalg_qr(&Tensor::randn([n, k], (Kind::Double, tch::Device::Cpu)), "reduced");
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
