//! AdamW and SGD over parameter groups with `torch.optim`'s exact semantics, stepped by libtorch's
//! fused multi-tensor kernels (`_fused_adamw_`, `_fused_sgd_`: one call per group, device and dtype)
//! or, as the reference they are tested against, per tensor ([`reference`]).
//!
//! Parameters are shallow clones of the model's variables (e.g. `vs.trainable_variables()`), so the
//! optimizer updates the model in place and reads `param.grad()`. Parameters without a gradient are
//! skipped, as PyTorch skips `grad is None`. State is keyed by the parameter's flat index across the
//! groups (PyTorch's `state_dict` numbering) and is exported as named tensors for checkpoints.
mod adamw;
pub mod reference;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Parameters sharing a learning rate and weight decay (e.g. decayed weights vs. no-decay biases and
/// norms).
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    pub lr: f64,
    pub weight_decay: f64,
    /// When set, the fused kernels read the learning rate from this 0-dim float32 tensor (on the
    /// parameters' device) instead of `lr`, as `torch.optim` does with a tensor `lr`: a CUDA graph
    /// that captured the step then replays with whatever value the tensor holds, where a host `lr`
    /// would be baked into the graph. The per-tensor reference reads its value on the host.
    pub lr_tensor: Option<Tensor>,
}

impl ParamGroup {
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64) -> Self {
        Self { params, lr, weight_decay, lr_tensor: None }
    }

    /// The learning rate the fused kernels get.
    pub(crate) fn kernel_lr(&self) -> crate::ffi::Lr<'_> {
        match &self.lr_tensor {
            Some(t) => crate::ffi::Lr::Device(t),
            None => crate::ffi::Lr::Host(self.lr),
        }
    }

    /// The learning rate as a host value (a device read when it lives in `lr_tensor`).
    pub(crate) fn host_lr(&self) -> Result<f64> {
        match &self.lr_tensor {
            Some(t) => Ok(t.f_double_value(&[])?),
            None => Ok(self.lr),
        }
    }
}

/// How an optimizer computes its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// libtorch's fused kernels over whole parameter lists (CPU and CUDA; f32, f64, f16, bf16).
    #[default]
    Fused,
    /// One small op sequence per parameter, `torch.optim`'s `_single_tensor_*` code: the reference.
    PerTensor,
}

/// What the training loop needs from an optimizer.
pub trait Optimizer {
    /// One update from the parameters' current gradients.
    fn step(&mut self) -> Result<()> {
        self.step_amp(None, None)
    }

    /// One update from scaled gradients: divides them by `grad_scale` and skips the update (state
    /// counters included) when `found_inf` is non-zero, as `torch.optim`'s fused paths do when
    /// driven by a GradScaler. Both `None` is a plain `step`.
    fn step_amp(&mut self, grad_scale: Option<&Tensor>, found_inf: Option<&Tensor>) -> Result<()>;

    /// Whether `step_amp` unscales inside fused kernels (GradScaler then skips its own unscale pass).
    fn supports_amp_scaling(&self) -> bool;

    fn groups(&self) -> &[ParamGroup];

    fn groups_mut(&mut self) -> &mut [ParamGroup];

    /// The learning rate of group `group`. Panics if there is no such group.
    fn lr(&self, group: usize) -> f64 {
        self.groups()[group].lr
    }

    /// Sets the learning rate of group `group` (for schedules). Panics if there is no such group.
    fn set_lr(&mut self, group: usize, lr: f64) {
        self.groups_mut()[group].lr = lr;
    }

    /// The defined gradients of all parameters, in parameter order (what GradScaler and clipping use).
    fn grads(&self) -> Vec<Tensor> {
        self.groups().iter().flat_map(|g| g.params.iter()).map(Tensor::grad).filter(Tensor::defined).collect()
    }

    /// `zero_grad(set_to_none=True)`: drops every parameter's gradient.
    fn zero_grad(&self) -> Result<()> {
        for p in self.groups().iter().flat_map(|g| g.params.iter()) {
            crate::memory_format::reset_grad(p)?;
        }
        Ok(())
    }

    /// The optimizer state as named tensors (`"{param_index}.{name}"`), shallow clones.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;

    /// Restores `state_tensors()` output, copying onto each parameter's device and layout.
    fn load_state_tensors(&mut self, named: &[(String, Tensor)]) -> Result<()>;
}

/// All parameters in flat-index order.
pub(crate) fn flat_params(groups: &[ParamGroup]) -> Vec<&Tensor> {
    groups.iter().flat_map(|g| g.params.iter()).collect()
}

/// Splits `"{index}.{name}"` and checks the index against the parameter count.
pub(crate) fn parse_state_name(name: &str, n_params: usize) -> Result<(usize, &str)> {
    let (idx, field) =
        name.split_once('.').ok_or_else(|| Error::Invalid(format!("bad optimizer state name {name:?}")))?;
    let idx: usize = idx
        .parse()
        .map_err(|_| Error::Invalid(format!("bad parameter index in optimizer state {name:?}")))?;
    if idx >= n_params {
        return Err(Error::Invalid(format!("optimizer state {name:?}: only {n_params} parameters")));
    }
    Ok((idx, field))
}

/// A copy of `src` with `param`'s device, dtype, shape and memory layout.
pub(crate) fn state_like(param: &Tensor, src: &Tensor, name: &str) -> Result<Tensor> {
    if src.size() != param.size() {
        return Err(Error::Invalid(format!(
            "optimizer state {name:?} has shape {:?}, its parameter {:?}",
            src.size(),
            param.size()
        )));
    }
    let mut out = param.f_zeros_like()?;
    tch::no_grad(|| out.f_copy_(src))?;
    Ok(out)
}

/// A scalar `float32` step counter on `device` holding `src`'s value.
pub(crate) fn step_like(device: Device, src: &Tensor, name: &str) -> Result<Tensor> {
    if src.numel() != 1 {
        return Err(Error::Invalid(format!("optimizer state {name:?} must be a scalar")));
    }
    Ok(src.f_reshape([])?.f_to_kind(Kind::Float)?.f_to_device(device)?.detach().copy())
}

/// The parameters of one group that have gradients: (flat index, param, grad).
pub(crate) fn with_grads(group: &ParamGroup, first_index: usize) -> Vec<(usize, &Tensor, Tensor)> {
    group
        .params
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let g = p.grad();
            g.defined().then_some((first_index + i, p, g))
        })
        .collect()
}

/// Bucket keys for the fused kernels: every list passed in one call shares device and dtype.
pub(crate) fn bucket_by_device_and_kind<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> (Device, Kind),
) -> Vec<((Device, Kind), Vec<T>)> {
    let mut buckets: Vec<((Device, Kind), Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match buckets.iter_mut().find(|(bk, _)| *bk == k) {
            Some((_, b)) => b.push(item),
            None => buckets.push((k, vec![item])),
        }
    }
    buckets
}

/// `grad_scale`/`found_inf` on `device` (a no-op handle copy when already there).
pub(crate) fn on_device(t: Option<&Tensor>, device: Device) -> Result<Option<Tensor>> {
    Ok(match t {
        Some(t) => Some(t.f_to_device(device)?),
        None => None,
    })
}

/// For the per-tensor path: whether to skip this step, and the scale to divide gradients by.
pub(crate) fn amp_host_values(
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<(bool, f64)> {
    let skip = match found_inf {
        Some(f) => f.f_double_value(&[])? != 0.0,
        None => false,
    };
    let scale = match grad_scale {
        Some(s) => s.f_double_value(&[])?,
        None => 1.0,
    };
    Ok((skip, scale))
}

pub(crate) fn missing_state() -> Error {
    Error::Invalid("optimizer state missing for a parameter with a gradient".into())
}
