"""Run the data-pipeline benchmark (pe-data vs torchvision) and write a side-by-side table.

Usage: python bench/data/compare.py --bin <pipeline_bench> --root data/bench-photos [--workers 1 2]
       [--repeats 3] [--out bench/results/data_pipeline.md]
Both sides run on the same machine in the same invocation; the ratio is per worker. Each row is
`--repeats` pairs of back-to-back runs, the side that goes first alternating, because a shared VM's
speed drifts by more than the effects measured here within minutes: the table gives the median rates,
the median of the pairs' ratios and their range.
"""

import argparse
import json
import os
import platform
import subprocess
import statistics
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
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs per row")
    ap.add_argument("--out", default="bench/results/data_pipeline.md")
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for p in PIPELINES:
        for w in a.workers:
            sides = {
                "pe-data": [a.bin, a.root, p, str(w), str(a.batch), str(a.epochs)],
                "torchvision": [sys.executable, os.path.join(here, "torchvision_bench.py"), a.root, p, str(w),
                                "--batch", str(a.batch), "--epochs", str(a.epochs)],
            }
            rates = {name: [] for name in sides}
            ratios = []
            for r in range(a.repeats):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                pair = {name: run(sides[name])["img_per_s"] for name in order}
                for name, rate in pair.items():
                    rates[name].append(rate)
                ratios.append(pair["pe-data"] / pair["torchvision"])
                print(f"{p:<12} workers={w}  pe-data {pair['pe-data']:8.1f} img/s  torchvision "
                      f"{pair['torchvision']:8.1f} img/s  ratio {ratios[-1]:.2f}x", flush=True)
            ours, ref = statistics.median(rates["pe-data"]), statistics.median(rates["torchvision"])
            rows.append((p, w, ours, ref, ours / w, ref / w, statistics.median(ratios), min(ratios),
                         max(ratios)))
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
        f"{a.epochs} timed). Output uint8 NCHW 224x224 on both sides. Each row: {a.repeats} pairs of "
        "back-to-back runs (which side goes first alternates); medians of the rates and of the pairs' "
        "ratios, and the range of those ratios.",
        "",
        "- train-basic: RandomResizedCrop(224, bilinear) + flip (torchvision's ResNet recipe)",
        "- train-deit: RRC bicubic + flip + RandAugment rand-m9-mstd0.5-inc1 (+ random erasing 0.25 in "
        "pe-data only; timm does it on the GPU)",
        "- eval: Resize(256) + CenterCrop(224)",
        "",
        "| pipeline | workers | pe-data img/s | torchvision img/s | pe-data img/s/worker | "
        "torchvision img/s/worker | ratio | ratio range |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, w, o, r, ow, rw, ratio, lo, hi in rows:
        lines.append(f"| {p} | {w} | {o:.1f} | {r:.1f} | {ow:.1f} | {rw:.1f} | {ratio:.2f}x | "
                     f"{lo:.2f}–{hi:.2f}x |")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
