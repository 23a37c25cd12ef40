"""Train-step time (forward + backward + AdamW) of the same models in Rust (`pe bench`) and in
PyTorch eager, on the same machine with the same thread count; prints a table with the ratio.

    python bench/train_step.py --pe target/release/pe [--threads N] [--out bench/results/train_step_cpu.md]

The PE models' PyTorch side is tests/python/pe_reference.py, loaded with the Rust model's own
initial weights (exported by `pe forward --save-weights`), so both sides compute the same thing.
"""

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import timm
import torch
import torchvision
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from pe_reference import ResNetPe, VitPe  # noqa: E402

MODELS = ["resnet50", "resnet50_pe", "deit_small", "vit_pe_small"]
SHAPES = [(16, 224), (128, 32)]


def torch_model(pe, name, img_size):
    if name == "resnet50":
        return torchvision.models.resnet50()
    if name == "deit_small":
        return timm.create_model("deit_small_patch16_224", img_size=img_size)
    summary = json.loads(subprocess.run([pe, "summary", "--model", name, "--format", "json"],
                                        check=True, capture_output=True, text=True).stdout)
    config = {**summary["config"]}
    if config["arch"] == "vit":
        config["img_size"] = img_size
        model = VitPe(config)
    else:
        model = ResNetPe(config)
    with tempfile.TemporaryDirectory() as tmp:
        weights = pathlib.Path(tmp) / "w.safetensors"
        cfg = pathlib.Path(tmp) / "c.json"
        cfg.write_text(json.dumps(config))
        subprocess.run([pe, "forward", "--config", cfg, "--save-weights", weights], check=True)
        model.load_state_dict(load_file(str(weights)), strict=True)
    return model


def time_torch(model, batch, img_size, steps, warmup):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    images = torch.randn(batch, 3, img_size, img_size)
    labels = torch.randint(0, 1000, (batch,))
    model.train()

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) * 1e3 / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for batch, img_size in SHAPES:
        for name in args.models:
            rust = json.loads(subprocess.run(
                [args.pe, "bench", "--model", name, "--batch", str(batch), "--img-size", str(img_size),
                 "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True).stdout)
            torch.manual_seed(0)
            model = torch_model(args.pe, name, img_size)
            torch_ms = time_torch(model, batch, img_size, args.steps, args.warmup)
            rows.append((name, batch, img_size, rust["ms_per_step"], torch_ms, rust["peak_rss_mb"]))
            print(f"{name:14} b{batch:<4} {img_size}px  rust {rust['ms_per_step']:9.1f} ms  "
                  f"torch {torch_ms:9.1f} ms  ratio {rust['ms_per_step'] / torch_ms:.3f}", flush=True)
    torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"Train step (forward + backward + AdamW), CPU, {args.threads} threads, {args.steps} timed steps "
        f"after {args.warmup} warm-up; torch {torch.__version__}.",
        "",
        "| model | batch | img | Rust ms/step | PyTorch ms/step | ratio Rust/PyTorch | Rust peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {b} | {s} | {r:.1f} | {t:.1f} | {r / t:.3f} | {rss:.0f} |" for n, b, s, r, t, rss in rows]
    lines += ["", f"PyTorch process peak RSS over all models: {torch_rss:.0f} MB."]
    print("\n".join(lines))
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
