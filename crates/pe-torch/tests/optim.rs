//! Fused AdamW/SGD against the per-tensor reference and against torch.optim's numbers.
mod common;

use common::*;
use pe_torch::optim::{AdamW, AdamWConfig, Backend, Optimizer, Sgd, SgdConfig};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy)]
enum Scenario {
    AdamW,
    SgdMomentum,
    SgdNesterov,
    SgdPlain,
}

impl Scenario {
    const ALL: [Scenario; 4] =
        [Scenario::AdamW, Scenario::SgdMomentum, Scenario::SgdNesterov, Scenario::SgdPlain];

    fn key(self) -> &'static str {
        match self {
            Scenario::AdamW => "adamw",
            Scenario::SgdMomentum => "sgd_momentum",
            Scenario::SgdNesterov => "sgd_nesterov",
            Scenario::SgdPlain => "sgd_plain",
        }
    }

    fn base_lr(self) -> f64 {
        match self {
            Scenario::AdamW => 0.01,
            _ => 0.1,
        }
    }

    /// The optimizer of tests/python/gen_expected.py's scenario with this name.
    fn build(self, params: &[Tensor], backend: Backend) -> Box<dyn Optimizer> {
        let lr = self.base_lr();
        let sgd = |momentum, nesterov| -> Box<dyn Optimizer> {
            Box::new(
                Sgd::with_backend(groups(params, lr, 0.01), SgdConfig { momentum, nesterov }, backend)
                    .unwrap(),
            )
        };
        match self {
            Scenario::AdamW => Box::new(
                AdamW::with_backend(groups(params, lr, 0.05), AdamWConfig::default(), backend).unwrap(),
            ),
            Scenario::SgdMomentum => sgd(0.9, false),
            Scenario::SgdNesterov => sgd(0.9, true),
            Scenario::SgdPlain => sgd(0.0, false),
        }
    }

    fn run(self, backend: Backend) -> Vec<Tensor> {
        let e = expected();
        let params = init_params(&e);
        let mut opt = self.build(&params, backend);
        run_steps(&e, &params, opt.as_mut(), self.base_lr(), 0..10);
        params
    }
}

#[test]
fn fused_matches_per_tensor_reference_over_10_steps() {
    for s in Scenario::ALL {
        let fused = s.run(Backend::Fused);
        let reference = s.run(Backend::PerTensor);
        for ((f, r), n) in fused.iter().zip(&reference).zip(NAMES) {
            let d = max_abs_diff(f, r);
            assert!(d <= 1e-6, "{}: {n} differs by {d}", s.key());
        }
        // The parameters really moved (a no-op optimizer would also "match").
        let init = init_params(&expected());
        assert!(max_abs_diff(&fused[0], &init[0]) > 1e-3, "{}: w did not move", s.key());
    }
}

#[test]
fn both_backends_match_torch_optim() {
    let e = expected();
    for s in Scenario::ALL {
        for backend in [Backend::Fused, Backend::PerTensor] {
            let params = s.run(backend);
            for (p, n) in params.iter().zip(NAMES) {
                let want = tensor(&e["final"][s.key()][n], &p.size());
                let d = max_abs_diff(p, &want);
                assert!(d <= 1e-6, "{} {backend:?}: {n} differs from torch.optim by {d}", s.key());
            }
        }
    }
}

#[test]
fn adamw_hand_derived_first_step() {
    // Step 1 with bias correction: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + eps).
    for backend in [Backend::Fused, Backend::PerTensor] {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let mut opt = AdamW::with_backend(
            vec![pe_torch::optim::ParamGroup::new(vec![p.shallow_clone()], 0.1, 0.5)],
            AdamWConfig::default(),
            backend,
        )
        .unwrap();
        set_grad(&p, Some(Tensor::from_slice(&[0.3f32, -4.0, 0.0])));
        opt.step().unwrap();
        let want = Tensor::from_slice(&[1.0f32 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95]);
        assert!(max_abs_diff(&p, &want) < 1e-6, "{backend:?}: {p}");
        let st = opt.state_tensors();
        let names: Vec<_> = st.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["0.exp_avg", "0.exp_avg_sq", "0.step"]);
        assert_eq!(st[2].1.double_value(&[]), 1.0);
        assert_eq!(st[2].1.kind(), Kind::Float);
    }
}

#[test]
fn sgd_momentum_buffer_starts_at_first_gradient() {
    // PyTorch: buf₁ = g₁ + wd·p₀; buf₂ = μ·buf₁ + g₂ + wd·p₁.
    for backend in [Backend::Fused, Backend::PerTensor] {
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let groups = vec![pe_torch::optim::ParamGroup::new(vec![p.shallow_clone()], 0.5, 0.1)];
        let mut opt =
            Sgd::with_backend(groups, SgdConfig { momentum: 0.9, nesterov: false }, backend).unwrap();
        set_grad(&p, Some(Tensor::from_slice(&[2.0f32])));
        opt.step().unwrap();
        // buf = 2 + 0.1 = 2.1; p = 1 − 0.5·2.1 = −0.05
        assert!((p.double_value(&[0]) + 0.05).abs() < 1e-6, "{backend:?} {p}");
        set_grad(&p, Some(Tensor::from_slice(&[1.0f32])));
        opt.step().unwrap();
        // buf = 0.9·2.1 + 1 + 0.1·(−0.05) = 2.885; p = −0.05 − 0.5·2.885 = −1.4925
        assert!((p.double_value(&[0]) + 1.4925).abs() < 1e-6, "{backend:?} {p}");
        let (name, buf) = &opt.state_tensors()[0];
        assert_eq!(name, "0.momentum_buffer");
        assert!((buf.double_value(&[0]) - 2.885).abs() < 1e-6);
    }
}

#[test]
fn state_round_trip_resumes_identically() {
    let e = expected();
    for s in Scenario::ALL {
        let straight = s.run(Backend::Fused);
        let params = init_params(&e);
        let mut first = s.build(&params, Backend::Fused);
        run_steps(&e, &params, first.as_mut(), s.base_lr(), 0..5);
        // Checkpoint: parameter values and optimizer state copied out (deep copies).
        let saved: Vec<(String, Tensor)> =
            first.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect();
        drop(first);
        let resumed: Vec<Tensor> = params.iter().map(|p| p.detach().copy().set_requires_grad(true)).collect();
        let mut second = s.build(&resumed, Backend::Fused);
        second.load_state_tensors(&saved).unwrap();
        run_steps(&e, &resumed, second.as_mut(), s.base_lr(), 5..10);
        for ((a, b), n) in straight.iter().zip(&resumed).zip(NAMES) {
            assert_eq!(max_abs_diff(a, b), 0.0, "{}: {n} differs after resume", s.key());
        }
        if matches!(s, Scenario::SgdPlain) {
            assert!(second.state_tensors().is_empty());
        }
    }
}

#[test]
fn load_state_rejects_bad_names_and_shapes() {
    let params = init_params(&expected());
    let mut opt = Scenario::AdamW.build(&params, Backend::Fused);
    let bad_shape = [
        ("0.exp_avg".to_string(), Tensor::zeros([2], (Kind::Float, Device::Cpu))),
        ("0.exp_avg_sq".to_string(), Tensor::zeros([4, 3], (Kind::Float, Device::Cpu))),
        ("0.step".to_string(), Tensor::from(1.0f32)),
    ];
    assert!(opt.load_state_tensors(&bad_shape).is_err());
    let bad_index = [("7.exp_avg".to_string(), Tensor::zeros([4], (Kind::Float, Device::Cpu)))];
    assert!(opt.load_state_tensors(&bad_index).is_err());
    let incomplete = [("2.exp_avg".to_string(), Tensor::zeros([4], (Kind::Float, Device::Cpu)))];
    assert!(opt.load_state_tensors(&incomplete).is_err());
    let mut sgd = Scenario::SgdMomentum.build(&params, Backend::Fused);
    assert!(sgd
        .load_state_tensors(&[("0.exp_avg".to_string(), Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)))])
        .is_err());
}

#[test]
fn parameters_without_gradients_are_skipped() {
    for s in Scenario::ALL {
        let params = init_params(&expected());
        let before = params[2].copy();
        let mut opt = s.build(&params, Backend::Fused);
        set_grad(&params[0], Some(params[0].ones_like()));
        opt.step().unwrap();
        assert_eq!(max_abs_diff(&params[2], &before), 0.0, "{}", s.key());
        assert!(opt.state_tensors().iter().all(|(n, _)| n.starts_with("0.")), "{}", s.key());
    }
}

#[test]
fn step_amp_unscales_and_skips_on_found_inf() {
    let e = expected();
    for s in Scenario::ALL {
        for backend in [Backend::Fused, Backend::PerTensor] {
            // Reference: one plain step from the true gradients.
            let plain = init_params(&e);
            let mut opt = s.build(&plain, backend);
            for (p, n) in plain.iter().zip(NAMES) {
                set_grad(p, Some(tensor(&e["grads"][0][n], &p.size())));
            }
            opt.step().unwrap();

            let scaled = init_params(&e);
            let mut opt = s.build(&scaled, backend);
            for (p, n) in scaled.iter().zip(NAMES) {
                set_grad(p, Some(tensor(&e["grads"][0][n], &p.size()) * 1024.0));
            }
            let scale = Tensor::from(1024.0f32);
            // An overflow skips everything, step counters included.
            opt.step_amp(Some(&scale), Some(&Tensor::from_slice(&[1.0f32]))).unwrap();
            for (p, n) in scaled.iter().zip(NAMES) {
                let init = tensor(&e["init"][n], &p.size());
                assert_eq!(max_abs_diff(p, &init), 0.0, "{} {backend:?}: {n} moved on overflow", s.key());
            }
            for (name, t) in opt.state_tensors() {
                if name.ends_with(".step") {
                    assert_eq!(t.double_value(&[]), 0.0, "{} {backend:?}: {name}", s.key());
                }
            }
            // A clean scaled step equals the plain step.
            for (p, n) in scaled.iter().zip(NAMES) {
                set_grad(p, Some(tensor(&e["grads"][0][n], &p.size()) * 1024.0));
            }
            opt.step_amp(Some(&scale), Some(&Tensor::from_slice(&[0.0f32]))).unwrap();
            for ((a, b), n) in plain.iter().zip(&scaled).zip(NAMES) {
                let d = max_abs_diff(a, b);
                assert!(d <= 1e-6, "{} {backend:?}: {n} differs by {d}", s.key());
            }
        }
    }
}

#[test]
fn bf16_parameters_step_with_fused_kernels() {
    for backend in [Backend::Fused, Backend::PerTensor] {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).to_kind(Kind::BFloat16).set_requires_grad(true);
        let groups = vec![pe_torch::optim::ParamGroup::new(vec![p.shallow_clone()], 0.25, 0.0)];
        let mut opt = Sgd::with_backend(groups, SgdConfig::default(), backend).unwrap();
        set_grad(&p, Some(Tensor::from_slice(&[1.0f32, 2.0]).to_kind(Kind::BFloat16)));
        opt.step().unwrap();
        assert_eq!(p.kind(), Kind::BFloat16);
        assert_eq!(Vec::<f32>::try_from(p.to_kind(Kind::Float)).unwrap(), [0.75, 1.5]);
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let params = init_params(&expected());
    assert!(Sgd::new(groups(&params, 0.1, 0.0), SgdConfig { momentum: 0.0, nesterov: true }).is_err());
    assert!(AdamW::new(groups(&params, -1.0, 0.0), AdamWConfig::default()).is_err());
    assert!(
        AdamW::new(groups(&params, 0.1, 0.0), AdamWConfig { beta1: 1.0, ..AdamWConfig::default() }).is_err()
    );
}

#[test]
fn zero_grad_sets_gradients_to_none_and_set_lr_changes_groups() {
    let params = init_params(&expected());
    let mut opt = Scenario::AdamW.build(&params, Backend::Fused);
    for p in &params {
        set_grad(p, Some(p.ones_like()));
    }
    assert_eq!(opt.grads().len(), 3);
    opt.zero_grad().unwrap();
    assert!(params.iter().all(|p| !p.grad().defined()));
    assert!(opt.grads().is_empty());
    opt.set_lr(1, 0.5);
    assert_eq!(opt.lr(0), 0.01);
    assert_eq!(opt.lr(1), 0.5);
}
