"""Does `pe convert` save training? At CPU scale, per family (ViT, ResNet) and seed: train the baseline
recipe, convert it to its PE twin (naive and symmetric), evaluate at once, fine-tune for k epochs; beside
the twin trained from scratch for the baseline's epochs plus k. Writes a table (Markdown + JSON) and a
figure (top-1 against fine-tune epochs).

    python bench/convert_table.py [--pe target/release/pe] [--seeds 0 1 2] [--families vit resnet]
        [--finetune 1 2 5] [--naive-finetune 1 2 5] [--out bench/results/convert.md] [--set KEY=VALUE ...]

`--set` passes overrides to every training run (a smoke run: `--set train.max_steps=3`).
"""

import argparse
import json
import pathlib
import statistics
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
# family: (baseline recipe, PE twin in the registry, the twin's recipe)
FAMILIES = {
    "vit": ("fmnist_vit_mini", "vit_pe_mini", "fmnist_vit_pe_mini"),
    "resnet": ("fmnist_resnet_mini", "resnet_mini_pe", "fmnist_resnet_mini_pe"),
}
BASE_EPOCHS = 2  # the Fashion-MNIST recipes' train.epochs


def run(args, command):
    result = subprocess.run([args.pe, *command], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"pe {' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def train(args, recipe, name, sets):
    """Trains (or finds trained) `name` and returns its last evaluation's top-1."""
    runs = pathlib.Path(args.runs_dir)
    command = ["train", str(ROOT / "experiments" / f"{recipe}.toml"), "--set", f'name="{name}"',
               "--set", f'logging.runs_dir="{runs}"', "--set", "logging.progress=false"]
    for s in [*sets, *args.sets]:
        command += ["--set", s]
    run(args, command)
    records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "eval"][-1]["acc1"]


def measure(args, family, seed):
    baseline, twin, twin_recipe = FAMILIES[family]
    runs = pathlib.Path(args.runs_dir)
    seed_set = f"train.seed={seed}"
    row = {"family": family, "seed": seed, "baseline": train(args, baseline, f"{family}-baseline-s{seed}", [seed_set])}
    for method, ks in (("naive", args.naive_finetune), ("symmetric", args.finetune)):
        out = runs / f"{family}-{method}-s{seed}"
        run(args, ["convert", str(runs / f"{family}-baseline-s{seed}"), "--to", twin, "--out", str(out),
                   "--method", method, "--images", "10000", "--format", "json"])
        report = json.loads((out / "convert.json").read_text())
        errors = [t["error"] for t in report["tied"]]
        row[method] = {"0": report["logits"]["converted_top1"],
                       "agreement": report["logits"]["agreement"],
                       "mean_error": sum(errors) / len(errors)}
        for k in ks:
            name = f"{family}-{method}-ft{k}-s{seed}"
            row[method][str(k)] = train(args, twin_recipe, name, [seed_set, f'model.init="{out / "model.safetensors"}"',
                                                                   f"train.epochs={k}"])
    row["scratch"] = {}
    for k in sorted({0, *args.finetune}):
        epochs = BASE_EPOCHS + k
        row["scratch"][str(k)] = train(args, twin_recipe, f"{family}-scratch{epochs}-s{seed}",
                                       [seed_set, f"train.epochs={epochs}"])
    print(json.dumps(row), flush=True)
    return row


def cell(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown(args, rows):
    ks = sorted({0, *args.finetune, *args.naive_finetune})
    lines = [f"Top-1 (%) on the 10,000 Fashion-MNIST test images; {len(args.seeds)} seed(s): "
             f"{', '.join(map(str, args.seeds))}. Column k: after k fine-tune epochs (k = 0: converted, no training);"
             f" scratch: the PE twin trained for {BASE_EPOCHS} + k epochs.", "",
             "| family | start | mean tie error | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for family in args.families:
        mine = [r for r in rows if r["family"] == family]
        base = cell([r["baseline"] for r in mine])
        lines.append(f"| {family} | baseline ({BASE_EPOCHS} epochs) | – | {base} |" + " |" * (len(ks) - 1))
        for method in ("naive", "symmetric"):
            error = cell([r[method]["mean_error"] for r in mine]).split(" ")[0]
            values = [cell([r[method][str(k)] for r in mine if str(k) in r[method]]) for k in ks]
            lines.append(f"| {family} | converted, {method} | {error} | " + " | ".join(values) + " |")
        values = [cell([r["scratch"][str(k)] for r in mine if str(k) in r["scratch"]]) for k in ks]
        lines.append(f"| {family} | PE from scratch ({BASE_EPOCHS} + k epochs) | – | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def figure(args, rows, path):
    """Top-1 against fine-tune epochs, one panel per family (plain SVG)."""
    width, height, pad = 360, 260, 44
    colours = {"naive": "#d62728", "symmetric": "#1f77b4", "scratch": "#7f7f7f"}
    ks = sorted({0, *args.finetune, *args.naive_finetune})
    panels = []
    for index, family in enumerate(args.families):
        mine = [r for r in rows if r["family"] == family]
        series = {name: [(k, statistics.mean([r[name][str(k)] for r in mine]))
                         for k in ks if all(str(k) in r[name] for r in mine)]
                  for name in ("naive", "symmetric", "scratch")}
        base = statistics.mean(r["baseline"] for r in mine)
        values = [v for s in series.values() for _, v in s] + [base]
        low, high = min(values) - 2, max(values) + 1
        x = lambda k: pad + (width - 2 * pad) * k / max(ks)  # noqa: E731
        y = lambda v: height - pad - (height - 2 * pad) * (v - low) / (high - low)  # noqa: E731
        left = index * width
        parts = [f'<g transform="translate({left},0)">',
                 f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{family}</text>',
                 f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
                 f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
                 f'<line x1="{pad}" y1="{y(base):.1f}" x2="{width - pad}" y2="{y(base):.1f}" stroke="black" '
                 f'stroke-dasharray="4 3"/><text x="{width - pad}" y="{y(base) - 4:.1f}" text-anchor="end" '
                 f'font-size="10">baseline {base:.2f}</text>',
                 f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="11">fine-tune epochs k</text>']
        for k in ks:
            parts.append(f'<text x="{x(k):.1f}" y="{height - pad + 14}" text-anchor="middle" font-size="10">{k}</text>')
        for tick in range(int(low) + 1, int(high) + 1, max(1, int((high - low) / 5))):
            parts.append(f'<text x="{pad - 4}" y="{y(tick) + 3:.1f}" text-anchor="end" font-size="10">{tick}</text>')
        for name, points in series.items():
            if points:
                path_d = " ".join(f"{'M' if i == 0 else 'L'}{x(k):.1f},{y(v):.1f}" for i, (k, v) in enumerate(points))
                parts.append(f'<path d="{path_d}" fill="none" stroke="{colours[name]}" stroke-width="2"/>')
                parts += [f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="3" fill="{colours[name]}"/>' for k, v in points]
        for i, name in enumerate(("symmetric", "naive", "scratch")):
            label = {"scratch": f"PE from scratch ({BASE_EPOCHS} + k)", "naive": "converted, naive",
                     "symmetric": "converted, symmetric"}[name]
            parts.append(f'<text x="{pad + 8}" y="{height - pad - 10 - 13 * i}" font-size="10" '
                         f'fill="{colours[name]}">{label}</text>')
        panels.append("\n".join(parts) + "</g>")
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(args.families)}" height="{height}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>\n' + "\n".join(panels) + "\n</svg>\n")
    path.write_text(svg)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--finetune", type=int, nargs="+", default=[1, 2, 5], help="fine-tune epochs (symmetric)")
    parser.add_argument("--naive-finetune", type=int, nargs="*", default=None, help="for the naive start (default: --finetune)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "convert-table"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "convert.md"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    if args.naive_finetune is None:
        args.naive_finetune = args.finetune
    rows = [measure(args, family, seed) for family in args.families for seed in args.seeds]
    table = markdown(args, rows)
    print(table)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    figure(args, rows, out.with_suffix(".svg"))
    print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.svg')}")


if __name__ == "__main__":
    main()
