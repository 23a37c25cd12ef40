//! SGD with momentum and Nesterov (`torch.optim.SGD`, dampening 0, weight decay added to the gradient).
use tch::Tensor;

use super::{
    amp_host_values, bucket_by_device_and_kind, flat_params, missing_state, on_device, parse_state_name,
    reference, state_like, with_grads, Backend, Optimizer, ParamGroup,
};
use crate::{ffi, Error, Result};

/// SGD's group-independent hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
}

/// `torch.optim.SGD(groups, momentum, nesterov=..., dampening=0, fused=True)` (or the per-tensor
/// reference). The momentum buffer starts as the first step's (decayed) gradient, as in PyTorch.
pub struct Sgd {
    groups: Vec<ParamGroup>,
    pub config: SgdConfig,
    backend: Backend,
    momentum_buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    /// SGD on the fused kernel.
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        Self::with_backend(groups, config, Backend::Fused)
    }

    pub fn with_backend(groups: Vec<ParamGroup>, config: SgdConfig, backend: Backend) -> Result<Self> {
        if config.momentum < 0.0 || (config.nesterov && config.momentum <= 0.0) {
            return Err(Error::Invalid(format!(
                "invalid SGD config {config:?} (Nesterov needs momentum > 0)"
            )));
        }
        if let Some(g) = groups.iter().find(|g| g.lr < 0.0 || g.weight_decay < 0.0) {
            return Err(Error::Invalid(format!("invalid lr {} / weight decay {}", g.lr, g.weight_decay)));
        }
        let n = groups.iter().map(|g| g.params.len()).sum();
        Ok(Self { groups, config, backend, momentum_buffers: (0..n).map(|_| None).collect() })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Optimizer for Sgd {
    fn step_amp(&mut self, grad_scale: Option<&Tensor>, found_inf: Option<&Tensor>) -> Result<()> {
        let SgdConfig { momentum, nesterov } = self.config;
        let host_amp = match self.backend {
            Backend::PerTensor => Some(amp_host_values(grad_scale, found_inf)?),
            Backend::Fused => None,
        };
        if matches!(host_amp, Some((true, _))) {
            return Ok(());
        }
        let Self { groups, momentum_buffers, .. } = self;
        let mut first = 0;
        for group in groups.iter() {
            let items = with_grads(group, first);
            first += group.params.len();
            let wd = group.weight_decay;
            if let Some((_, scale)) = host_amp {
                let lr = group.host_lr()?;
                for (i, p, g) in &items {
                    let g = if scale != 1.0 { g / scale } else { g.shallow_clone() };
                    reference::sgd_step(p, &g, &mut momentum_buffers[*i], lr, wd, momentum, nesterov)?;
                }
                continue;
            }
            // A parameter's first step initialises its buffer to the gradient inside the kernel
            // (`is_first_step`), so new and existing buffers go to separate calls. New buffers start
            // at zero: if the kernel skips the step (found_inf), the next step's `0·m + g` is again
            // exactly the gradient.
            let mut first_step = vec![false; items.len()];
            if momentum != 0.0 {
                for (k, (i, p, _)) in items.iter().enumerate() {
                    if momentum_buffers[*i].is_none() {
                        momentum_buffers[*i] = Some(p.f_zeros_like()?);
                        first_step[k] = true;
                    }
                }
            }
            let keyed: Vec<_> = items.into_iter().zip(first_step).collect();
            let buckets = bucket_by_device_and_kind(keyed, |((_, p, _), _)| (p.device(), p.kind()));
            for ((device, _), bucket) in buckets {
                let gs = on_device(grad_scale, device)?;
                let fi = on_device(found_inf, device)?;
                for is_first in [true, false] {
                    let mut lists =
                        ffi::SgdLists { params: Vec::new(), grads: Vec::new(), momentum_buffers: Vec::new() };
                    for ((i, p, g), _) in bucket.iter().filter(|(_, f)| *f == is_first) {
                        lists.params.push(p);
                        lists.grads.push(g);
                        if momentum != 0.0 {
                            lists
                                .momentum_buffers
                                .push(momentum_buffers[*i].as_ref().ok_or_else(missing_state)?);
                        }
                    }
                    if !lists.params.is_empty() {
                        ffi::fused_sgd(
                            &lists,
                            group.kernel_lr(),
                            momentum,
                            wd,
                            nesterov,
                            is_first,
                            gs.as_ref(),
                            fi.as_ref(),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn supports_amp_scaling(&self) -> bool {
        self.backend == Backend::Fused
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let buffers = self.momentum_buffers.iter().enumerate();
        buffers
            .filter_map(|(i, b)| b.as_ref().map(|b| (format!("{i}.momentum_buffer"), b.shallow_clone())))
            .collect()
    }

    fn load_state_tensors(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let params = flat_params(&self.groups);
        let mut buffers: Vec<Option<Tensor>> = (0..params.len()).map(|_| None).collect();
        for (name, t) in named {
            match parse_state_name(name, params.len())? {
                (i, "momentum_buffer") => buffers[i] = Some(state_like(params[i], t, name)?),
                _ => return Err(Error::Invalid(format!("unknown SGD state {name:?}"))),
            }
        }
        self.momentum_buffers = buffers;
        Ok(())
    }
}
