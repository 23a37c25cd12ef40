//! The per-tensor update rules, transcribed from `torch.optim`'s `_single_tensor_adamw` and
//! `_single_tensor_sgd`: the reference the fused kernels are tested against, and the
//! [`Backend::PerTensor`](super::Backend::PerTensor) implementation.
use tch::Tensor;

use crate::Result;

/// One AdamW update of `param` and its state tensors (`step`, first and second moments) in place:
/// ```text
/// step += 1
/// param *= 1 - lr·wd
/// m = β₁m + (1-β₁)g ;  v = β₂v + (1-β₂)g²
/// param -= lr / (1-β₁^step) · m / (√v / √(1-β₂^step) + eps)
/// ```
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_step(
    param: &Tensor,
    grad: &Tensor,
    [step, exp_avg, exp_avg_sq]: [&Tensor; 3],
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
) -> Result<()> {
    tch::no_grad(|| {
        // Shallow clones share storage: the in-place ops below update the caller's tensors.
        let [mut p, mut step, mut exp_avg, mut exp_avg_sq] =
            [param, step, exp_avg, exp_avg_sq].map(Tensor::shallow_clone);
        let _ = step.f_add_scalar_(1.0)?;
        let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
        let _ = exp_avg.f_lerp_(grad, 1.0 - beta1)?;
        let _ = exp_avg_sq.f_mul_scalar_(beta2)?.f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, grad)?;
        let step = step.f_double_value(&[])?;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        let mut denom = exp_avg_sq.f_sqrt()?;
        let _ = denom.f_div_scalar_(bias_correction2.sqrt())?.f_add_scalar_(eps)?;
        let _ = p.f_addcdiv_(&exp_avg.f_mul_scalar(-step_size)?, &denom)?;
        Ok(())
    })
}

/// One SGD update of `param` in place (dampening 0):
/// ```text
/// g += wd·param
/// buf = g (first step) or momentum·buf + g
/// g = g + momentum·buf (Nesterov) or buf
/// param -= lr·g
/// ```
pub(crate) fn sgd_step(
    param: &Tensor,
    grad: &Tensor,
    momentum_buffer: &mut Option<Tensor>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
) -> Result<()> {
    tch::no_grad(|| {
        let mut p = param.shallow_clone();
        let mut g = if weight_decay != 0.0 {
            grad.f_add(&param.f_mul_scalar(weight_decay)?)?
        } else {
            grad.shallow_clone()
        };
        if momentum != 0.0 {
            let buf = match momentum_buffer {
                Some(buf) => {
                    let _ = buf.f_mul_scalar_(momentum)?.f_add_(&g)?;
                    buf
                }
                None => momentum_buffer.insert(g.detach().copy()),
            };
            g = if nesterov { g.f_add(&buf.f_mul_scalar(momentum)?)? } else { buf.shallow_clone() };
        }
        let _ = p.f_sub_(&g.f_mul_scalar(lr)?)?;
        Ok(())
    })
}
