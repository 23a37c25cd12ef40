//! The run's optimizer: pe-torch's fused AdamW/SGD over the parameter groups of
//! [`param_groups`] (decay / no decay, learning-rate scales).

use anyhow::Result;
use tch::{nn, Device, Kind, Tensor};

use pe_torch::optim::{AdamW, AdamWConfig, ParamGroup, Sgd, SgdConfig};

use pe_models::ModelConfig;

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::train::param_groups;

/// One parameter group as `param_groups.json` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSummary {
    pub lr_scale: f64,
    pub weight_decay: f64,
    pub params: Vec<String>,
}

pub struct Optimizer {
    inner: Box<dyn pe_torch::optim::Optimizer>,
    /// Each group's factor on the scheduled learning rate (layer decay, `lr_mult`).
    lr_scales: Vec<f64>,
    /// What each group holds, for the run folder's `param_groups.json`.
    summaries: Vec<GroupSummary>,
    /// Each group's learning rate as a 0-dim float32 device tensor its kernels read, once
    /// [`Optimizer::use_device_lr`] is called (CUDA graphs: a host value would be baked in).
    lr_tensors: Vec<Tensor>,
}

impl Optimizer {
    /// Groups `vs`'s trainable parameters (see [`param_groups`]) and builds the configured
    /// optimizer. The learning rate is set per step by [`Optimizer::step`].
    pub fn new(vs: &nn::VarStore, config: &OptimizerConfig, model: &ModelConfig) -> Result<Self> {
        let groups = param_groups::groups(vs, config, model)?;
        let lr_scales = groups.iter().map(|g| g.lr_scale).collect();
        let summaries = groups
            .iter()
            .map(|g| GroupSummary {
                lr_scale: g.lr_scale,
                weight_decay: g.weight_decay,
                params: g.names.clone(),
            })
            .collect();
        let groups = groups.into_iter().map(|g| ParamGroup::new(g.params, 0.0, g.weight_decay)).collect();
        let inner: Box<dyn pe_torch::optim::Optimizer> = match config.name {
            OptimizerKind::Adamw => {
                let adamw = AdamWConfig { beta1: config.betas[0], beta2: config.betas[1], eps: config.eps };
                Box::new(AdamW::new(groups, adamw)?)
            }
            OptimizerKind::Sgd => Box::new(Sgd::new(
                groups,
                SgdConfig { momentum: config.momentum, nesterov: config.nesterov },
            )?),
        };
        Ok(Self { inner, lr_scales, summaries, lr_tensors: Vec::new() })
    }

    /// The parameter groups: names, learning-rate scale, weight decay.
    pub fn groups(&self) -> &[GroupSummary] {
        &self.summaries
    }

    /// Every defined gradient, for unscaling and clipping.
    pub fn grads(&self) -> Vec<Tensor> {
        self.inner.grads()
    }

    /// From now on the kernels read each group's learning rate from a device tensor on `device`,
    /// filled by [`Optimizer::set_lr`] (outside a captured graph, which then replays with the new value).
    pub fn use_device_lr(&mut self, device: Device) -> Result<()> {
        self.lr_tensors.clear();
        for group in self.inner.groups_mut() {
            let lr = Tensor::f_zeros([], (Kind::Float, device))?;
            group.lr_tensor = Some(lr.shallow_clone());
            self.lr_tensors.push(lr);
        }
        Ok(())
    }

    /// Sets every group's learning rate, `lr` times the group's scale (and the device tensors'
    /// values, when in use: one fill kernel each queued on the current stream, no host sync).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        for (group, scale) in self.lr_scales.iter().enumerate() {
            self.inner.set_lr(group, lr * scale);
        }
        for (t, scale) in self.lr_tensors.iter().zip(&self.lr_scales) {
            let _ = t.shallow_clone().f_fill_(lr * scale)?;
        }
        Ok(())
    }

    /// One update at learning rate `lr` for every group.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.set_lr(lr)?;
        Ok(self.inner.step()?)
    }

    /// One update at the learning rate last set, from already unscaled gradients, skipped on the
    /// device when `found_inf` is non-zero (fp16 overflow): nothing here reads the device.
    pub fn step_unless_found_inf(&mut self, found_inf: Option<&Tensor>) -> Result<()> {
        Ok(self.inner.step_amp(None, found_inf)?)
    }

    pub fn zero_grad(&self) -> Result<()> {
        Ok(self.inner.zero_grad()?)
    }

    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.inner.state_tensors()
    }

    pub fn load_state_tensors(&mut self, named: Vec<(String, Tensor)>) -> Result<()> {
        Ok(self.inner.load_state_tensors(&named)?)
    }
}
