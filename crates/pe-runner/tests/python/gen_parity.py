"""Expected values for pe-runner's parity tests (tests/parity.rs), computed by timm and PyTorch.

Covers what the training step runs: timm's `Mixup` (pixels and soft targets of Mixup and CutMix for
given draws), timm's `SoftTargetCrossEntropy`, `torch.nn.CrossEntropyLoss(label_smoothing=...)`,
`torch.nn.utils.clip_grad_norm_`, timm's `ModelEmaV3`, and DeiT's `DistillationLoss` (written out
below from DeiT's losses.py, which is not a package: soft KL at temperature τ against the teacher's
log-softmax, scaled by τ² over the logits' element count; hard CE on the teacher's argmax).

Writes crates/pe-runner/tests/data/parity.json (run with the project venv's python):
    .venv/bin/python crates/pe-runner/tests/python/gen_parity.py
test_parity.py checks that the committed file still equals what timm/PyTorch compute.
"""

import json
import pathlib

import numpy as np
import torch
from timm.data.mixup import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils.model_ema import ModelEmaV3

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "parity.json"

NUM_CLASSES = 5
SMOOTHING = 0.1
# (kind, drawn λ, box center (cy, cx)) for an 8 x 10 image; the last two boxes are clipped by a border.
MIX_DRAWS = [
    ("mixup", 0.3, None),
    ("cutmix", 0.6, (3, 4)),
    ("cutmix", 0.35, (7, 0)),
    ("cutmix", 0.9, (0, 9)),
]
# Flat lengths of the EMA state; the Rust test tiles a real model's variables over them.
EMA_LEN = 257
EMA_DECAY = 0.9
EMA_STEPS = 3


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def timm_mix(images, labels, kind, lam, center):
    """timm's Mixup on `images` with its random draws replaced by (kind, λ, center)."""
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                  label_smoothing=SMOOTHING, num_classes=NUM_CLASSES)
    mixup._params_per_batch = lambda: (lam, kind == "cutmix")
    centers = iter(center or ())
    randint = np.random.randint
    np.random.randint = lambda low, high, size=None: next(centers)
    try:
        x, target = mixup(images.clone(), labels.clone())
    finally:
        np.random.randint = randint
    return x, target


def mix_cases(g):
    images = torch.randn(4, 3, 8, 10, generator=g)
    labels = torch.tensor([0, 3, 3, 1])
    cases = []
    for kind, lam, center in MIX_DRAWS:
        x, target = timm_mix(images, labels, kind, lam, center)
        cases.append({"kind": kind, "lambda": lam, "center": list(center or ()),
                      "images": flat(x), "targets": flat(target)})
    return {"shape": list(images.shape), "images": flat(images), "labels": labels.tolist(),
            "num_classes": NUM_CLASSES, "smoothing": SMOOTHING, "cases": cases}


def loss_cases(g):
    logits = torch.randn(6, NUM_CLASSES, generator=g) * 2.0
    soft = torch.softmax(torch.randn(6, NUM_CLASSES, generator=g), dim=-1)
    labels = torch.tensor([4, 0, 2, 2, 1, 3])
    hard = {str(eps): float(torch.nn.CrossEntropyLoss(label_smoothing=eps)(logits, labels)) for eps in (0.0, 0.1)}
    return {"logits": flat(logits), "soft_targets": flat(soft), "labels": labels.tolist(),
            "soft": float(SoftTargetCrossEntropy()(logits, soft)), "hard": hard}


def clip_cases(g):
    shapes = [[4, 3], [2, 2, 3, 3], [4]]
    grads = [torch.randn(s, generator=g) for s in shapes]
    cases = []
    for max_norm in (1.0, 100.0):
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        cases.append({"max_norm": max_norm, "norm": float(norm), "clipped": [flat(p.grad) for p in params]})
    return {"shapes": shapes, "grads": [flat(x) for x in grads], "cases": cases}


class Flat(torch.nn.Module):
    """A stand-in model: one parameter and one float buffer (BN statistics; tch models keep no
    integer counter)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(EMA_LEN))
        self.register_buffer("running", torch.zeros(EMA_LEN))

    def load(self, state):
        with torch.no_grad():
            self.weight.copy_(state["params"])
            self.running.copy_(state["buffers"])


def ema_cases(g):
    states = [{"params": torch.randn(EMA_LEN, generator=g), "buffers": torch.rand(EMA_LEN, generator=g) + 0.5}
              for _ in range(EMA_STEPS + 1)]
    model = Flat()
    model.load(states[0])
    ema = ModelEmaV3(model, decay=EMA_DECAY)
    for state in states[1:]:
        model.load(state)
        ema.update(model)
    out = ema.module
    return {"decay": EMA_DECAY,
            "states": [{"params": flat(s["params"]), "buffers": flat(s["buffers"])}
                       for s in states],
            "expected": {"params": flat(out.weight), "buffers": flat(out.running)}}


class DeitDistillationLoss(torch.nn.Module):
    """DeiT's `DistillationLoss` with the teacher's logits given instead of its model."""

    def __init__(self, base_criterion, distillation_type, alpha, tau):
        super().__init__()
        self.base_criterion, self.distillation_type, self.alpha, self.tau = base_criterion, distillation_type, alpha, tau

    def forward(self, outputs, labels, teacher_outputs):
        outputs, outputs_kd = outputs
        base_loss = self.base_criterion(outputs, labels)
        if self.distillation_type == "soft":
            T = self.tau
            distillation_loss = torch.nn.functional.kl_div(
                torch.nn.functional.log_softmax(outputs_kd / T, dim=1),
                torch.nn.functional.log_softmax(teacher_outputs / T, dim=1),
                reduction="sum",
                log_target=True,
            ) * (T * T) / outputs_kd.numel()
        else:
            distillation_loss = torch.nn.functional.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha


# (kind, alpha, tau, base): the base criterion is timm's soft-target CE (Mixup) or label-smoothed CE.
DISTILL_CASES = [("soft", 0.5, 1.0, "soft"), ("soft", 0.3, 3.0, "hard"), ("hard", 0.5, 1.0, "soft"),
                 ("hard", 0.9, 1.0, "hard")]


def distill_cases(g):
    logits = torch.randn(6, NUM_CLASSES, generator=g) * 2.0
    dist_logits = torch.randn(6, NUM_CLASSES, generator=g) * 2.0
    teacher = torch.randn(6, NUM_CLASSES, generator=g) * 3.0
    soft = torch.softmax(torch.randn(6, NUM_CLASSES, generator=g), dim=-1)
    labels = torch.tensor([1, 0, 4, 2, 1, 3])
    cases = []
    for kind, alpha, tau, base in DISTILL_CASES:
        criterion = SoftTargetCrossEntropy() if base == "soft" else torch.nn.CrossEntropyLoss(label_smoothing=SMOOTHING)
        targets = soft if base == "soft" else labels
        loss = DeitDistillationLoss(criterion, kind, alpha, tau)((logits, dist_logits), targets, teacher)
        cases.append({"kind": kind, "alpha": alpha, "tau": tau, "base": base, "loss": float(loss)})
    return {"logits": flat(logits), "dist_logits": flat(dist_logits), "teacher": flat(teacher),
            "soft_targets": flat(soft), "labels": labels.tolist(), "smoothing": SMOOTHING, "cases": cases}


def compute():
    g = torch.Generator().manual_seed(2401)
    return {"mix": mix_cases(g), "loss": loss_cases(g), "clip": clip_cases(g), "ema": ema_cases(g),
            "distill": distill_cases(g)}


if __name__ == "__main__":
    OUT.write_text(json.dumps(compute()) + "\n")
    print(f"wrote {OUT}")
