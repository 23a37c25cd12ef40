//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`).

use tch::{Kind, Tensor};

/// The global L2 norm of `grads`; when `max_norm > 0`, scales them in place to at most `max_norm`
/// (by `max_norm / (norm + 1e-6)`, as PyTorch, and only when the norm exceeds it).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if max_norm > 0.0 && total > max_norm {
        let coef = max_norm / (total + 1e-6);
        tch::no_grad(|| {
            for g in grads {
                let mut g = g.shallow_clone();
                g *= coef;
            }
        });
    }
    total
}
