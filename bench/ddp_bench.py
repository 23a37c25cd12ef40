"""Data-parallel scaling on this machine's CPU: img/s of the training step engine (`pe bench`) on
1 process and on 2 processes (`pe launch`, Gloo on loopback, 1 thread each), the scaling efficiency,
and the share of the gradient all-reduce hidden behind backward (DDP's own timing).

    python bench/ddp_bench.py --pe target/release/pe [--out bench/results/ddp_cpu.md]
"""

import argparse
import json
import os
import platform
import subprocess

MODELS = ["resnet_mini_pe", "vit_mini"]


def bench(pe, model, batch, steps, nproc):
    args = ["bench", "--model", model, "--batch", str(batch), "--steps", str(steps), "--warmup", "3",
            "--threads", "1", "--format", "json"]
    command = [pe, *args] if nproc == 1 else [pe, "launch", "--nproc", str(nproc), "--", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/ddp_cpu.md")
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    for model in MODELS:
        one = bench(args.pe, model, args.batch, args.steps, 1)
        two = bench(args.pe, model, args.batch, args.steps, 2)
        efficiency = two["img_per_s"] / (2 * one["img_per_s"])
        hidden = two["allreduce_hidden_share"]
        rows.append((model, one["img_per_s"], two["img_per_s"], efficiency, hidden))
        print(f"{model:<16} 1 process {one['img_per_s']:8.1f} img/s   2 processes {two['img_per_s']:8.1f} img/s   "
              f"efficiency {efficiency:.2f}   all-reduce hidden {hidden if hidden is None else f'{hidden:.2f}'}",
              flush=True)
    lines = [
        "# Data-parallel scaling on CPU (c10d Gloo, loopback)",
        "",
        f"`make bench-ddp` on {platform.node() or 'this machine'} ({os.cpu_count()} cores): the training step engine "
        f"(`pe bench`: forward, backward, AdamW) at batch {args.batch} per process, 1 libtorch thread per process, "
        f"{args.steps} timed steps after 3 warm-up steps; 2 processes via `pe launch` reduce gradients with c10d's "
        "Reducer exactly as in training. Efficiency = img/s(2) / (2 × img/s(1)); hidden = the share of the "
        "all-reduce that overlapped backward (DDP's own logger). 2 processes need both cores: other work on the "
        f"machine lowers the 2-process number first (1-minute load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after this run).",
        "",
        "| model | 1 process img/s | 2 processes img/s | scaling efficiency | all-reduce hidden behind backward |",
        "|---|---|---|---|---|",
    ]
    for model, one, two, efficiency, hidden in rows:
        shown = "n/a" if hidden is None else f"{hidden:.2f}"
        lines.append(f"| {model} | {one:.1f} | {two:.1f} | {efficiency:.2f} | {shown} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
