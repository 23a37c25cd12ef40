//! Shared test inputs: PyTorch's expected values (tests/data/expected.json, made by
//! tests/python/gen_expected.py) and helpers.
#![allow(dead_code)]

use pe_torch::optim::{Optimizer, ParamGroup};
use serde_json::Value;
use tch::{Kind, Tensor};

pub const NAMES: [&str; 3] = ["w", "conv", "b"];

pub fn expected() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read expected.json")).expect("parse")
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

pub fn tensor(v: &Value, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&floats(v)).reshape(shape)
}

pub fn shape(e: &Value, name: &str) -> Vec<i64> {
    e["shapes"][name].as_array().expect("shape").iter().map(|x| x.as_i64().expect("int")).collect()
}

/// Fresh leaf parameters `w`, `conv`, `b` with the expected file's initial values.
pub fn init_params(e: &Value) -> Vec<Tensor> {
    NAMES.iter().map(|n| tensor(&e["init"][*n], &shape(e, n)).set_requires_grad(true)).collect()
}

/// The two groups of the PyTorch scenarios: [w, conv] with `wd`, [b] without decay.
pub fn groups(params: &[Tensor], lr: f64, wd: f64) -> Vec<ParamGroup> {
    vec![
        ParamGroup::new(vec![params[0].shallow_clone(), params[1].shallow_clone()], lr, wd),
        ParamGroup::new(vec![params[2].shallow_clone()], lr, 0.0),
    ]
}

/// Sets `p.grad` to `g` (a fresh leaf gradient), or drops it for `None`.
pub fn set_grad(p: &Tensor, g: Option<Tensor>) {
    pe_torch::memory_format::reset_grad(p).expect("reset grad");
    if let Some(g) = g {
        // Accumulating into an empty grad makes `g` (a copy of it) the gradient.
        let loss = (p * g).sum(Kind::Float);
        loss.backward();
    }
}

/// Runs the expected file's 10 steps (lr = base·(1 − t/20), `b` without grad at step 3).
pub fn run_steps(
    e: &Value,
    params: &[Tensor],
    opt: &mut dyn Optimizer,
    base_lr: f64,
    steps: std::ops::Range<usize>,
) {
    for t in steps {
        for gi in 0..opt.groups().len() {
            opt.set_lr(gi, base_lr * (1.0 - t as f64 / 20.0));
        }
        for (p, n) in params.iter().zip(NAMES) {
            let g = &e["grads"][t][n];
            set_grad(p, (!g.is_null()).then(|| tensor(g, &p.size())));
        }
        opt.step().expect("step");
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
