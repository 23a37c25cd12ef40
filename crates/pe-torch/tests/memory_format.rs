//! channels_last: strides, conversion of a VarStore's conv weights, identical conv results.
use pe_torch::memory_format::{
    self, convert_conv_weights_, is_channels_last, to_channels_last, MemoryFormat,
};
use pe_torch::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[test]
fn strides_and_queries() {
    let x = Tensor::arange(120, (Kind::Float, Device::Cpu)).reshape([2, 3, 4, 5]);
    assert!(!is_channels_last(&x).unwrap());
    assert_eq!(memory_format::memory_format(&x).unwrap(), MemoryFormat::Contiguous);
    let y = to_channels_last(&x).unwrap();
    assert_eq!(y.size(), [2, 3, 4, 5]);
    assert_eq!(y.stride(), [60, 1, 15, 3]);
    assert!(is_channels_last(&y).unwrap());
    assert_eq!(memory_format::memory_format(&y).unwrap(), MemoryFormat::ChannelsLast);
    assert!(y.equal(&x), "same values, different layout");
    let back = memory_format::to_memory_format(&y, MemoryFormat::Contiguous).unwrap();
    assert_eq!(back.stride(), [60, 20, 5, 1]);
    // 3-D tensors have no channels_last layout: a libtorch error, not an abort.
    assert!(to_channels_last(&Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu))).is_err());
}

#[test]
fn conv_forward_is_the_same_in_both_formats_and_weights_convert_in_place() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = nn::conv2d(vs.root() / "conv", 3, 8, 3, nn::ConvConfig { padding: 1, ..Default::default() });
    let fc = nn::linear(vs.root() / "fc", 8, 2, Default::default());
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let reference = conv.forward(&x);
    let weight_before = conv.ws.copy();

    // An optimizer built before the conversion keeps working on the converted variables.
    let params = vs.trainable_variables();
    let mut opt = Sgd::new(vec![ParamGroup::new(params, 0.1, 0.0)], SgdConfig::default()).unwrap();

    assert_eq!(convert_conv_weights_(&vs).unwrap(), 1, "only the 4-D conv weight converts");
    assert!(is_channels_last(&conv.ws).unwrap());
    assert!(conv.ws.equal(&weight_before));
    assert!(conv.ws.requires_grad());
    assert_eq!(fc.ws.stride(), [8, 1], "2-D weights are left alone");
    assert!(vs.variables()["conv.weight"].stride() == conv.ws.stride(), "the VarStore sees the new layout");

    let xl = to_channels_last(&x).unwrap();
    let out = conv.forward(&xl);
    assert!(is_channels_last(&out).unwrap(), "channels_last in, channels_last out");
    let d = (&out - &reference).abs().max().double_value(&[]);
    assert!(d <= 1e-5, "max diff {d}");

    // Backward gives channels_last gradients and the fused step keeps the layout.
    out.sum(Kind::Float).backward();
    assert!(is_channels_last(&conv.ws.grad()).unwrap());
    opt.step().unwrap();
    assert!(is_channels_last(&conv.ws).unwrap());
    assert!(!conv.ws.equal(&weight_before), "the step updated the converted weight");
    assert_eq!(convert_conv_weights_(&vs).unwrap(), 0, "already converted");
}
