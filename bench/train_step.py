"""Train-step time (forward + backward + fused AdamW) of the same models in Rust (`pe bench`) and in
PyTorch eager, on the same machine with the same threads, autocast and memory format; writes a table
with the ratio.

    python bench/train_step.py --pe target/release/pe [--threads N] [--steps 20] [--amp bf16]
        [--channels-last] [--out bench/results/train_step_cpu.md]

Each side runs in a fresh process of its own for every row, as a training job would: `pe bench
--serve` and this script's `--serve-torch` keep their model warm and run one step per line they read,
and the driver alternates between them (and which one goes first), so a busy moment on the machine
lands on both. A process shared across rows would carry one model's heap into the next (glibc keeps
what a larger model freed), which no real job has. Each side's median step time is reported with its
10th-90th percentile spread, and both sides' page faults and kernel time are read from /proc the same
way.

The PE models' PyTorch side is tests/python/pe_reference.py, loaded with the Rust model's own
initial weights (exported by `pe forward --save-weights`), so both sides compute the same thing.
"""

import argparse
import contextlib
import json
import os
import pathlib
import platform
import resource
import statistics
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


class TorchStep:
    """PyTorch eager with the settings `pe bench` gets: fused AdamW, bf16 autocast, channels_last."""

    def __init__(self, model, batch, img_size, amp, channels_last, device="cpu"):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=memory_format)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        self.images = torch.randn(batch, 3, img_size, img_size, device=self.device)
        self.images = self.images.to(memory_format=memory_format)
        with torch.no_grad():
            classes = model.eval()(self.images[:1]).shape[-1]
        model.train()
        self.labels = torch.randint(0, classes, (batch,), device=self.device)
        self.amp = amp

    def step(self, images, labels):
        """Forward under autocast, backward, fused AdamW, gradients set to None."""
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            logits = self.model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self):
        """One step on the fixed random batch, in milliseconds (waiting for a GPU to finish it)."""
        start = time.perf_counter()
        self.step(self.images, self.labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) * 1e3


class ServedStep:
    """A process that runs one step per line written to it and answers with its time: `pe bench
    --serve` or this script's `--serve-torch`."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}, f"{cmd[0]} did not start"

    def __call__(self):
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["ms"]

    def counters(self):
        """(minor page faults, user s, system s) of the process so far, from /proc/<pid>/stat."""
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[7]), int(fields[11]) / tick, int(fields[12]) / tick

    def finish(self):
        """Ends the serve loop; returns the process's summary (peak RSS)."""
        self.proc.stdin.close()
        summary = json.loads(self.proc.stdout.read())
        if self.proc.wait() != 0:
            raise RuntimeError(f"{self.proc.args[0]} failed")
        return summary


def step_args(args, name, batch, img_size):
    """The options both servers take, in `pe bench`'s spelling."""
    flags = ["--model", name, "--batch", str(batch), "--img-size", str(img_size), "--warmup", str(args.warmup),
             "--threads", str(args.threads), "--amp", args.amp]
    return flags + (["--channels-last"] if args.channels_last else [])


def serve_torch(args):
    """`--serve-torch`: PyTorch's side of one row, served like `pe bench --serve`."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    step = TorchStep(torch_model(args.pe, args.model, args.img_size), args.batch, args.img_size, args.amp,
                     args.channels_last)
    for _ in range(args.warmup):
        step()
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"ms": step()}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def delta(after, before):
    return tuple(a - b for a, b in zip(after, before))


def spread(times):
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[0], q[-1]


def measure(args, name, batch, img_size):
    flags = step_args(args, name, batch, img_size)
    rust = ServedStep([args.pe, "bench", *flags, "--serve", "--format", "json"])
    torch_side = ServedStep([sys.executable, __file__, "--serve-torch", "--pe", args.pe, *flags])
    sides = (rust, torch_side)
    times = ([], [])
    # Page faults and user/system CPU time of each side's timed steps: the profile that shows
    # where a difference comes from (the kernel zeroing freshly mapped pages shows up as system time).
    before = [side.counters() for side in sides]
    for i in range(args.steps):
        # Alternate which side goes first, so neither always runs right after the other.
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            times[k].append(sides[k]())
    counters = [delta(side.counters(), b) for side, b in zip(sides, before)]
    rss = [side.finish()["peak_rss_mb"] for side in sides]
    rust_ms, torch_ms = times
    ratios = sorted(r / t for r, t in zip(rust_ms, torch_ms))
    return {"model": name, "batch": batch, "img": img_size, "rust": spread(rust_ms),
            "torch": spread(torch_ms), "ratio": statistics.median(rust_ms) / statistics.median(torch_ms),
            "pair_ratio": spread(ratios), "rss": rss,
            "faults": tuple(c[0] / args.steps for c in counters),
            "sys_share": tuple(c[2] / max(c[1] + c[2], 1e-9) for c in counters)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--shapes", nargs="*", default=[f"{b}x{s}" for b, s in SHAPES],
                        help="batch x image side, e.g. 16x224")
    parser.add_argument("--out", default=None)
    serve = parser.add_argument_group("--serve-torch: serve PyTorch's side of one row (run by the driver)")
    serve.add_argument("--serve-torch", action="store_true")
    serve.add_argument("--model")
    serve.add_argument("--batch", type=int)
    serve.add_argument("--img-size", type=int)
    args = parser.parse_args()
    if args.serve_torch:
        serve_torch(args)
        return
    rows = []
    for shape in args.shapes:
        batch, img_size = (int(v) for v in shape.split("x"))
        for name in args.models:
            row = measure(args, name, batch, img_size)
            rows.append(row)
            print(f"{name:14} b{batch:<4} {img_size}px  rust {row['rust'][0]:9.1f} ms  "
                  f"torch {row['torch'][0]:9.1f} ms  ratio {row['ratio']:.3f}", flush=True)
    settings = f"autocast {args.amp}, {'channels_last' if args.channels_last else 'contiguous'}"
    lines = [
        f"Train step (forward + backward + fused AdamW), CPU ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads, {settings}; {args.steps} steps per side, interleaved with PyTorch's, "
        f"after {args.warmup} warm-up; torch {torch.__version__}.",
        "",
        "Times are medians with the 10th-90th percentile in brackets; `ratio` is median Rust / median "
        "PyTorch, `paired` the median (10th-90th) of the per-pair ratios.",
        "",
        "Each side runs in a fresh process per row. Page faults per step and the share of CPU time spent "
        "in the kernel (system time) are each side's own, over its timed steps.",
        "",
        "| model | batch | img | Rust ms/step | PyTorch ms/step | ratio Rust/PyTorch | paired | "
        "page faults/step Rust / PyTorch | kernel CPU share Rust / PyTorch | peak RSS (MB) Rust / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(stats, digits=1):
        median, low, high = stats
        return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"

    lines += [f"| {r['model']} | {r['batch']} | {r['img']} | {cell(r['rust'])} | {cell(r['torch'])} | "
              f"**{r['ratio']:.3f}** | {cell(r['pair_ratio'], 3)} | {r['faults'][0]:,.0f} / {r['faults'][1]:,.0f} | "
              f"{r['sys_share'][0]:.1%} / {r['sys_share'][1]:.1%} | {r['rss'][0]:.0f} / {r['rss'][1]:.0f} |"
              for r in rows]
    print("\n".join(lines))
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
