//! Helpers shared by the layer tests: counting, tied copies and comparisons.
#![allow(dead_code)]

use tch::{nn, Device, Kind, Tensor};

/// A CPU var store in f64, so that equivalence tests compare mathematics, not rounding.
pub fn store() -> nn::VarStore {
    tch::manual_seed(0);
    nn::VarStore::new(Device::Cpu)
}

pub fn to_f64(vs: &mut nn::VarStore) {
    vs.set_kind(Kind::Double);
}

pub fn trainable_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// Overwrites `dst` with `src` in place, outside autograd.
pub fn copy(dst: &Tensor, src: &Tensor) {
    tch::no_grad(|| dst.shallow_clone().copy_(src));
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a - b).abs().max().double_value(&[])
}

pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let diff = max_abs_diff(a, b);
    assert!(diff <= tol, "{what}: max abs diff {diff:e} > {tol:e}");
}

/// Backpropagates one random linear functional of both outputs, so every output element matters
/// and both sides get the same upstream gradient. (Drawing it once matters: re-seeding before
/// each side races with the other tests of the binary, which share libtorch's generator.)
pub fn backward_same_random(a: &Tensor, b: &Tensor) {
    let weights = Tensor::randn_like(a);
    (a * &weights).sum(Kind::Double).backward();
    (b * &weights).sum(Kind::Double).backward();
}

pub fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}
