"""The paper's claim at CPU scale: each Fashion-MNIST PE/baseline pair trained with 3 seeds;
prints (and writes) params, test top-1 mean ± std, and train time.

    python bench/fmnist_table.py [--pe target/release/pe] [--seeds 0 1 2] [--out bench/results/fmnist.md]
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIRS = [("fmnist_resnet_mini", "fmnist_resnet_mini_pe"), ("fmnist_vit_mini", "fmnist_vit_pe_mini")]


def final_eval(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "eval"][-1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "fmnist-table"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for recipe in [r for pair in PAIRS for r in pair]:
        model = next(line.split('"')[1] for line in (ROOT / "experiments" / f"{recipe}.toml").read_text().splitlines()
                     if line.startswith("name ="))
        summary = json.loads(subprocess.run([args.pe, "summary", "--model", model, "--format", "json"],
                                            check=True, capture_output=True, text=True).stdout)
        accs, times = [], []
        for seed in args.seeds:
            name = f"{recipe}-seed{seed}"
            start = time.perf_counter()
            subprocess.run([args.pe, "train", str(ROOT / "experiments" / f"{recipe}.toml"), "--set", f"train.seed={seed}",
                            "--set", f'name="{name}"', "--set", f'logging.runs_dir="{args.runs_dir}"',
                            "--set", "logging.progress=false"], check=True, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
            accs.append(final_eval(pathlib.Path(args.runs_dir) / name)["acc1"])
            print(f"{recipe} seed {seed}: top-1 {accs[-1]:.2f}% in {times[-1]:.0f} s", flush=True)
        rows.append((recipe, summary["params"], accs, times))
    lines = [
        f"Fashion-MNIST (60k train / 10k test, 28×28), {len(args.seeds)} seeds each, this machine's CPU.",
        "",
        "| recipe | params | test top-1 (mean ± std) | train time per run (s) |",
        "|---|---|---|---|",
    ]
    for recipe, params, accs, times in rows:
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {recipe} | {params:,} | {statistics.mean(accs):.2f} ± {std:.2f} | {statistics.mean(times):.0f} |")
    print("\n".join(lines))
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
