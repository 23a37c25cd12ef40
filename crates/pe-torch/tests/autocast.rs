//! Autocast regions on CPU: bf16/fp16 matmuls and convs, fp32 where autocast keeps fp32, state restored.
use pe_torch::autocast::{self, autocast};
use tch::{nn, nn::Module, Device, Kind, Tensor};

fn model(vs: &nn::Path) -> (nn::Conv2D, nn::Linear) {
    let conv = nn::conv2d(vs / "conv", 3, 4, 3, Default::default());
    let fc = nn::linear(vs / "fc", 4 * 6 * 6, 5, Default::default());
    (conv, fc)
}

#[test]
fn bf16_outputs_f32_losses_and_f32_master_gradients() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let (conv, fc) = model(&vs.root());
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let target = Tensor::from_slice(&[1i64, 3]);
    let loss = {
        let _amp = autocast(Device::Cpu, Kind::BFloat16).unwrap();
        assert!(autocast::is_enabled(Device::Cpu).unwrap());
        assert_eq!(autocast::dtype(Device::Cpu).unwrap(), Kind::BFloat16);
        let h = conv.forward(&x);
        assert_eq!(h.kind(), Kind::BFloat16, "conv runs in bf16");
        let logits = fc.forward(&h.relu().flatten(1, -1));
        assert_eq!(logits.kind(), Kind::BFloat16, "linear runs in bf16");
        let logp = logits.log_softmax(-1, Kind::Float);
        assert_eq!(logp.kind(), Kind::Float);
        // As in PyTorch, CPU autocast keeps softmax in the input dtype (CUDA's list promotes it to fp32)
        // and runs the losses in fp32.
        assert_eq!(logits.softmax(-1, None::<Kind>).kind(), Kind::BFloat16);
        let nll = logits.log_softmax(-1, None::<Kind>).nll_loss(&target);
        assert_eq!(nll.kind(), Kind::Float, "nll_loss is on CPU autocast's fp32 list");
        let mse = logits.mse_loss(&logits.zeros_like(), tch::Reduction::Mean);
        assert_eq!(mse.kind(), Kind::Float, "mse_loss is on CPU autocast's fp32 list");
        let loss = logits.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0);
        assert_eq!(loss.kind(), Kind::Float, "cross_entropy is on CPU autocast's fp32 list");
        loss
    };
    assert!(!autocast::is_enabled(Device::Cpu).unwrap(), "guard restores the disabled state");
    loss.backward();
    for (name, v) in vs.variables() {
        assert_eq!(v.kind(), Kind::Float, "{name}");
        assert_eq!(v.grad().kind(), Kind::Float, "{name} master gradient is f32");
        assert!(v.grad().isfinite().all().int64_value(&[]) == 1, "{name}");
    }
    // Outside the region everything is fp32 again.
    assert_eq!(conv.forward(&x).kind(), Kind::Float);
}

#[test]
fn bf16_forward_is_close_to_fp32() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 16, 8, Default::default());
    let x = Tensor::randn([4, 16], (Kind::Float, Device::Cpu));
    let full = fc.forward(&x);
    let half = {
        let _amp = autocast(Device::Cpu, Kind::BFloat16).unwrap();
        fc.forward(&x)
    };
    let d = (full - half.to_kind(Kind::Float)).abs().max().double_value(&[]);
    assert!(d > 0.0 && d < 0.1, "bf16 rounding expected, got max diff {d}");
}

#[test]
fn fp16_on_cpu_and_nested_regions_restore_the_outer_state() {
    let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
    let w = Tensor::ones([3, 4], (Kind::Float, Device::Cpu));
    let outer = autocast(Device::Cpu, Kind::BFloat16).unwrap();
    {
        let _inner = autocast(Device::Cpu, Kind::Half).unwrap();
        assert_eq!(x.linear(&w, None::<Tensor>).kind(), Kind::Half);
    }
    assert!(autocast::is_enabled(Device::Cpu).unwrap());
    assert_eq!(autocast::dtype(Device::Cpu).unwrap(), Kind::BFloat16);
    assert_eq!(x.linear(&w, None::<Tensor>).kind(), Kind::BFloat16);
    drop(outer);
    assert!(!autocast::is_enabled(Device::Cpu).unwrap());
    assert_eq!(x.linear(&w, None::<Tensor>).kind(), Kind::Float);
}

#[test]
fn cuda_region_only_touches_cuda_state_and_bad_dtypes_are_errors() {
    let before = autocast::dtype(Device::Cuda(0)).unwrap();
    {
        let _g = autocast(Device::Cuda(0), Kind::BFloat16).unwrap();
        assert!(autocast::is_enabled(Device::Cuda(0)).unwrap());
        assert!(!autocast::is_enabled(Device::Cpu).unwrap());
    }
    assert!(!autocast::is_enabled(Device::Cuda(0)).unwrap());
    assert_eq!(autocast::dtype(Device::Cuda(0)).unwrap(), before);
    assert!(autocast(Device::Cpu, Kind::Float).is_err());
    assert!(autocast(Device::Mps, Kind::BFloat16).is_err());
}
