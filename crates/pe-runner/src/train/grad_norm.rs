//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`).

use tch::{Kind, Tensor};

/// The global L2 norm of `grads` as a 0-dim float tensor on their device; when `max_norm > 0`,
/// scales them in place by `min(1, max_norm / (norm + 1e-6))`, as PyTorch does. Nothing is read
/// back to the host: per-tensor norms and the scaling are multi-tensor kernels, so clipping costs
/// a handful of launches and no device sync (read the norm only when it is logged).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> pe_torch::Result<Tensor> {
    if grads.is_empty() {
        return Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
    }
    let refs: Vec<&Tensor> = grads.iter().collect();
    let norms = pe_torch::foreach::norm(&refs)?;
    let total = Tensor::stack(&norms, 0).norm();
    if max_norm > 0.0 {
        let factor = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        pe_torch::foreach::mul_(&refs, &factor)?;
    }
    Ok(total)
}
