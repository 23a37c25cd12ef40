//! The ViT forward computes its last block for the class token alone (`Vit::features`); the
//! analysis path (`Vit::features_probed`) still computes every token of every block. Both must give
//! the same features and the same gradients, in training mode with stochastic depth too (each path
//! draws one Bernoulli per sample and block, so equal seeds give equal masks). The attention
//! dropout is left at 0: its mask has as many entries as there are queries, so the two paths draw
//! different masks for it.

use pe_models::VitConfig;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn config() -> VitConfig {
    VitConfig { drop_path_rate: 0.3, depth: 3, ..VitConfig::vit_mini() }
}

/// Features of both paths and the gradients of a fixed random projection of each.
fn features_and_grads(store: &VarStore, features: impl Fn() -> Tensor) -> (Tensor, Vec<(String, Tensor)>) {
    tch::manual_seed(7);
    let out = features();
    let weights = Tensor::randn(out.size(), (Kind::Float, Device::Cpu));
    (&out * weights).sum(Kind::Float).backward();
    // Every variable but the head's, which the features do not reach.
    let mut named =
        store.variables().into_iter().filter(|(name, _)| !name.starts_with("head.")).collect::<Vec<_>>();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let grads = named
        .iter()
        .map(|(name, v)| {
            assert!(v.grad().defined(), "{name} got no gradient");
            (name.clone(), v.grad().copy())
        })
        .collect();
    for (_, v) in &named {
        let _ = v.grad().zero_();
    }
    (out.detach(), grads)
}

fn assert_paths_agree(config: VitConfig) {
    let store = VarStore::new(Device::Cpu);
    let model = config.init(store.root()).unwrap();
    let images = Tensor::randn([4, 3, 28, 28], (Kind::Float, Device::Cpu));
    let (pruned, pruned_grads) = features_and_grads(&store, || model.features(&images, true));
    let (full, full_grads) =
        features_and_grads(&store, || model.features_probed(&images, true, &mut |_, _| {}));
    assert_eq!(pruned.size(), [4, 96]);
    let close = |a: &Tensor, b: &Tensor| a.allclose(b, 1e-4, 1e-5, false);
    assert!(close(&pruned, &full), "features differ: {}", (&pruned - &full).abs().max());
    // Stochastic depth acted (linear rates give a single block none), else the test proves less.
    if config.depth > 1 {
        assert!(!close(&pruned, &model.features(&images, false)), "training mode changed nothing");
    }
    for ((name, a), (_, b)) in pruned_grads.iter().zip(&full_grads) {
        let scale = b.abs().max().double_value(&[]);
        let diff = (a - b).abs().max().double_value(&[]);
        // Relative to the tensor's largest entry: k_bias's true gradient is 0 (softmax ignores a
        // shift shared by all of a query's logits), so both sides hold rounding noise there.
        assert!(
            diff <= 1e-5 * scale + 1e-6,
            "{name}: gradients differ by {diff:e} (largest entry {scale:e})"
        );
    }
}

/// One test, because the paths must see the same random draws: a second test in this binary would
/// draw from the same global generator at the same time.
#[test]
fn the_class_token_path_matches_the_full_forward() {
    tch::manual_seed(0);
    assert_paths_agree(config());
    assert_paths_agree(config().pe());
    // A single block is both the first and the last.
    assert_paths_agree(VitConfig { depth: 1, ..config() });
}
