//! The run's optimizer: pe-torch's fused AdamW/SGD over the decay and no-decay groups.

use anyhow::Result;
use tch::{nn, Device, Kind, Tensor};

use pe_torch::optim::{AdamW, AdamWConfig, ParamGroup, Sgd, SgdConfig};

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::train::param_groups;

pub struct Optimizer {
    inner: Box<dyn pe_torch::optim::Optimizer>,
    /// The learning rate as a 0-dim float32 device tensor every group's kernels read, once
    /// [`Optimizer::use_device_lr`] is called (CUDA graphs: a host value would be baked in).
    lr_tensor: Option<Tensor>,
}

impl Optimizer {
    /// Groups `vs`'s trainable parameters (weight decay / none) and builds the configured optimizer.
    /// The learning rate is set per step by [`Optimizer::step`].
    pub fn new(vs: &nn::VarStore, config: &OptimizerConfig) -> Result<Self> {
        let groups = param_groups::split(vs, config);
        let params = |named: Vec<(String, Tensor)>| named.into_iter().map(|(_, t)| t).collect::<Vec<_>>();
        let groups = vec![
            ParamGroup::new(params(groups.decay), 0.0, config.weight_decay),
            ParamGroup::new(params(groups.no_decay), 0.0, 0.0),
        ];
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
        Ok(Self { inner, lr_tensor: None })
    }

    /// Every defined gradient, for unscaling and clipping.
    pub fn grads(&self) -> Vec<Tensor> {
        self.inner.grads()
    }

    /// From now on the kernels read the learning rate from one device tensor on `device`, filled
    /// by [`Optimizer::set_lr`] (outside a captured graph, which then replays with the new value).
    pub fn use_device_lr(&mut self, device: Device) -> Result<()> {
        let lr = Tensor::f_zeros([], (Kind::Float, device))?;
        for group in self.inner.groups_mut() {
            group.lr_tensor = Some(lr.shallow_clone());
        }
        self.lr_tensor = Some(lr);
        Ok(())
    }

    /// Sets every group's learning rate (and the device tensor's value, when in use: one fill kernel
    /// queued on the current stream, no host sync).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        for group in 0..self.inner.groups().len() {
            self.inner.set_lr(group, lr);
        }
        if let Some(t) = &self.lr_tensor {
            let _ = t.shallow_clone().f_fill_(lr)?;
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
