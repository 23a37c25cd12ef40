"""Run the data-pipeline benchmark (pe-data vs torchvision) and write a side-by-side table.

Usage: python bench/data/compare.py --bin <pipeline_bench> --root data/bench-photos [--workers 1 2]
       [--out bench/results/data_pipeline.md]
Both sides run on the same machine in the same invocation; the ratio is per worker.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

PIPELINES = ["train-basic", "train-deit", "eval"]


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--root", default="data/bench-photos")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="bench/results/data_pipeline.md")
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for p in PIPELINES:
        for w in a.workers:
            ours = run([a.bin, a.root, p, str(w), str(a.batch), str(a.epochs)])
            ref = run([sys.executable, os.path.join(here, "torchvision_bench.py"), a.root, p, str(w),
                       "--batch", str(a.batch), "--epochs", str(a.epochs)])
            ratio = ours["img_per_s"] / ref["img_per_s"]
            rows.append((p, w, ours["img_per_s"], ref["img_per_s"], ours["img_per_s_per_worker"],
                         ref["img_per_s_per_worker"], ratio))
            print(f"{p:<12} workers={w}  pe-data {ours['img_per_s']:8.1f} img/s  torchvision "
                  f"{ref['img_per_s']:8.1f} img/s  ratio {ratio:.2f}x", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Data pipeline: pe-data vs torchvision DataLoader + PIL",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores. Files: `{a.root}` ({a.batch} per batch, 1 warm-up epoch + "
        f"{a.epochs} timed). Output uint8 NCHW 224x224 on both sides.",
        "",
        "- train-basic: RandomResizedCrop(224, bilinear) + flip (torchvision's ResNet recipe)",
        "- train-deit: RRC bicubic + flip + RandAugment rand-m9-mstd0.5-inc1 (+ random erasing 0.25 in "
        "pe-data only; timm does it on the GPU)",
        "- eval: Resize(256) + CenterCrop(224)",
        "",
        "| pipeline | workers | pe-data img/s | torchvision img/s | pe-data img/s/worker | "
        "torchvision img/s/worker | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for p, w, o, r, ow, rw, ratio in rows:
        lines.append(f"| {p} | {w} | {o:.1f} | {r:.1f} | {ow:.1f} | {rw:.1f} | {ratio:.2f}x |")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
