//! torchvision's Bottleneck and BasicBlock: names, parameter counts and shapes.
mod common;

use common::*;
use pe_layers::ResidualConfig;
use tch::nn::ModuleT;
use tch::Tensor;

#[test]
fn resnet50_layer1_block0_matches_torchvision_counts_and_names() {
    let vs = store();
    let config =
        ResidualConfig { in_channels: 64, width: 64, out_channels: 256, stride: 1, zero_init_last_bn: false };
    let block = config.bottleneck(vs.root());
    // torchvision resnet50().layer1[0]: 75,008 parameters (with its downsample).
    assert_eq!(trainable_count(&vs), 75_008);
    let mut names: Vec<String> = vs.variables().into_keys().filter(|n| n.ends_with("weight")).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn1.weight",
            "bn2.weight",
            "bn3.weight",
            "conv1.weight",
            "conv2.weight",
            "conv3.weight",
            "downsample.0.weight",
            "downsample.1.weight"
        ]
    );
    let out = block.forward_t(&Tensor::randn([2, 64, 8, 8], tch::kind::FLOAT_CPU), true);
    assert_eq!(out.size(), [2, 256, 8, 8]);
}

#[test]
fn strided_bottleneck_puts_the_stride_on_the_3x3_conv() {
    let vs = store();
    let config = ResidualConfig {
        in_channels: 256,
        width: 128,
        out_channels: 512,
        stride: 2,
        zero_init_last_bn: false,
    };
    let block = config.bottleneck(vs.root());
    let xs = Tensor::randn([1, 256, 8, 8], tch::kind::FLOAT_CPU);
    let reduced = xs.apply(&block.conv1);
    assert_eq!(reduced.size(), [1, 128, 8, 8], "the 1×1 reduce keeps the resolution");
    assert_eq!(reduced.apply(&block.conv2).size(), [1, 128, 4, 4], "the 3×3 conv strides");
    // torchvision resnet50().layer2[0]: 379,392 parameters.
    assert_eq!(trainable_count(&vs), 379_392);
    assert_eq!(block.forward_t(&xs, false).size(), [1, 512, 4, 4]);
}

#[test]
fn basic_block_counts_match_torchvision() {
    let vs = store();
    // torchvision resnet18().layer2[0]: 230,144 parameters.
    let config = ResidualConfig {
        in_channels: 64,
        width: 128,
        out_channels: 128,
        stride: 2,
        zero_init_last_bn: false,
    };
    let block = config.basic(vs.root());
    assert_eq!(trainable_count(&vs), 230_144);
    let out = block.forward_t(&Tensor::randn([1, 64, 8, 8], tch::kind::FLOAT_CPU), true);
    assert_eq!(out.size(), [1, 128, 4, 4]);
}

#[test]
fn zero_init_last_bn_makes_the_block_start_as_relu_of_the_shortcut() {
    let vs = store();
    let config =
        ResidualConfig { in_channels: 32, width: 8, out_channels: 32, stride: 1, zero_init_last_bn: true };
    let block = config.bottleneck(vs.root());
    let xs = Tensor::randn([2, 32, 4, 4], tch::kind::FLOAT_CPU);
    assert_close(&block.forward_t(&xs, true), &xs.relu(), 1e-6, "identity residual");
}
