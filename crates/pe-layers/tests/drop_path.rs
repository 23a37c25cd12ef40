//! DropPath: per-sample drops that keep the expectation, identity in eval.
mod common;

use common::*;
use pe_layers::DropPath;
use tch::{Kind, Tensor};

#[test]
fn identity_in_eval_and_with_zero_probability() {
    let xs = Tensor::randn([8, 3, 4], tch::kind::FLOAT_CPU);
    assert_eq!(max_abs_diff(&DropPath::new(0.3).unwrap().forward_t(&xs, false), &xs), 0.0);
    assert_eq!(max_abs_diff(&DropPath::new(0.0).unwrap().forward_t(&xs, true), &xs), 0.0);
}

#[test]
fn drops_whole_samples_and_rescales_the_kept_ones() {
    tch::manual_seed(1);
    let prob = 0.25;
    let xs = Tensor::ones([20_000, 3, 2], tch::kind::FLOAT_CPU);
    let out = DropPath::new(prob).unwrap().forward_t(&xs, true);
    // Each sample is either all zero or all 1/(1-p).
    let per_sample_min = out.amin([1, 2], false);
    let per_sample_max = out.amax([1, 2], false);
    assert_eq!(max_abs_diff(&per_sample_min, &per_sample_max), 0.0, "a sample is dropped whole");
    let kept = per_sample_max.gt(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    // 20,000 Bernoulli(0.75) draws: std of the fraction ≈ 0.003; allow 5 sigma.
    assert!((kept - (1.0 - prob)).abs() < 0.016, "kept fraction {kept}");
    let scale = per_sample_max.max().double_value(&[]);
    assert!((scale - 1.0 / (1.0 - prob)).abs() < 1e-6, "rescale {scale}");
    // Expectation preserved: the mean over samples is 1 within sampling error.
    let mean = out.mean(Kind::Double).double_value(&[]);
    assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
}

#[test]
fn timm_linear_rule_for_per_block_rates() {
    // torch.linspace(0, 0.1, 5)
    let rates = pe_layers::drop_path::linear_rates(0.1, 5);
    for (rate, expected) in rates.iter().zip([0.0, 0.025, 0.05, 0.075, 0.1]) {
        assert!((rate - expected).abs() < 1e-12, "{rates:?}");
    }
    assert_eq!(rates.len(), 5);
    assert_eq!(pe_layers::drop_path::linear_rates(0.1, 1), vec![0.0]);
}

#[test]
fn impossible_configs_are_errors_not_panics() {
    assert_eq!(DropPath::new(1.0).unwrap_err(), pe_layers::Error::DropPathProb(1.0));
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let attention = pe_layers::AttentionConfig { dim: 10, heads: 3, ..Default::default() };
    let error = pe_layers::Error::HeadsDoNotDivide { dim: 10, heads: 3 };
    assert_eq!(attention.init(vs.root()).err(), Some(error.clone()));
    assert_eq!(attention.init_pe(vs.root()).err(), Some(error));
}
