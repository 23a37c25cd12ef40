//! The run's optimizer: pe-torch's fused AdamW/SGD over the decay and no-decay groups.

use anyhow::Result;
use tch::{nn, Tensor};

use pe_torch::optim::{AdamW, AdamWConfig, ParamGroup, Sgd, SgdConfig};

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::param_groups;

pub struct Optimizer {
    inner: Box<dyn pe_torch::optim::Optimizer>,
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
        Ok(Self { inner })
    }

    /// Every defined gradient, for unscaling and clipping.
    pub fn grads(&self) -> Vec<Tensor> {
        self.inner.grads()
    }

    /// One update at learning rate `lr` for every group.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        for group in 0..self.inner.groups().len() {
            self.inner.set_lr(group, lr);
        }
        Ok(self.inner.step()?)
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
