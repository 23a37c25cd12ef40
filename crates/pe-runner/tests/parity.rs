//! The training step's pieces against timm and PyTorch (tests/data/parity.json, made by
//! tests/python/gen_parity.py): Mixup/CutMix pixels and targets, both losses, DeiT's distillation
//! loss, gradient clipping and the EMA; plus CutMix pixels on plans as training draws them.

use pe_data::mixup::{partner, MixKind, MixPlan, Mixup};
use pe_runner::config::DistillKind;
use pe_runner::train::batch;
use pe_runner::train::ema::Ema;
use pe_runner::train::grad_norm::clip_grad_norm;
use pe_runner::train::loss::{cross_entropy, distillation, soft_target_cross_entropy, with_teacher};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/parity.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read parity.json")).expect("parse")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().expect("array").iter().map(|x| x.as_i64().expect("int")).collect()
}

fn tensor(v: &Value, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&floats(v)).reshape(shape)
}

fn assert_close(actual: &Tensor, expected: &[f32], atol: f32, what: &str) {
    let actual = Vec::<f32>::try_from(actual.to_kind(Kind::Float).reshape([-1])).unwrap();
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= atol, "{what}[{i}]: {a} vs {e}");
    }
}

#[test]
fn mixup_and_cutmix_match_timm_pixels_and_targets() {
    let f = &fixture()["mix"];
    let shape = ints(&f["shape"]);
    let (h, w) = (shape[2] as usize, shape[3] as usize);
    let images = tensor(&f["images"], &shape);
    let labels = ints(&f["labels"]);
    let mixup = Mixup {
        mixup_alpha: 1.0,
        cutmix_alpha: 1.0,
        prob: 1.0,
        switch_prob: 0.5,
        label_smoothing: f["smoothing"].as_f64().unwrap(),
        num_classes: f["num_classes"].as_u64().unwrap() as usize,
    };
    for case in f["cases"].as_array().unwrap() {
        let lambda = case["lambda"].as_f64().unwrap();
        let plan = match case["kind"].as_str().unwrap() {
            "mixup" => MixPlan { lambda, kind: MixKind::Mixup },
            _ => {
                let center = ints(&case["center"]);
                MixPlan::cutmix(h, w, lambda, center[0] as usize, center[1] as usize)
            }
        };
        let what = format!("{} λ={lambda}", case["kind"]);
        assert_close(&batch::mix(&images, &plan), &floats(&case["images"]), 1e-6, &what);
        let targets = batch::soft_targets(&mixup, &labels, &plan, Device::Cpu);
        assert_close(&targets, &floats(&case["targets"]), 1e-6, &what);
    }
}

#[test]
fn losses_match_timm_and_torch() {
    let f = &fixture()["loss"];
    let logits = tensor(&f["logits"], &[6, -1]);
    let soft = tensor(&f["soft_targets"], &[6, -1]);
    let labels = Tensor::from_slice(&ints(&f["labels"]));
    let close = |t: Tensor, e: &Value| (t.double_value(&[]) - e.as_f64().unwrap()).abs() < 1e-6;
    assert!(close(soft_target_cross_entropy(&logits, &soft), &f["soft"]));
    for (eps, expected) in f["hard"].as_object().unwrap() {
        let eps: f64 = eps.parse().unwrap();
        assert!(close(cross_entropy(&logits, &labels, eps), expected), "label_smoothing {eps}");
    }
}

#[test]
fn distillation_loss_matches_deit_formulas() {
    let f = &fixture()["distill"];
    let [logits, dist_logits, teacher, soft] =
        ["logits", "dist_logits", "teacher", "soft_targets"].map(|key| tensor(&f[key], &[6, -1]));
    let labels = Tensor::from_slice(&ints(&f["labels"]));
    let smoothing = f["smoothing"].as_f64().unwrap();
    for case in f["cases"].as_array().unwrap() {
        let kind = match case["kind"].as_str().unwrap() {
            "soft" => DistillKind::Soft,
            _ => DistillKind::Hard,
        };
        let (alpha, tau) = (case["alpha"].as_f64().unwrap(), case["tau"].as_f64().unwrap());
        let base = match case["base"].as_str().unwrap() {
            "soft" => soft_target_cross_entropy(&logits, &soft),
            _ => cross_entropy(&logits, &labels, smoothing),
        };
        let loss = with_teacher(base, distillation(&dist_logits, &teacher, kind, tau), alpha);
        let (ours, deit) = (loss.double_value(&[]), case["loss"].as_f64().unwrap());
        assert!((ours - deit).abs() <= 1e-6, "{case}: {ours} vs DeiT's {deit}");
    }
}

#[test]
fn clip_grad_norm_matches_torch() {
    let f = &fixture()["clip"];
    let shapes: Vec<Vec<i64>> = f["shapes"].as_array().unwrap().iter().map(ints).collect();
    for case in f["cases"].as_array().unwrap() {
        let grads: Vec<Tensor> =
            f["grads"].as_array().unwrap().iter().zip(&shapes).map(|(g, s)| tensor(g, s)).collect();
        let norm = clip_grad_norm(&grads, case["max_norm"].as_f64().unwrap()).unwrap().double_value(&[]);
        assert!((norm - case["norm"].as_f64().unwrap()).abs() < 1e-5);
        for (g, e) in grads.iter().zip(case["clipped"].as_array().unwrap()) {
            assert_close(g, &floats(e), 1e-6, "clipped grad");
        }
    }
}

/// `numel` values of `flat` from `offset` on, wrapping: the fixture's flat state tiled over a model.
fn tiled(flat: &[f32], offset: usize, shape: &[i64]) -> Tensor {
    let numel = shape.iter().product::<i64>() as usize;
    let values: Vec<f32> = (offset..offset + numel).map(|k| flat[k % flat.len()]).collect();
    Tensor::from_slice(&values).reshape(shape)
}

/// Each variable of `vs` by name with its offset into the flat parameter or buffer state.
fn layout(vs: &nn::VarStore) -> Vec<(String, bool, usize)> {
    let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut next = [0usize; 2];
    names
        .into_iter()
        .map(|(name, t)| {
            let buffer = name.contains("running_");
            let offset = next[buffer as usize];
            next[buffer as usize] += t.numel();
            (name, buffer, offset)
        })
        .collect()
}

#[test]
fn ema_matches_timm_model_ema_v3_on_parameters_and_bn_statistics() {
    let f = &fixture()["ema"];
    let config = pe_models::preset("resnet_mini").unwrap();
    let source = nn::VarStore::new(Device::Cpu);
    config.init(source.root()).unwrap();
    let layout = layout(&source);
    let load = |state: &Value| {
        let variables = source.variables();
        let (params, buffers) = (floats(&state["params"]), floats(&state["buffers"]));
        tch::no_grad(|| {
            for (name, buffer, offset) in &layout {
                let var = &variables[name];
                let flat = if *buffer { &buffers } else { &params };
                var.shallow_clone().copy_(&tiled(flat, *offset, &var.size()));
            }
        });
    };
    let states = f["states"].as_array().unwrap();
    load(&states[0]);
    let mut ema = Ema::new(&config, &source, f["decay"].as_f64().unwrap(), false).unwrap();
    for state in &states[1..] {
        load(state);
        ema.update().unwrap();
    }
    let averaged = ema.vs.variables();
    let (params, buffers) = (floats(&f["expected"]["params"]), floats(&f["expected"]["buffers"]));
    assert!(layout.iter().any(|l| l.1), "resnet_mini has BN statistics");
    for (name, buffer, offset) in &layout {
        let var = &averaged[name];
        let expected = tiled(if *buffer { &buffers } else { &params }, *offset, &var.size());
        assert_close(var, &Vec::<f32>::try_from(expected.reshape([-1])).unwrap(), 1e-6, name);
    }
}

#[test]
fn cutmix_pixels_on_drawn_plans_come_from_the_partner_inside_the_box_only() {
    // Sample i is filled with the value i, so every pixel tells which sample it came from.
    let (n, h, w) = (5usize, 12usize, 9usize);
    let images = Tensor::arange(n as i64, (Kind::Float, Device::Cpu))
        .view([-1, 1, 1, 1])
        .repeat([1, 3, h as i64, w as i64]);
    let mixup = Mixup {
        mixup_alpha: 0.0,
        cutmix_alpha: 1.0,
        prob: 1.0,
        switch_prob: 0.5,
        label_smoothing: 0.0,
        num_classes: 2,
    };
    let mut cut = 0;
    for seed in 0..100 {
        let plan = mixup.plan_for(seed, 0, 0, 0, h, w);
        let MixKind::CutMix { top, left, height, width } = plan.kind else { continue };
        cut += 1;
        let mixed = batch::mix(&images, &plan);
        for i in 0..n {
            let own = mixed.get(i as i64);
            let from_partner = own.eq(partner(i, n) as f64);
            let kept = own.eq(i as f64).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            if partner(i, n) != i {
                assert!((kept - plan.lambda).abs() < 1e-6, "seed {seed} sample {i}");
                let window =
                    from_partner.narrow(1, top as i64, height as i64).narrow(2, left as i64, width as i64);
                assert!(window.all().int64_value(&[]) == 1, "seed {seed}: box not from the partner");
            } else {
                assert_eq!(kept, 1.0, "the middle sample is its own partner");
            }
        }
    }
    assert!(cut > 50);
}
