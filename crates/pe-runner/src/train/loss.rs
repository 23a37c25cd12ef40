//! Classification losses: hard labels with label smoothing, and soft (Mixup/CutMix) targets.

use tch::{Kind, Tensor};

/// Cross-entropy of `logits` [B, K] against soft `targets` [B, K] (rows sum to 1), averaged over
/// the batch: timm's `SoftTargetCrossEntropy`. Computed in fp32 whatever the logits' dtype.
pub fn soft_target_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let log_probs = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    (-(targets * log_probs)).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float)
}

/// Cross-entropy with label smoothing `eps` (PyTorch's `label_smoothing`): the target puts
/// `1 - eps + eps/K` on the label and `eps/K` elsewhere.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Tensor {
    logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        labels,
        None,
        tch::Reduction::Mean,
        -100,
        smoothing,
    )
}
