"""Expected values for pe-torch's Rust tests, computed with PyTorch (torch.optim, torch.amp).

Writes crates/pe-torch/tests/data/expected.json (run from anywhere with the project venv's python):
    .venv/bin/python crates/pe-torch/tests/python/gen_expected.py
test_expected.py checks that the committed file still equals what PyTorch computes.
"""

import json
import math
import pathlib
import sys

import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "expected.json"

SHAPES = {"w": [4, 3], "conv": [2, 2, 3, 3], "b": [4]}
STEPS = 10
# Parameter "b" gets no gradient at this step (torch.optim skips grad=None).
NO_GRAD_STEP = 3


def lr_at(base, t):
    return base * (1.0 - t / 20.0)


def inputs():
    g = torch.Generator().manual_seed(1234)
    init = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grads = []
    for t in range(STEPS):
        step = {}
        for k, s in SHAPES.items():
            step[k] = None if (k == "b" and t == NO_GRAD_STEP) else torch.randn(s, generator=g) * 0.5
        grads.append(step)
    return init, grads


def run(make_opt, base_lr, init, grads):
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = make_opt(params)
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(base_lr, t)
        for k, p in params.items():
            p.grad = None if grads[t][k] is None else grads[t][k].clone()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def groups(params, wd):
    return [
        {"params": [params["w"], params["conv"]], "weight_decay": wd},
        {"params": [params["b"]], "weight_decay": 0.0},
    ]


def scenarios(fused):
    kw = {"fused": True} if fused else {"foreach": False}
    return {
        "adamw": (
            lambda p: torch.optim.AdamW(groups(p, 0.05), lr=0.01, betas=(0.9, 0.999), eps=1e-8, **kw),
            0.01,
        ),
        "sgd_momentum": (lambda p: torch.optim.SGD(groups(p, 0.01), lr=0.1, momentum=0.9, **kw), 0.1),
        "sgd_nesterov": (
            lambda p: torch.optim.SGD(groups(p, 0.01), lr=0.1, momentum=0.9, nesterov=True, **kw),
            0.1,
        ),
        "sgd_plain": (lambda p: torch.optim.SGD(groups(p, 0.01), lr=0.1, momentum=0.0, **kw), 0.1),
    }


def scaler_sequence():
    """GradScaler(growth_interval=3) over a fixed pattern of overflowing steps."""
    pattern = [False, False, True, False, False, False, False, True, True, False, False, False, False]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    out = []
    for inf in pattern:
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        if inf:
            p.grad[1] = math.inf
        scaler.unscale_(opt)
        found = sum(v.item() for v in scaler._found_inf_per_device(opt).values()) > 0
        scaler.step(opt)
        scaler.update()
        state = scaler.state_dict()
        out.append({"inf": inf, "found_inf": found, "scale": state["scale"], "growth_tracker": state["_growth_tracker"]})
    return out


def flat(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def compute():
    init, grads = inputs()
    data = {
        "steps": STEPS,
        "lr_schedule": "base * (1 - t / 20)",
        "shapes": SHAPES,
        "init": {k: flat(v) for k, v in init.items()},
        "grads": [{k: (None if v is None else flat(v)) for k, v in step.items()} for step in grads],
        "final": {},
        "scaler": scaler_sequence(),
    }
    for name, (make, base_lr) in scenarios(fused=False).items():
        data["final"][name] = {k: flat(v) for k, v in run(make, base_lr, init, grads).items()}
    return data


def main():
    data = compute()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
