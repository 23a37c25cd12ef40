//! `pe_models::convert`: the symmetry moves keep the function (checked on the models' own
//! forward), and the fit finds a tie that a baseline provably hides.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use pe_models::convert::{self, ConvertError, Method, Weights};
use pe_models::{preset, Model, ModelConfig};

/// tch's generator is global and the tests run on threads: each seeded test holds this lock.
static SEEDED: Mutex<()> = Mutex::new(());

fn seeded(seed: i64) -> MutexGuard<'static, ()> {
    let guard = SEEDED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    guard
}

fn fresh(config: &ModelConfig) -> (nn::VarStore, Model) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = config.init(vs.root()).expect("a valid preset");
    (vs, model)
}

fn weights_of(vs: &nn::VarStore) -> Weights {
    pe_models::weights::state_dict(vs).into_iter().map(|(name, t)| (name, t.detach().copy())).collect()
}

fn copy(weights: &Weights) -> Weights {
    weights.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
}

fn with_weights(config: &ModelConfig, weights: &Weights) -> Model {
    let (mut vs, model) = fresh(config);
    let copies = copy(weights);
    let selection = pe_models::pretrained::Selection { exclude: &[], head_init_scale: 1.0 };
    pe_models::pretrained::load(config, &vs, std::path::Path::new("test"), copies, &selection).expect("fits");
    vs.freeze();
    model
}

/// Every tensor of a fresh model perturbed so that nothing is at its neutral initial value
/// (zero biases, unit BN scales and running variances would hide a wrong move).
fn randomised(config: &ModelConfig) -> Weights {
    let (vs, _) = fresh(config);
    let mut weights = weights_of(&vs);
    for (name, tensor) in weights.iter_mut() {
        if tensor.kind() != Kind::Float {
            continue;
        }
        let noise = Tensor::randn_like(tensor);
        *tensor = if name.ends_with("running_var") {
            (noise * 0.3).exp()
        } else if name.ends_with("bn1.weight") || name.ends_with("bn2.weight") || name.ends_with("bn3.weight")
        {
            1.0 + noise * 0.3
        } else if name.ends_with("bias") || name.ends_with("running_mean") {
            noise * 0.1
        } else {
            &*tensor + noise * 0.02
        };
    }
    weights
}

fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[])
}

fn largest_move(before: &Weights, after: &Weights) -> f64 {
    before.iter().map(|(n, t)| (t - &after[n]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn vit(pe_attention: bool, pe_mlp: bool) -> ModelConfig {
    match preset("vit_mini").unwrap() {
        ModelConfig::Vit(c) => ModelConfig::Vit(pe_models::VitConfig { pe_attention, pe_mlp, ..c }),
        _ => unreachable!(),
    }
}

#[test]
fn the_attention_rotations_change_no_logit() {
    let baseline = vit(false, false);
    let _seeded = seeded(1);
    let weights = randomised(&baseline);
    let moved = convert::aligned(&baseline, &vit(true, false), copy(&weights)).unwrap();
    assert!(largest_move(&weights, &moved) > 1e-2, "the rotations moved nothing: a vacuous check");
    let images = Tensor::randn([4, 3, 28, 28], (Kind::Float, Device::Cpu));
    let before = with_weights(&baseline, &weights).forward_t(&images, false);
    let after = with_weights(&baseline, &moved).forward_t(&images, false);
    assert!(relative_gap(&before, &after) < 1e-5, "{}", relative_gap(&before, &after));
}

#[test]
fn the_mlp_unit_scales_keep_a_relu_mlp_exactly() {
    let baseline = vit(false, false);
    let _seeded = seeded(2);
    let weights = randomised(&baseline);
    let moved = convert::aligned(&baseline, &vit(false, true), copy(&weights)).unwrap();
    // The MLP of block 1 by hand, with ReLU (for which the scales are an exact symmetry).
    let mlp = |w: &Weights, x: &Tensor| {
        let hidden = x.linear(&w["blocks.1.mlp.fc1.weight"], Some(&w["blocks.1.mlp.fc1.bias"])).relu();
        hidden.linear(&w["blocks.1.mlp.fc2.weight"], Some(&w["blocks.1.mlp.fc2.bias"]))
    };
    let x = Tensor::randn([64, 96], (Kind::Float, Device::Cpu));
    assert!(largest_move(&weights, &moved) > 1e-2, "the scales moved nothing: a vacuous check");
    assert!(relative_gap(&mlp(&weights, &x), &mlp(&moved, &x)) < 1e-5);
}

#[test]
fn the_resnet_permutations_and_bn_scales_change_no_eval_logit() {
    let baseline = preset("resnet_mini").unwrap();
    let _seeded = seeded(3);
    let mut weights = randomised(&baseline);
    // Trained conv3s are far smaller than their conv1s (bn3 rescales them anyway): the fit has to
    // bring them to one norm without moving bn2's magnitude (below).
    for (_, tensor) in weights.iter_mut().filter(|(name, _)| name.ends_with("conv3.weight")) {
        *tensor = &*tensor * 0.01;
    }
    let moved = convert::aligned(&baseline, &preset("resnet_mini_pe").unwrap(), copy(&weights)).unwrap();
    assert!(largest_move(&weights, &moved) > 1e-2, "the fit moved nothing: a vacuous check");
    let images = Tensor::randn([4, 3, 28, 28], (Kind::Float, Device::Cpu));
    let before = with_weights(&baseline, &weights).forward_t(&images, false);
    let after = with_weights(&baseline, &moved).forward_t(&images, false);
    assert!(relative_gap(&before, &after) < 1e-5, "{}", relative_gap(&before, &after));
    // The scale gauge between bn2 and bn3 leaves bn2's affine at its trained magnitude (a fine-tune
    // cannot recover from γ ~ 1e-3): per block, the geometric mean of |γ after / γ before| is 1.
    let bn2: Vec<&String> = weights.keys().filter(|name| name.ends_with("bn2.weight")).collect();
    assert_eq!(bn2.len(), 6);
    for name in bn2 {
        let ratio = (&moved[name] / &weights[name]).abs().log().mean(Kind::Double).exp().double_value(&[]);
        assert!((ratio - 1.0).abs() < 1e-4, "{name}: γ scaled by {ratio} on average");
    }
}

/// A random orthogonal matrix (QR of a Gaussian one).
fn rotation(d: i64) -> Tensor {
    let (q, _) = Tensor::linalg_qr(&Tensor::randn([d, d], (Kind::Float, Device::Cpu)), "reduced");
    q
}

fn mean_errors(conversion: &convert::Conversion) -> (f64, f64) {
    let n = conversion.tied.len() as f64;
    let naive = conversion.tied.iter().map(|t| t.naive_error).sum::<f64>() / n;
    let fitted = conversion.tied.iter().map(|t| t.error).sum::<f64>() / n;
    (naive, fitted)
}

#[test]
fn a_tied_vit_hidden_by_random_symmetries_is_found_again() {
    let (baseline, twin) = (vit(false, false), vit(true, true));
    let _seeded = seeded(4);
    let mut weights = randomised(&baseline);
    let (dim, heads, d) = (96, 3, 32);
    for block in 0..4 {
        let p = format!("blocks.{block}");
        // Untie: a PE layer written out as a baseline (W_k = W_kv, W_v = W_kvᵀ, P = W_qᵀ, fc2 = fc1ᵀ) …
        let (wq, wkv) = (
            Tensor::randn([dim, dim], (Kind::Float, Device::Cpu)) * 0.1,
            Tensor::randn([dim, dim], (Kind::Float, Device::Cpu)) * 0.1,
        );
        let fc1 = weights[&format!("{p}.mlp.fc1.weight")].copy();
        // … hidden by per-head rotations and positive per-unit scales.
        let a = Tensor::block_diag(&(0..heads).map(|_| rotation(d)).collect::<Vec<_>>());
        let b = Tensor::block_diag(&(0..heads).map(|_| rotation(d)).collect::<Vec<_>>());
        let qkv = Tensor::cat(&[a.matmul(&wq), a.matmul(&wkv), b.matmul(&wkv.tr())], 0);
        weights.insert(format!("{p}.attn.qkv.weight"), qkv);
        weights.insert(format!("{p}.attn.proj.weight"), wq.tr().matmul(&b.tr()));
        let scale = (Tensor::randn([fc1.size()[0]], (Kind::Float, Device::Cpu)) * 0.5).exp();
        weights.insert(format!("{p}.mlp.fc2.weight"), (&fc1 * scale.unsqueeze(1)).tr());
        weights.insert(format!("{p}.mlp.fc1.weight"), &fc1 / scale.unsqueeze(1));
    }
    let naive = convert::convert(&baseline, &twin, copy(&weights), Method::Naive).unwrap();
    let fitted = convert::convert(&baseline, &twin, weights, Method::Symmetric).unwrap();
    assert_eq!(fitted.tied.len(), 4 * 6);
    let (naive_error, _) = mean_errors(&naive);
    assert!(naive_error > 0.3, "naive {naive_error}: the symmetries hid nothing");
    // The MLP scales and the Q/P rotations are found again; the K/V coupling (one rotation per
    // head acting on rows and another on columns) is non-convex and the fit ends in a local
    // minimum: better than averaging, far from the planted tie.
    for (t, n) in fitted.tied.iter().zip(&naive.tied) {
        assert_eq!(t.replaces, n.replaces);
        if t.tied.ends_with("wkv") {
            assert!(t.error < 0.8 * n.error, "{}: {} (naive {})", t.replaces, t.error, n.error);
        } else {
            assert!(t.error < 2e-3, "{}: {} (naive {})", t.replaces, t.error, n.error);
        }
    }
    // The PE model takes the weights as they are.
    with_weights(&twin, &fitted.weights);
}

#[test]
fn a_tied_resnet_stage_hidden_by_permutations_and_scales_is_found_again() {
    let (baseline, twin) = (preset("resnet_mini").unwrap(), preset("resnet_mini_pe").unwrap());
    let _seeded = seeded(6);
    let mut weights = randomised(&baseline);
    for (stage, width) in [(1, 8i64), (2, 16), (3, 32)] {
        let channels = 4 * width;
        let shared = Tensor::randn([width, channels], (Kind::Float, Device::Cpu));
        let shuffle = || Tensor::randperm(width, (Kind::Int64, Device::Cpu));
        let sign_scale = |n: i64| {
            (Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.5).exp()
                * (Tensor::randint(2, [n], (Kind::Float, Device::Cpu)) * 2.0 - 1.0)
        };
        for block in 0..2 {
            let p = format!("layer{stage}.{block}");
            if block > 0 {
                // conv1: rows permuted and scaled by any non-zero factor (bn1 absorbs it).
                let conv1 = shared.index_select(0, &shuffle()) * sign_scale(width).unsqueeze(1);
                weights.insert(format!("{p}.conv1.weight"), conv1.reshape([width, channels, 1, 1]));
            }
            // conv3 = Wᵀ with columns permuted and scaled positively, rows (bn3) by any factor.
            let positive = (Tensor::randn([width], (Kind::Float, Device::Cpu)) * 0.5).exp();
            let conv3 = (shared.index_select(0, &shuffle()) * positive.unsqueeze(1)).tr()
                * sign_scale(channels).unsqueeze(1);
            weights.insert(format!("{p}.conv3.weight"), conv3.reshape([channels, width, 1, 1]));
        }
    }
    let naive = convert::convert(&baseline, &twin, copy(&weights), Method::Naive).unwrap();
    let fitted = convert::convert(&baseline, &twin, weights, Method::Symmetric).unwrap();
    assert_eq!(fitted.tied.len(), 3 * 3, "per stage: block 0's conv3, block 1's conv1 and conv3");
    let (naive_error, fitted_error) = (mean_errors(&naive).0, mean_errors(&fitted).1);
    assert!(naive_error > 0.5, "naive {naive_error}: the symmetries hid nothing");
    assert!(fitted_error < 0.5 * naive_error, "symmetric {fitted_error} (naive {naive_error})");
    // The widest stage (32 rows of 128) is found again; in the narrow ones (8 and 16 rows) the
    // planted row scales blur the permutation-free estimate of the output-channel scales.
    for t in fitted.tied.iter().filter(|t| t.tied.starts_with("layer3")) {
        assert!(t.error < 0.01, "{}: {}", t.replaces, t.error);
    }
    assert_eq!(fitted.notes.len(), 3, "each stage's block 0 is re-wired through its transition");
    with_weights(&twin, &fitted.weights);
}

#[test]
fn the_symmetric_fit_never_ties_worse_than_averaging_on_a_vit() {
    let (baseline, twin) = (vit(false, false), vit(true, true));
    let _seeded = seeded(8);
    let weights = randomised(&baseline);
    let naive = convert::convert(&baseline, &twin, copy(&weights), Method::Naive).unwrap();
    let fitted = convert::convert(&baseline, &twin, weights, Method::Symmetric).unwrap();
    let squares = |c: &convert::Conversion| c.tied.iter().map(|t| t.error.powi(2)).sum::<f64>();
    assert!(squares(&fitted) <= squares(&naive) + 1e-9);
    for t in &fitted.tied {
        assert!(
            (t.naive_error - naive.tied.iter().find(|n| n.replaces == t.replaces).unwrap().error).abs()
                < 1e-12
        );
    }
}

#[test]
fn a_model_that_is_not_the_twin_is_refused() {
    let weights: Weights = HashMap::new();
    let refuse = |from: &str, to: &str| {
        let error =
            convert::convert(&preset(from).unwrap(), &preset(to).unwrap(), HashMap::new(), Method::Naive)
                .expect_err("refused");
        assert!(matches!(error, ConvertError::Mismatch(_)), "{error}");
        error.to_string()
    };
    assert!(refuse("vit_mini", "resnet_mini_pe").contains("the baseline is a ViT, the PE model a ResNet"));
    assert!(refuse("vit_mini", "vit_pe_tiny").contains("not the baseline's twin"));
    assert!(refuse("vit_pe_mini", "vit_pe_mini").contains("already tied"));
    assert!(refuse("resnet_mini", "resnet_mini").contains("no PE stage"));
    let missing = convert::convert(
        &preset("vit_mini").unwrap(),
        &preset("vit_pe_mini").unwrap(),
        weights,
        Method::Naive,
    );
    assert!(matches!(missing, Err(ConvertError::Missing { .. })));
}
