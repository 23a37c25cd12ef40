//! Classification losses: hard labels with label smoothing, soft (Mixup/CutMix) targets, and a
//! teacher's term (DeiT's distillation).

use tch::{Kind, Tensor};

use crate::config::DistillKind;

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

/// DeiT's teacher term (`DistillationLoss`) of `student` logits [B, K] against the `teacher`'s
/// [B, K], in fp32. Soft: `KL(softmax(t/τ) ‖ softmax(s/τ))` summed and scaled by `τ² / (B·K)`;
/// DeiT divides by the logits' element count, not the batch, and so do we, so that its α and τ
/// mean the same here. Hard: cross-entropy on the teacher's top class.
pub fn distillation(student: &Tensor, teacher: &Tensor, kind: DistillKind, tau: f64) -> Tensor {
    let (student, teacher) = (student.to_kind(Kind::Float), teacher.to_kind(Kind::Float));
    match kind {
        DistillKind::Soft => {
            let log_p = (student / tau).log_softmax(-1, Kind::Float);
            let log_q = (teacher / tau).log_softmax(-1, Kind::Float);
            let kl = (log_q.exp() * (&log_q - log_p)).sum(Kind::Float);
            kl * (tau * tau) / log_q.numel() as f64
        }
        DistillKind::Hard => cross_entropy(&student, &teacher.argmax(-1, false), 0.0),
    }
}

/// DeiT's combined loss: `(1 − alpha)·base + alpha·distillation`.
pub fn with_teacher(base: Tensor, distillation: Tensor, alpha: f64) -> Tensor {
    base * (1.0 - alpha) + distillation * alpha
}
