"""What transfers at CPU scale: pre-train on Fashion-MNIST classes 0-4, then learn classes 5-9 four ways,
for a baseline and its PE twin, over seeds:

- fine-tune: every weight from the pre-trained run, a new head (`model.init_exclude = ["head.*"]`);
- linear probe: the same start, only the head trains (`optimizer.freeze = ["*"]`, `train = ["head.*"]`);
- scratch: a fresh model, the same recipe and number of steps;
- the pre-trained model's own top-1 on classes 0-4, for reference.

    python bench/transfer_table.py [--pe target/release/pe] [--data data/fashion-mnist] [--seeds 0 1 2]
        [--recipes A B] [--out bench/results/transfer.md] [--set KEY=VALUE ...]

The two class halves are folders of symlinks to the class folders of `--data` (under the runs folder).
`--set` passes overrides to every run (a smoke run: `--set train.max_steps=3`).
"""

import argparse
import json
import pathlib
import statistics
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ["fmnist_vit_mini", "fmnist_vit_pe_mini"]
WAYS = ["pre-trained (0-4)", "fine-tune (5-9)", "linear probe (5-9)", "scratch (5-9)"]


def half(data, out, classes):
    """An ImageFolder at `out` whose splits hold only `classes` of `data`, as symlinks."""
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in classes:
            link = out / split / name
            if not link.exists():
                link.symlink_to((data / split / name).resolve(), target_is_directory=True)
    return out


def final_top1(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "eval"][-1]["acc1"]


def train(pe, recipe, name, runs, data, sets):
    args = [pe, "train", str(ROOT / "experiments" / f"{recipe}.toml"), "--set", f'name="{name}"',
            "--set", f'logging.runs_dir="{runs}"', "--set", f'data.root="{data}"', "--set", "model.num_classes=5",
            "--set", "logging.progress=false"]
    for s in sets:
        args += ["--set", s]
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return final_top1(runs / name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=RECIPES, help="a baseline and its PE twin")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "transfer-table"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    data, runs = pathlib.Path(args.data), pathlib.Path(args.runs_dir)
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    if len(classes) != 10:
        raise SystemExit(f"{data}/train has {len(classes)} class folders, expected Fashion-MNIST's 10 (make data)")
    first = half(data, runs / "data-0-4", classes[:5])
    second = half(data, runs / "data-5-9", classes[5:])
    table = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            sets = [f"train.seed={seed}", *args.sets]
            base = f"{recipe}-0-4-seed{seed}"
            start = [f'model.init="{runs / base}"', 'model.init_exclude=["head.*"]']
            tops = [
                train(args.pe, recipe, base, runs, first, sets),
                train(args.pe, recipe, f"{recipe}-ft-seed{seed}", runs, second, [*sets, *start]),
                train(args.pe, recipe, f"{recipe}-probe-seed{seed}", runs, second,
                      [*sets, *start, 'optimizer.freeze=["*"]', 'optimizer.train=["head.*"]']),
                train(args.pe, recipe, f"{recipe}-scratch-seed{seed}", runs, second, sets),
            ]
            for way, top in zip(WAYS, tops):
                table.setdefault((recipe, way), []).append(top)
            print(f"{recipe} seed {seed}: " + ", ".join(f"{w} {t:.2f}%" for w, t in zip(WAYS, tops)), flush=True)
    lines = [
        f"Fashion-MNIST transfer: pre-trained on classes 0-4, then classes 5-9; {len(args.seeds)} seeds, test top-1 "
        "(mean ± std) on the classes trained. Each run is the recipe as shipped (2 epochs over its half)"
        + (f", with {' '.join(args.sets)}" if args.sets else "") + ".",
        "",
        "| recipe | " + " | ".join(WAYS) + " |",
        "|---|" + "---|" * len(WAYS),
    ]
    for recipe in args.recipes:
        cells = []
        for way in WAYS:
            accs = table[(recipe, way)]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} ± {std:.2f}")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
