//! Dynamic loss scaling for fp16 (or bf16) training with `torch.amp.GradScaler`'s semantics.
//!
//! One training step:
//! ```no_run
//! # use pe_torch::{optim::Optimizer, GradScaler};
//! # fn f(scaler: &mut GradScaler, opt: &mut dyn Optimizer, loss: &tch::Tensor) -> pe_torch::Result<()> {
//! scaler.scale_loss(loss).backward();
//! let grads = opt.grads();
//! let found_inf = scaler.unscale_(&grads)?; // grads are now true gradients: clip here
//! if !found_inf {
//!     opt.step()?;
//! }
//! scaler.update()?; // halve the scale after an overflow, double it after `growth_interval` clean steps
//! # Ok(()) }
//! ```
//! or, without clipping, `scaler.step(opt)?; scaler.update()?;`, which hands the scale and the
//! overflow flag to the fused optimizer kernels (no separate unscale pass, no host sync).
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::optim::Optimizer;
use crate::{ffi, Error, Result};

/// Where the scaler is within one optimizer step (PyTorch's `OptState`).
enum StepState {
    /// No gradients checked since the last `update`.
    Ready,
    /// `unscale_` ran: gradients are unscaled; `found` is the host copy of `found_inf`.
    Unscaled { found_inf: Tensor, found: bool },
    /// `unscale_on_device_` ran: gradients are unscaled; the flag was not read back to the host.
    UnscaledOnDevice { found_inf: Tensor },
    /// `step` ran through the fused kernels without unscaling first.
    Stepped { found_inf: Tensor },
}

/// PyTorch's `GradScaler(init_scale=2**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)`.
///
/// The scale and growth tracker live on the gradients' device as libtorch tensors (`float32` and
/// `int32` scalars), updated by `_amp_update_scale_` exactly as PyTorch does; the configuration fields
/// are public. A disabled scaler is a no-op whose scale is 1.
pub struct GradScaler {
    pub enabled: bool,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
    scale: Tensor,
    growth_tracker: Tensor,
    state: StepState,
}

/// A scaler's checkpointable state, with `torch.amp.GradScaler.state_dict()`'s keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScalerState {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
    #[serde(rename = "_growth_tracker")]
    pub growth_tracker: i64,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

impl GradScaler {
    /// PyTorch's defaults: scale 2^16, growth ×2 every 2000 clean steps, backoff ×0.5.
    pub fn new(enabled: bool) -> Self {
        Self::with_config(enabled, 65536.0, 2.0, 0.5, 2000)
    }

    /// A scaler with explicit `GradScaler(init_scale, growth_factor, backoff_factor, growth_interval)`.
    pub fn with_config(
        enabled: bool,
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: i64,
    ) -> Self {
        Self {
            enabled,
            growth_factor,
            backoff_factor,
            growth_interval,
            scale: Tensor::full([], init_scale, (Kind::Float, Device::Cpu)),
            growth_tracker: Tensor::full([], 0, (Kind::Int, Device::Cpu)),
            state: StepState::Ready,
        }
    }

    /// The current scale (1.0 when disabled), `get_scale()`. Reads the device value (a sync on CUDA).
    pub fn scale_value(&self) -> f64 {
        if self.enabled {
            self.scale.double_value(&[])
        } else {
            1.0
        }
    }

    /// Consecutive clean steps since the last growth or backoff.
    pub fn growth_tracker_value(&self) -> i64 {
        self.growth_tracker.int64_value(&[])
    }

    /// The scale as a `float32` scalar tensor (on the device of the last unscaled gradients).
    pub fn scale_tensor(&self) -> &Tensor {
        &self.scale
    }

    /// `loss * scale` (the loss itself when disabled); call `.backward()` on the result.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if !self.enabled {
            return loss.shallow_clone();
        }
        loss * self.scale.to_device(loss.device())
    }

    fn move_to(&mut self, device: Device) -> Result<()> {
        if self.scale.device() != device {
            self.scale = self.scale.f_to_device(device)?;
            self.growth_tracker = self.growth_tracker.f_to_device(device)?;
        }
        Ok(())
    }

    /// Checks `grads` for inf/NaN and multiplies them by `inv_scale` in place, per device and dtype
    /// group as `GradScaler._unscale_grads_` does; returns the combined found-inf flag on the scale's
    /// device. Undefined gradients are skipped; fp16 gradients are refused (fp32 master weights).
    fn check_and_unscale(&mut self, grads: &[Tensor], unscale: bool) -> Result<Tensor> {
        let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
        if let Some(first) = defined.first() {
            self.move_to(first.device())?;
        }
        if defined.iter().any(|g| g.kind() == Kind::Half) {
            return Err(Error::Invalid("Attempting to unscale FP16 gradients.".into()));
        }
        let scale_device = self.scale.device();
        let inv_scale = if unscale {
            self.scale.f_to_kind(Kind::Double)?.f_reciprocal()?.f_to_kind(Kind::Float)?
        } else {
            Tensor::f_ones([], (Kind::Float, scale_device))?
        };
        let mut found_inf = Tensor::f_zeros([], (Kind::Float, scale_device))?;
        for (device, group) in group_by_device_and_kind(&defined) {
            let fi = Tensor::f_zeros([], (Kind::Float, device))?;
            let inv = inv_scale.f_to_device(device)?;
            ffi::amp_non_finite_check_and_unscale(&group, &fi, &inv)?;
            found_inf = found_inf.f_add(&fi.f_to_device(scale_device)?)?;
        }
        Ok(found_inf)
    }

    /// Divides the gradients by the scale in place and reports whether any is inf/NaN, in which case
    /// the optimizer step must be skipped. Idempotent within a step: a second call before `update`
    /// returns the first call's answer without touching the gradients. Always `false` when disabled.
    pub fn unscale_(&mut self, grads: &[Tensor]) -> Result<bool> {
        if !self.enabled {
            return Ok(false);
        }
        match &self.state {
            StepState::Unscaled { found, .. } => return Ok(*found),
            StepState::UnscaledOnDevice { found_inf } => return Ok(found_inf.f_double_value(&[])? > 0.0),
            StepState::Stepped { .. } => {
                return Err(Error::Invalid("unscale_() is being called after step()".into()))
            }
            StepState::Ready => {}
        }
        let found_inf = self.check_and_unscale(grads, true)?;
        let found = found_inf.f_double_value(&[])? > 0.0;
        self.state = StepState::Unscaled { found_inf, found };
        Ok(found)
    }

    /// [`GradScaler::unscale_`] without the host read: divides the gradients by the scale in place
    /// and returns the found-inf flag as a `float32` scalar on the scale's device (non-zero = skip
    /// the update), for code that must not sync (a captured CUDA graph). Hand the flag to
    /// [`Optimizer::step_amp`] (`grad_scale: None`), whose fused kernels skip on the device.
    /// `None` when disabled. The scale must already be on the gradients' device (it moves there at
    /// the first unscale; a move is a host copy a capture refuses).
    pub fn unscale_on_device_(&mut self, grads: &[Tensor]) -> Result<Option<Tensor>> {
        if !self.enabled {
            return Ok(None);
        }
        match &self.state {
            StepState::Unscaled { found_inf, .. } | StepState::UnscaledOnDevice { found_inf } => {
                return Ok(Some(found_inf.shallow_clone()))
            }
            StepState::Stepped { .. } => {
                return Err(Error::Invalid("unscale_on_device_() is being called after step()".into()))
            }
            StepState::Ready => {}
        }
        let found_inf = self.check_and_unscale(grads, true)?;
        self.state = StepState::UnscaledOnDevice { found_inf: found_inf.shallow_clone() };
        Ok(Some(found_inf))
    }

    /// Whether the last check of this step found inf/NaN (`None` before `unscale_`/`step`, or when
    /// disabled). After a fused `step` this reads the device flag (a sync on CUDA).
    pub fn found_inf(&self) -> Option<bool> {
        if !self.enabled {
            return None;
        }
        match &self.state {
            StepState::Ready => None,
            StepState::Unscaled { found, .. } => Some(*found),
            StepState::UnscaledOnDevice { found_inf } | StepState::Stepped { found_inf } => {
                Some(found_inf.double_value(&[]) > 0.0)
            }
        }
    }

    /// `scaler.step(optimizer)`: steps unless a gradient overflowed. After `unscale_` it uses that
    /// result; otherwise an optimizer with fused AMP support gets the scale and the found-inf flag
    /// and unscales/skips inside its kernels, others are unscaled first.
    pub fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        if !self.enabled {
            return opt.step();
        }
        match &self.state {
            StepState::Unscaled { found, .. } => {
                if !*found {
                    opt.step()?;
                }
                return Ok(());
            }
            StepState::UnscaledOnDevice { found_inf } => {
                if opt.supports_amp_scaling() {
                    return opt.step_amp(None, Some(found_inf));
                }
                if found_inf.f_double_value(&[])? == 0.0 {
                    opt.step()?;
                }
                return Ok(());
            }
            StepState::Stepped { .. } => {
                return Err(Error::Invalid("step() has already been called since the last update()".into()))
            }
            StepState::Ready => {}
        }
        if opt.supports_amp_scaling() {
            let found_inf = self.check_and_unscale(&opt.grads(), false)?;
            opt.step_amp(Some(&self.scale), Some(&found_inf))?;
            self.state = StepState::Stepped { found_inf };
            Ok(())
        } else {
            if !self.unscale_(&opt.grads())? {
                opt.step()?;
            }
            Ok(())
        }
    }

    /// Ends the step: backs the scale off after an overflow, grows it after `growth_interval`
    /// consecutive clean steps (`_amp_update_scale_`). Requires `unscale_` or `step` this step.
    pub fn update(&mut self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let found_inf = match std::mem::replace(&mut self.state, StepState::Ready) {
            StepState::Ready => {
                return Err(Error::Invalid("No inf checks were recorded prior to update.".into()))
            }
            StepState::Unscaled { found_inf, .. }
            | StepState::UnscaledOnDevice { found_inf }
            | StepState::Stepped { found_inf } => found_inf,
        };
        let _ = self.scale.f_internal_amp_update_scale_(
            &self.growth_tracker,
            &found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        )?;
        Ok(())
    }

    /// The checkpointable state (`state_dict()`).
    pub fn state(&self) -> GradScalerState {
        GradScalerState {
            scale: self.scale.double_value(&[]),
            growth_factor: self.growth_factor,
            backoff_factor: self.backoff_factor,
            growth_interval: self.growth_interval,
            growth_tracker: self.growth_tracker_value(),
            enabled: self.enabled,
        }
    }

    /// Restores `state()` (`load_state_dict()`); the tensors stay on their current device.
    pub fn load_state(&mut self, state: &GradScalerState) -> Result<()> {
        let device = self.scale.device();
        self.enabled = state.enabled;
        self.growth_factor = state.growth_factor;
        self.backoff_factor = state.backoff_factor;
        self.growth_interval = state.growth_interval;
        self.scale = Tensor::f_full([], state.scale, (Kind::Float, device))?;
        let tracker = i32::try_from(state.growth_tracker)
            .map_err(|_| Error::Invalid(format!("growth tracker {} out of range", state.growth_tracker)))?;
        self.growth_tracker = Tensor::f_full([], i64::from(tracker), (Kind::Int, device))?;
        self.state = StepState::Ready;
        Ok(())
    }
}

/// Groups tensors by (device, dtype), keeping first-seen order, as the multi-tensor kernels need.
pub(crate) fn group_by_device_and_kind<'a>(tensors: &[&'a Tensor]) -> Vec<(Device, Vec<&'a Tensor>)> {
    let mut groups: Vec<((Device, Kind), Vec<&'a Tensor>)> = Vec::new();
    for t in tensors {
        let key = (t.device(), t.kind());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(t),
            None => groups.push((key, vec![t])),
        }
    }
    groups.into_iter().map(|((d, _), g)| (d, g)).collect()
}
