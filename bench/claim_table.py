"""Does tying beat shrinking? (issue 15) For each Fashion-MNIST family — the untied baseline, its PE
twin and the untied baseline narrowed to the PE twin's parameter count — trains N seeds for E epochs
and writes a table (params and MACs from `pe summary`, test top-1 mean ± std, wall time), one plain
sentence per row comparing it with the PE twin, the raw results as JSON, and a figure (accuracy
against parameters) drawn by crates/pe-analyze/examples/claim_figure.rs with plotters.

    python bench/claim_table.py [--pe target/release/pe] [--epochs 10] [--seeds 0 1 2]
        [--families resnet vit] [--max-steps 0] [--device cuda --device-name "one H200"]
        [--out bench/results/claim.md]

Runs are named `<recipe>-e<epochs>-seed<seed>` under --runs-dir and are reused when finished, so an
interrupted table resumes where it stopped. Every run evaluates after each epoch so the table can
show that accuracy has stopped moving (the change over the last two evaluations).
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# family -> (baseline, PE twin, matched baseline) recipes; the PE twin is the reference of each row.
FAMILIES = {
    "resnet": ("fmnist_resnet_mini", "fmnist_resnet_mini_pe", "fmnist_resnet_mini_matched"),
    "vit": ("fmnist_vit_mini", "fmnist_vit_pe_mini", "fmnist_vit_mini_matched"),
}
VARIANTS = ("baseline", "PE", "matched")


def recipe_model(recipe):
    """The registry model a recipe trains (its `[model] name`)."""
    lines = (ROOT / "experiments" / f"{recipe}.toml").read_text().splitlines()
    return next(line.split('"')[1] for line in lines if line.startswith("name ="))


def summary(pe, model):
    out = subprocess.run([pe, "summary", "--model", model, "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def evals(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "eval"]


def train(args, recipe, seed):
    """One finished run: (final top-1, top-1 change over the last two evaluations, wall seconds)."""
    name = (f"{recipe}-e{args.epochs}-seed{seed}" + (f"-s{args.max_steps}" if args.max_steps else "")
            + (f"-{args.device}" if args.device else ""))
    run_dir = pathlib.Path(args.runs_dir) / name
    timing = run_dir / "claim_wall_s.json"
    if not timing.exists():
        start = time.perf_counter()
        sets = [f"train.seed={seed}", f"train.epochs={args.epochs}", f"train.max_steps={args.max_steps}",
                "eval.every_epochs=1", f'name="{name}"', f'logging.runs_dir="{args.runs_dir}"',
                "logging.progress=false"] + ([f'train.device="{args.device}"'] if args.device else [])
        command = [args.pe, "train", str(ROOT / "experiments" / f"{recipe}.toml")]
        subprocess.run(command + [a for s in sets for a in ("--set", s)], check=True, capture_output=True, cwd=ROOT)
        timing.write_text(json.dumps(time.perf_counter() - start))
    accs = [r["acc1"] for r in evals(run_dir)]
    last_change = accs[-1] - accs[-2] if len(accs) > 1 else None
    return accs[-1], last_change, json.loads(timing.read_text())


def measure(args, family, variant, recipe):
    model = recipe_model(recipe)
    info = summary(args.pe, model)
    runs = [train(args, recipe, seed) for seed in args.seeds]
    for seed, (acc, _, wall) in zip(args.seeds, runs):
        print(f"{recipe} seed {seed}: top-1 {acc:.2f}% in {wall:.0f} s", flush=True)
    accs = [acc for acc, _, _ in runs]
    changes = [change for _, change, _ in runs if change is not None]
    return {
        "family": family, "variant": variant, "recipe": recipe, "model": model,
        "params": info["params"], "macs": info["macs"], "seeds": args.seeds, "accs": accs,
        "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "last_epoch_change": statistics.mean(changes) if changes else None,
        "wall_s": statistics.mean(wall for _, _, wall in runs),
    }


def verdict(row, twin):
    """A plain sentence: is the row's difference to its PE twin larger than the seed spread?

    "Larger than the spread" means the mean ± std intervals do not overlap: |Δ| > std_row + std_pe.
    """
    label = f"{row['family']} {row['variant']} ({row['params']:,} params, {row['macs'] / 1e6:.1f} MMACs)"
    if row is twin:
        return f"{label} is the reference: the PE twin its family is compared with."
    delta, spread = row["mean"] - twin["mean"], row["std"] + twin["std"]
    side = "above" if delta > 0 else "below"
    head = f"{label} is {abs(delta):.2f} points {side} the PE twin ({twin['mean']:.2f} %)"
    if len(row["accs"]) < 2:
        return f"{head}; with one seed there is no spread to judge it against."
    if abs(delta) > spread:
        return f"{head}, more than the seed spread ({spread:.2f} = sum of both stds): a real difference."
    return f"{head}, within the seed spread ({spread:.2f} = sum of both stds): no measurable difference."


def markdown(args, rows):
    schedule = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}" + (f", stopped at {args.max_steps} steps" if args.max_steps else "")
    lines = [
        f"Fashion-MNIST (60k train / 10k test, 28×28), {schedule}, seeds {' '.join(map(str, args.seeds))}, "
        f"trained on {args.device_name}. Params with head and MACs per image from `pe summary`; Δ PE is the difference "
        "to the PE twin's mean; last-epoch change is the mean change of top-1 over the final epoch "
        "(near 0 when accuracy has stopped moving; under cosine decay it shrinks by construction, so a "
        "one-seed run at twice the epochs is the check that the schedule is long enough).",
        "",
        "| family | variant | recipe | params | MMACs | test top-1 (mean ± std) | Δ PE | last-epoch change | wall time per run (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    twins = {r["family"]: r for r in rows if r["variant"] == "PE"}
    for r in rows:
        change = "-" if r["last_epoch_change"] is None else f"{r['last_epoch_change']:+.2f}"
        delta = r["mean"] - twins[r["family"]]["mean"]
        lines.append(f"| {r['family']} | {r['variant']} | {r['recipe']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | "
                     f"{r['mean']:.2f} ± {r['std']:.2f} | {delta:+.2f} | {change} | {r['wall_s']:.0f} |")
    lines += ["", *[f"- {verdict(r, twins[r['family']])}" for r in rows]]
    return "\n".join(lines) + "\n"


def figure(args, json_path):
    if not pathlib.Path(args.figure_bin).exists():
        print(f"no figure: build it with `cargo build --release -p pe-analyze --example claim_figure` ({args.figure_bin})")
        return
    subprocess.run([args.figure_bin, str(json_path), args.figure], check=True)
    print(f"wrote {args.figure}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="train only these variants (e.g. one process per run on a GPU machine)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (a trial)")
    parser.add_argument("--device", default=None,
                        help="train.device for every run (default: the recipes' own, the CPU); named in the run folders")
    parser.add_argument("--device-name", default="this machine's CPU", help="what the table says the runs trained on")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "claim-table"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "claim.md"))
    parser.add_argument("--figure", default=str(ROOT / "bench" / "results" / "claim.svg"))
    parser.add_argument("--figure-bin", default=str(ROOT / "target" / "release" / "examples" / "claim_figure"))
    args = parser.parse_args()
    rows = [measure(args, family, variant, recipe)
            for family in args.families for variant, recipe in zip(VARIANTS, FAMILIES[family])
            if variant in args.variants]
    if "PE" not in args.variants:
        print("trained the runs; the table needs the PE twins (--variants PE ...) to compare against")
        return
    table = markdown(args, rows)
    print(table)
    out = pathlib.Path(args.out)
    out.write_text(table)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    figure(args, json_path)


if __name__ == "__main__":
    main()
