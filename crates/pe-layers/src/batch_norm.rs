//! BatchNorm2d that stays in eval mode once its affine parameters are frozen.
//!
//! A linear probe or a partly frozen fine-tune (`optimizer.freeze`) expects a frozen BatchNorm to
//! keep normalising with the statistics it was trained with, as timm's `freeze_batch_norm_2d`
//! and a PyTorch user's `bn.eval()` do: in train mode it would otherwise normalise with each
//! batch's statistics and overwrite its running ones, so the "frozen" backbone would drift.

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `nn::BatchNorm` with PyTorch's defaults and parameter names (`weight`, `bias`,
/// `running_mean`, `running_var`).
#[derive(Debug)]
pub struct BatchNorm(nn::BatchNorm);

/// The running statistics' update weight (PyTorch's default): after a train-mode batch they
/// are `(1 - MOMENTUM) × old + MOMENTUM × the batch's`.
pub const MOMENTUM: f64 = 0.1;

/// BatchNorm2d with PyTorch's defaults; `zero_init` starts the affine scale at 0 so a residual
/// branch begins as the identity (torchvision's `zero_init_residual`).
pub fn batch_norm(path: nn::Path, channels: i64, zero_init: bool) -> BatchNorm {
    let ws_init = nn::Init::Const(if zero_init { 0.0 } else { 1.0 });
    BatchNorm(nn::batch_norm2d(
        path,
        channels,
        nn::BatchNormConfig { ws_init, momentum: MOMENTUM, ..Default::default() },
    ))
}

impl BatchNorm {
    /// Frozen when no affine parameter takes a gradient: then it neither uses batch statistics
    /// nor updates its running ones, even in train mode.
    pub fn is_frozen(&self) -> bool {
        let trains = |t: &Option<Tensor>| t.as_ref().is_some_and(Tensor::requires_grad);
        !trains(&self.ws) && !trains(&self.bs)
    }
}

/// Its parameters and running statistics, as tch names them (`ws`, `bs`, `running_mean`, ...).
impl std::ops::Deref for BatchNorm {
    type Target = nn::BatchNorm;

    fn deref(&self) -> &nn::BatchNorm {
        &self.0
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.0.forward_t(xs, train && !self.is_frozen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn running_mean(vs: &nn::VarStore) -> Tensor {
        vs.variables()["bn.running_mean"].shallow_clone()
    }

    #[test]
    fn a_trainable_batch_norm_uses_and_updates_batch_statistics() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = batch_norm(vs.root() / "bn", 3, false);
        let xs = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 3.0 + 2.0;
        let out = bn.forward_t(&xs, true);
        // Normalised with this batch's mean: each channel's output averages to 0.
        assert!(
            out.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float).abs().max().double_value(&[]) < 1e-5
        );
        assert!(running_mean(&vs).abs().max().double_value(&[]) > 0.05);
    }

    #[test]
    fn a_frozen_batch_norm_in_train_mode_acts_as_in_eval_mode() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = batch_norm(vs.root() / "bn", 3, false);
        for (_, t) in vs.variables() {
            let _ = t.set_requires_grad(false);
        }
        assert!(bn.is_frozen());
        let xs = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 3.0 + 2.0;
        let trained = bn.forward_t(&xs, true);
        // Fresh running statistics are mean 0, variance 1: eval mode is x / sqrt(1 + eps).
        let expected = &xs / (1.0f64 + 1e-5).sqrt();
        assert!((trained - expected).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(running_mean(&vs).abs().max().double_value(&[]), 0.0);
    }
}
