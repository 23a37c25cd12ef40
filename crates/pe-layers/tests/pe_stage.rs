//! PE bottleneck stages: one shared W per stage, equivalence with standard bottlenecks whose
//! 1×1 convs hold copies of W / Wᵀ, and the stage entrance options.
mod common;

use common::*;
use pe_layers::{Bottleneck, FirstBlock, PeStage, PeStageConfig, ResidualConfig, StageEntry};
use tch::nn::{self, ModuleT};
use tch::Tensor;

const C: i64 = 16;
const WIDTH: i64 = 4;

fn stage_config(blocks: usize) -> PeStageConfig {
    PeStageConfig {
        in_channels: C,
        width: WIDTH,
        out_channels: C,
        blocks,
        stride: 1,
        first_block: FirstBlock::Projection,
        zero_init_last_bn: false,
    }
}

/// Copies a PE block's per-block parameters into a standard bottleneck, and W / Wᵀ into its 1×1 convs.
fn tie(standard: &Bottleneck, stage: &PeStage, block: usize) {
    let pe = &stage.blocks[block];
    copy(&standard.conv1.ws, &stage.shared_w.weight.view([WIDTH, C, 1, 1]));
    copy(&standard.conv3.ws, &stage.shared_w.weight.tr().reshape([C, WIDTH, 1, 1]));
    copy(&standard.conv2.ws, &pe.conv2.ws);
    for (dst, src) in [(&standard.bn1, &pe.bn1), (&standard.bn2, &pe.bn2), (&standard.bn3, &pe.bn3)] {
        copy(dst.ws.as_ref().unwrap(), &randn(&src.ws.as_ref().unwrap().size()));
        copy(src.ws.as_ref().unwrap(), dst.ws.as_ref().unwrap());
        copy(dst.bs.as_ref().unwrap(), &randn(&src.bs.as_ref().unwrap().size()));
        copy(src.bs.as_ref().unwrap(), dst.bs.as_ref().unwrap());
    }
}

fn standard_block(path: nn::Path) -> Bottleneck {
    ResidualConfig { in_channels: C, width: WIDTH, out_channels: C, stride: 1, zero_init_last_bn: false }
        .bottleneck(path)
}

#[test]
fn a_stage_registers_one_shared_w_and_no_per_block_1x1_convs() {
    let vs = store();
    let stage = stage_config(5).init(vs.root()).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    let shared: Vec<&String> = names.iter().filter(|n| n.contains("shared_w")).collect();
    assert_eq!(shared, vec!["shared_w"], "exactly one W for the stage");
    assert!(!names.iter().any(|n| n.contains("conv1") || n.contains("conv3")), "{names:?}");
    assert_eq!(stage.blocks.len(), 5);
    // W [4,16] + 5 × (3×3 conv 4·4·9 + bn1 2·4 + bn2 2·4 + bn3 2·16).
    assert_eq!(trainable_count(&vs), WIDTH * C + 5 * (WIDTH * WIDTH * 9 + 2 * WIDTH + 2 * WIDTH + 2 * C));
}

#[test]
fn every_block_changes_when_the_shared_w_changes() {
    let vs = store();
    let stage = stage_config(3).init(vs.root()).unwrap();
    let xs = Tensor::randn([2, C, 6, 6], tch::kind::FLOAT_CPU);
    let before: Vec<Tensor> = stage.blocks.iter().map(|b| b.forward_t(&xs, &stage.shared_w, false)).collect();
    tch::no_grad(|| {
        let mut weight = stage.shared_w.weight.shallow_clone();
        weight += Tensor::randn_like(&weight) * 0.5;
    });
    for (i, block) in stage.blocks.iter().enumerate() {
        let after = block.forward_t(&xs, &stage.shared_w, false);
        assert!(max_abs_diff(&before[i], &after) > 1e-4, "block {i} ignores the shared W");
    }
}

#[test]
fn pe_block_equals_a_bottleneck_with_w_and_w_transposed_copied() {
    let mut pe_vs = store();
    let stage = stage_config(1).init(pe_vs.root()).unwrap();
    let mut std_vs = store();
    let standard = standard_block(std_vs.root());
    to_f64(&mut pe_vs);
    to_f64(&mut std_vs);
    tie(&standard, &stage, 0);
    let xs = randn(&[3, C, 5, 5]);
    // Training mode: BN uses batch statistics, so both paths see identical normalisation.
    let pe_out = stage.forward_t(&xs, true);
    let std_out = standard.forward_t(&xs, true);
    assert_close(&pe_out, &std_out, 1e-10, "output");
    backward_same_random(&pe_out, &std_out);
    let summed = standard.conv1.ws.grad().view([WIDTH, C]) + standard.conv3.ws.grad().view([C, WIDTH]).tr();
    assert_close(&stage.shared_w.weight.grad(), &summed, 1e-5, "grad W");
    assert_close(&stage.blocks[0].conv2.ws.grad(), &standard.conv2.ws.grad(), 1e-5, "grad conv2");
}

#[test]
fn shared_w_gradient_sums_over_every_block_of_the_stage() {
    let blocks = 3;
    let mut pe_vs = store();
    let stage = stage_config(blocks).init(pe_vs.root()).unwrap();
    let mut std_vs = store();
    let standards: Vec<Bottleneck> = (0..blocks).map(|i| standard_block(std_vs.root() / i)).collect();
    to_f64(&mut pe_vs);
    to_f64(&mut std_vs);
    for (i, standard) in standards.iter().enumerate() {
        tie(standard, &stage, i);
    }
    let xs = randn(&[2, C, 4, 4]);
    let pe_out = stage.forward_t(&xs, true);
    let std_out = standards.iter().fold(xs.shallow_clone(), |h, block| block.forward_t(&h, true));
    assert_close(&pe_out, &std_out, 1e-10, "stage output");
    backward_same_random(&pe_out, &std_out);
    let summed = standards
        .iter()
        .map(|b| b.conv1.ws.grad().view([WIDTH, C]) + b.conv3.ws.grad().view([C, WIDTH]).tr())
        .fold(Tensor::zeros([WIDTH, C], tch::kind::DOUBLE_CPU), |acc, g| acc + g);
    assert_close(&stage.shared_w.weight.grad(), &summed, 1e-5, "grad W over 3 blocks");
}

#[test]
fn projection_entrance_changes_channels_and_resolution_before_the_pe_blocks() {
    let vs = store();
    let config = PeStageConfig { in_channels: 8, stride: 2, ..stage_config(2) };
    let stage = config.init(vs.root()).unwrap();
    assert!(matches!(stage.entry, StageEntry::Projection(_)));
    assert_eq!(stage.blocks.len(), 2);
    let out = stage.forward_t(&Tensor::randn([2, 8, 8, 8], tch::kind::FLOAT_CPU), false);
    assert_eq!(out.size(), [2, C, 4, 4]);
    let names = vs.variables();
    assert!(names.contains_key("transition.0.weight") && names.contains_key("transition.1.running_mean"));
    // Projection 8→16 conv + BN, then W and two PE blocks.
    let pe_blocks = 2 * (WIDTH * WIDTH * 9 + 4 * WIDTH + 2 * C);
    assert_eq!(trainable_count(&vs), 8 * C + 2 * C + WIDTH * C + pe_blocks);
}

#[test]
fn standard_entrance_keeps_block_zero_as_a_torchvision_bottleneck() {
    let vs = store();
    let config =
        PeStageConfig { in_channels: 8, stride: 2, first_block: FirstBlock::Standard, ..stage_config(3) };
    let stage = config.init(vs.root()).unwrap();
    assert!(matches!(stage.entry, StageEntry::Standard(_)));
    assert_eq!(stage.blocks.len(), 2, "blocks 1 and 2 share W");
    let names = vs.variables();
    for name in ["0.conv1.weight", "0.conv3.weight", "0.downsample.0.weight", "1.conv2.weight", "2.bn3.bias"]
    {
        assert!(names.contains_key(name), "missing {name}");
    }
    let out = stage.forward_t(&Tensor::randn([2, 8, 8, 8], tch::kind::FLOAT_CPU), true);
    assert_eq!(out.size(), [2, C, 4, 4]);
}

#[test]
fn no_entrance_when_the_stage_keeps_channels_and_resolution() {
    let vs = store();
    let stage = stage_config(2).init(vs.root()).unwrap();
    assert!(matches!(stage.entry, StageEntry::Identity));
}

#[test]
fn impossible_stages_are_errors_not_panics() {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    assert_eq!(stage_config(0).init(vs.root()).err(), Some(pe_layers::Error::EmptyStage));
    let one = PeStageConfig { first_block: FirstBlock::Standard, ..stage_config(1) };
    assert_eq!(one.init(vs.root()).err(), Some(pe_layers::Error::NoBlockToShare));
}
