//! AdamW (`torch.optim.AdamW`, decoupled weight decay, bias-corrected moments).
use tch::{Kind, Tensor};

use super::{
    amp_host_values, bucket_by_device_and_kind, flat_params, missing_state, on_device, parse_state_name,
    reference, state_like, step_like, with_grads, Backend, Optimizer, ParamGroup,
};
use crate::{ffi, Error, Result};

/// AdamW's group-independent hyper-parameters (`betas`, `eps`); PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Per-parameter state, PyTorch's `state[p]` (`step` is a `float32` scalar on the parameter's device,
/// as with `fused=True`).
struct AdamState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
}

impl AdamState {
    fn zeros_like(p: &Tensor) -> Result<Self> {
        Ok(Self {
            exp_avg: p.f_zeros_like()?,
            exp_avg_sq: p.f_zeros_like()?,
            step: Tensor::f_zeros([], (Kind::Float, p.device()))?,
        })
    }
}

/// `torch.optim.AdamW(groups, betas, eps, fused=True)` (or the per-tensor reference).
pub struct AdamW {
    groups: Vec<ParamGroup>,
    pub config: AdamWConfig,
    backend: Backend,
    state: Vec<Option<AdamState>>,
}

impl AdamW {
    /// AdamW on the fused kernels.
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        Self::with_backend(groups, config, Backend::Fused)
    }

    pub fn with_backend(groups: Vec<ParamGroup>, config: AdamWConfig, backend: Backend) -> Result<Self> {
        let AdamWConfig { beta1, beta2, eps } = config;
        if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) || eps < 0.0 {
            return Err(Error::Invalid(format!("invalid AdamW config {config:?}")));
        }
        if let Some(g) = groups.iter().find(|g| g.lr < 0.0 || g.weight_decay < 0.0) {
            return Err(Error::Invalid(format!("invalid lr {} / weight decay {}", g.lr, g.weight_decay)));
        }
        let n = groups.iter().map(|g| g.params.len()).sum();
        Ok(Self { groups, config, backend, state: (0..n).map(|_| None).collect() })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Optimizer for AdamW {
    fn step_amp(&mut self, grad_scale: Option<&Tensor>, found_inf: Option<&Tensor>) -> Result<()> {
        let AdamWConfig { beta1, beta2, eps } = self.config;
        let host_amp = match self.backend {
            Backend::PerTensor => Some(amp_host_values(grad_scale, found_inf)?),
            Backend::Fused => None,
        };
        if matches!(host_amp, Some((true, _))) {
            return Ok(());
        }
        let Self { groups, state, .. } = self;
        let mut first = 0;
        for group in groups.iter() {
            let items = with_grads(group, first);
            first += group.params.len();
            for (i, p, _) in &items {
                if state[*i].is_none() {
                    state[*i] = Some(AdamState::zeros_like(p)?);
                }
            }
            let wd = group.weight_decay;
            if let Some((_, scale)) = host_amp {
                let lr = group.host_lr()?;
                for (i, p, g) in &items {
                    let g = if scale != 1.0 { g / scale } else { g.shallow_clone() };
                    let st = state[*i].as_ref().ok_or_else(missing_state)?;
                    let moments = [&st.step, &st.exp_avg, &st.exp_avg_sq];
                    reference::adamw_step(p, &g, moments, lr, wd, beta1, beta2, eps)?;
                }
                continue;
            }
            for ((device, _), bucket) in bucket_by_device_and_kind(items, |(_, p, _)| (p.device(), p.kind()))
            {
                let mut lists = ffi::AdamWLists {
                    params: Vec::with_capacity(bucket.len()),
                    grads: Vec::with_capacity(bucket.len()),
                    exp_avgs: Vec::with_capacity(bucket.len()),
                    exp_avg_sqs: Vec::with_capacity(bucket.len()),
                    steps: Vec::with_capacity(bucket.len()),
                };
                for (i, p, g) in &bucket {
                    let st = state[*i].as_ref().ok_or_else(missing_state)?;
                    lists.params.push(p);
                    lists.grads.push(g);
                    lists.exp_avgs.push(&st.exp_avg);
                    lists.exp_avg_sqs.push(&st.exp_avg_sq);
                    lists.steps.push(&st.step);
                }
                let gs = on_device(grad_scale, device)?;
                let fi = on_device(found_inf, device)?;
                ffi::fused_adamw(&lists, group.kernel_lr(), beta1, beta2, wd, eps, gs.as_ref(), fi.as_ref())?;
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
        let mut out = Vec::new();
        for (i, st) in self.state.iter().enumerate() {
            if let Some(st) = st {
                out.push((format!("{i}.exp_avg"), st.exp_avg.shallow_clone()));
                out.push((format!("{i}.exp_avg_sq"), st.exp_avg_sq.shallow_clone()));
                out.push((format!("{i}.step"), st.step.shallow_clone()));
            }
        }
        out
    }

    fn load_state_tensors(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let params = flat_params(&self.groups);
        let mut parts: Vec<[Option<Tensor>; 3]> = (0..params.len()).map(|_| [None, None, None]).collect();
        for (name, t) in named {
            let (i, field) = parse_state_name(name, params.len())?;
            let slot = match field {
                "exp_avg" => 0,
                "exp_avg_sq" => 1,
                "step" => 2,
                _ => return Err(Error::Invalid(format!("unknown AdamW state {name:?}"))),
            };
            parts[i][slot] = Some(if slot == 2 {
                step_like(params[i].device(), t, name)?
            } else {
                state_like(params[i], t, name)?
            });
        }
        let mut state = Vec::with_capacity(params.len());
        for (i, [m, v, s]) in parts.into_iter().enumerate() {
            state.push(match (m, v, s) {
                (Some(exp_avg), Some(exp_avg_sq), Some(step)) => {
                    Some(AdamState { exp_avg, exp_avg_sq, step })
                }
                (None, None, None) => None,
                _ => return Err(Error::Invalid(format!("incomplete AdamW state for parameter {i}"))),
            });
        }
        self.state = state;
        Ok(())
    }
}
