//! GradScaler: PyTorch's scale schedule, skipped steps, idempotent unscale, checkpoint state.
mod common;

use common::*;
use pe_torch::optim::{AdamW, AdamWConfig, Backend, Optimizer, ParamGroup, Sgd, SgdConfig};
use pe_torch::{GradScaler, GradScalerState};
use tch::{Kind, Tensor};

fn param() -> Tensor {
    Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)
}

/// Scaled backward of `sum(p)` (true gradient 1), optionally with one inf/NaN injected.
fn backward(scaler: &GradScaler, p: &Tensor, inject: Option<f64>) {
    pe_torch::memory_format::reset_grad(p).unwrap();
    scaler.scale_loss(&p.sum(Kind::Float)).backward();
    if let Some(v) = inject {
        let _ = p.grad().get(1).fill_(v);
    }
}

#[test]
fn defaults_are_pytorchs() {
    let s = GradScaler::new(true);
    assert_eq!(s.scale_value(), 65536.0);
    assert_eq!((s.growth_factor, s.backoff_factor, s.growth_interval), (2.0, 0.5, 2000));
    assert_eq!(s.growth_tracker_value(), 0);
    assert_eq!(s.scale_tensor().kind(), Kind::Float);
}

#[test]
fn scale_loss_and_unscale_round_trip() {
    let mut s = GradScaler::new(true);
    let p = param();
    backward(&s, &p, None);
    assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [65536.0; 3]);
    assert!(!s.unscale_(&[p.grad()]).unwrap());
    assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [1.0; 3]);
    // Idempotent within the step: the gradients are not divided again.
    assert!(!s.unscale_(&[p.grad()]).unwrap());
    assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [1.0; 3]);
    assert_eq!(s.found_inf(), Some(false));
    s.update().unwrap();
    assert_eq!(s.found_inf(), None);
    assert_eq!(s.growth_tracker_value(), 1);
}

#[test]
fn injected_inf_or_nan_skips_the_step_and_halves_the_scale() {
    for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
        let mut s = GradScaler::new(true);
        let p = param();
        let mut opt =
            Sgd::new(vec![ParamGroup::new(vec![p.shallow_clone()], 0.1, 0.0)], SgdConfig::default()).unwrap();
        // Two clean steps first so the tracker has something to reset.
        for _ in 0..2 {
            backward(&s, &p, None);
            assert!(!s.unscale_(&opt.grads()).unwrap());
            opt.step().unwrap();
            s.update().unwrap();
        }
        assert_eq!(s.growth_tracker_value(), 2);
        let before = p.copy();
        backward(&s, &p, Some(bad));
        let found = s.unscale_(&opt.grads()).unwrap();
        assert!(found, "{bad} not detected");
        s.step(&mut opt).unwrap(); // must not step after the overflow unscale_ saw
        assert_eq!(max_abs_diff(&p, &before), 0.0);
        s.update().unwrap();
        assert_eq!(s.scale_value(), 32768.0);
        assert_eq!(s.growth_tracker_value(), 0);
    }
}

#[test]
fn growth_interval_clean_steps_double_the_scale() {
    let mut s = GradScaler::new(true);
    let p = param();
    for i in 1..=2000 {
        backward(&s, &p, None);
        assert!(!s.unscale_(&[p.grad()]).unwrap());
        s.update().unwrap();
        let want = if i < 2000 { 65536.0 } else { 131072.0 };
        assert_eq!(s.scale_value(), want, "after {i} clean steps");
    }
    assert_eq!(s.growth_tracker_value(), 0);
}

#[test]
fn schedule_matches_torch_amp_grad_scaler() {
    // tests/python/gen_expected.py: torch.amp.GradScaler("cpu", growth_interval=3) over a pattern.
    let e = expected();
    let mut s = GradScaler::with_config(true, 65536.0, 2.0, 0.5, 3);
    let p = param();
    for (t, want) in e["scaler"].as_array().unwrap().iter().enumerate() {
        let inf = want["inf"].as_bool().unwrap();
        backward(&s, &p, inf.then_some(f64::INFINITY));
        let found = s.unscale_(&[p.grad()]).unwrap();
        assert_eq!(found, want["found_inf"].as_bool().unwrap(), "step {t}");
        s.update().unwrap();
        assert_eq!(s.scale_value(), want["scale"].as_f64().unwrap(), "step {t}");
        assert_eq!(s.growth_tracker_value(), want["growth_tracker"].as_i64().unwrap(), "step {t}");
    }
}

#[test]
fn fused_step_with_scale_equals_unscale_then_step() {
    for inject in [None, Some(f64::INFINITY)] {
        // Path A: unscale_ (e.g. for clipping), then step.
        let mut sa = GradScaler::new(true);
        let pa = param();
        let mut oa =
            AdamW::new(vec![ParamGroup::new(vec![pa.shallow_clone()], 0.1, 0.01)], AdamWConfig::default())
                .unwrap();
        backward(&sa, &pa, inject);
        sa.unscale_(&oa.grads()).unwrap();
        sa.step(&mut oa).unwrap();
        sa.update().unwrap();
        // Path B: the fused kernel unscales and checks the flag itself.
        let mut sb = GradScaler::new(true);
        let pb = param();
        let mut ob =
            AdamW::new(vec![ParamGroup::new(vec![pb.shallow_clone()], 0.1, 0.01)], AdamWConfig::default())
                .unwrap();
        backward(&sb, &pb, inject);
        sb.step(&mut ob).unwrap();
        assert_eq!(sb.found_inf(), Some(inject.is_some()));
        sb.update().unwrap();
        assert!(max_abs_diff(&pa, &pb) <= 1e-6, "{inject:?}: {pa} vs {pb}");
        assert_eq!(sa.scale_value(), sb.scale_value());
        let moved = max_abs_diff(&pb, &param()) > 0.0;
        assert_eq!(moved, inject.is_none(), "{inject:?}");
        let step = ob.state_tensors().into_iter().find(|(n, _)| n == "0.step").unwrap().1;
        assert_eq!(step.double_value(&[]), if inject.is_some() { 0.0 } else { 1.0 });
    }
}

#[test]
fn step_with_per_tensor_optimizer_unscales_first() {
    let mut s = GradScaler::new(true);
    let p = param();
    let groups = vec![ParamGroup::new(vec![p.shallow_clone()], 0.5, 0.0)];
    let mut opt = Sgd::with_backend(groups, SgdConfig::default(), Backend::PerTensor).unwrap();
    backward(&s, &p, None);
    s.step(&mut opt).unwrap();
    s.update().unwrap();
    assert_eq!(Vec::<f32>::try_from(&p).unwrap(), [0.5; 3]);
}

#[test]
fn misuse_is_an_error_not_an_abort() {
    let mut s = GradScaler::new(true);
    assert!(s.update().is_err(), "update without an inf check");
    let p = param();
    backward(&s, &p, None);
    let mut opt =
        AdamW::new(vec![ParamGroup::new(vec![p.shallow_clone()], 0.1, 0.0)], AdamWConfig::default()).unwrap();
    s.step(&mut opt).unwrap();
    assert!(s.unscale_(&opt.grads()).is_err(), "unscale_ after step");
    assert!(s.step(&mut opt).is_err(), "second step");
    s.update().unwrap();
    let half = Tensor::ones([2], (Kind::Half, tch::Device::Cpu));
    assert!(s.unscale_(&[half]).is_err(), "fp16 gradients");
}

#[test]
fn disabled_scaler_is_a_no_op() {
    let mut s = GradScaler::new(false);
    let p = param();
    backward(&s, &p, Some(f64::INFINITY));
    assert_eq!(s.scale_value(), 1.0);
    assert!(!s.unscale_(&[p.grad()]).unwrap());
    assert_eq!(s.found_inf(), None);
    s.update().unwrap();
    assert_eq!(p.grad().double_value(&[0]), 1.0);
}

#[test]
fn state_round_trips_through_json_with_pytorch_keys() {
    let mut s = GradScaler::with_config(true, 1024.0, 2.0, 0.5, 100);
    let p = param();
    for _ in 0..3 {
        backward(&s, &p, None);
        s.unscale_(&[p.grad()]).unwrap();
        s.update().unwrap();
    }
    let state = s.state();
    assert_eq!(state.scale, 1024.0);
    assert_eq!(state.growth_tracker, 3);
    let json = serde_json::to_value(state).unwrap();
    for key in ["scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    let back: GradScalerState = serde_json::from_value(json).unwrap();
    let mut t = GradScaler::new(true);
    t.load_state(&back).unwrap();
    assert_eq!(t.state(), state);
    // A PyTorch state_dict (no `enabled` key) loads too.
    let torch_dict = serde_json::json!({"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5,
        "growth_interval": 2000, "_growth_tracker": 7});
    let st: GradScalerState = serde_json::from_value(torch_dict).unwrap();
    t.load_state(&st).unwrap();
    assert_eq!((t.scale_value(), t.growth_tracker_value(), t.enabled), (8.0, 7, true));
}
