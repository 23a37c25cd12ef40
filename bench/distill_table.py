"""Distillation at CPU scale (issue 30): ViT-PE-mini on Fashion-MNIST without a teacher, with DeiT's
hard distillation token taught by the trained vit_mini, and by a ResNet (DeiT's convnet-teacher
point); the parameter-matched untied vit_mini_matched without and with the vit_mini teacher.
Prints (and writes) params, test top-1 mean ± std over seeds, and train time per run.

    python bench/distill_table.py [--pe target/release/pe] [--seeds 0 1 2] [--out bench/results/distill.md]

The teachers are the shipped recipes' runs (runs/fmnist_vit_mini, runs/fmnist_resnet_mini), trained
here first when missing.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

from fmnist_table import final_eval  # bench/ is the script's folder, first on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEACHERS = {"vit_mini": "fmnist_vit_mini", "resnet_mini": "fmnist_resnet_mini"}


def with_teacher(teacher):
    return ["--set", f'distill.teacher="{ROOT / "runs" / TEACHERS[teacher]}"']


# (row label, recipe, model for the parameter count, teacher or None, extra --set arguments)
ROWS = [
    ("vit_pe_mini", "fmnist_vit_pe_mini", "vit_pe_mini", None, []),
    ("vit_pe_mini + dist token", "fmnist_vit_pe_mini_distilled", "vit_pe_mini", "vit_mini", []),
    ("vit_pe_mini + dist token", "fmnist_vit_pe_mini_distilled", "vit_pe_mini", "resnet_mini", []),
    ("vit_mini_matched", "fmnist_vit_mini_matched", "vit_mini_matched", None, []),
    ("vit_mini_matched + dist token", "fmnist_vit_mini_matched", "vit_mini_matched", "vit_mini",
     ["--set", "model.distilled=true", "--set", 'distill.kind="hard"']),
]


def params(pe, model, distilled):
    summary = json.loads(subprocess.run([pe, "summary", "--model", model, "--format", "json"],
                                        check=True, capture_output=True, text=True).stdout)
    # The distillation token and head: 2·C + C·K + K more (C = width, K = 10 classes).
    if distilled:
        width = summary["config"]["embed_dim"]
        return summary["params"] + 2 * width + width * 10 + 10
    return summary["params"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "distill-table"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    for recipe in TEACHERS.values():
        if not (ROOT / "runs" / recipe / "checkpoints" / "last").exists():
            subprocess.run([args.pe, "train", str(ROOT / "experiments" / f"{recipe}.toml")], check=True, cwd=ROOT)
    teacher_acc = {t: final_eval(ROOT / "runs" / r)["acc1"] for t, r in TEACHERS.items()}
    results = {row: ([], []) for row in range(len(ROWS))}
    # Seed by seed, the table rewritten after each: an interrupted sweep keeps its finished seeds.
    for done, seed in enumerate(args.seeds, 1):
        for row, (label, recipe, model, teacher, extra) in enumerate(ROWS):
            name = f"{recipe}-{teacher or 'alone'}-seed{seed}"
            start = time.perf_counter()
            command = [args.pe, "train", str(ROOT / "experiments" / f"{recipe}.toml"), "--set", f"train.seed={seed}",
                       "--set", f'name="{name}"', "--set", f'logging.runs_dir="{args.runs_dir}"',
                       "--set", "logging.progress=false", *extra, *(with_teacher(teacher) if teacher else [])]
            subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
            accs, times = results[row]
            times.append(time.perf_counter() - start)
            accs.append(final_eval(pathlib.Path(args.runs_dir) / name)["acc1"])
            print(f"{label} ({teacher or 'no teacher'}) seed {seed}: top-1 {accs[-1]:.2f}% in {times[-1]:.0f} s",
                  flush=True)
        write_table(args, ROWS, results, teacher_acc, args.seeds[:done])


def write_table(args, rows, results, teacher_acc, seeds):
    lines = [
        f"Fashion-MNIST (60k train / 10k test, 28×28), 2 epochs, seed(s) {', '.join(map(str, seeds))}, this "
        "machine's CPU; hard distillation (DeiT's token, alpha 0.5). Teachers (seed 0): "
        + ", ".join(f"{t} {a:.2f} %" for t, a in teacher_acc.items()) + ".",
        "",
        "| student | teacher | params | test top-1 (mean ± std) | train time per run (s) |",
        "|---|---|---|---|---|",
    ]
    for row, (label, _, model, teacher, _) in enumerate(rows):
        accs, times = results[row]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        count = params(args.pe, model, teacher is not None)
        lines.append(f"| {label} | {teacher or '-'} | {count:,} | {statistics.mean(accs):.2f} ± {std:.2f} "
                     f"| {statistics.mean(times):.0f} |")
    print("\n".join(lines))
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
