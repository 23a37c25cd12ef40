"""The paper's Table 1 (ViT family) or Table 2 (ResNet family) by one command: trains every recipe of the
table (resuming unfinished runs, skipping finished ones, reporting failed ones instead of retrying them),
evaluates each run's best checkpoint (and its EMA weights where the recipe keeps them) with `pe eval`,
and prints the table in the paper's layout with the paper's numbers beside ours.

    python bench/paper_table.py --table 2 [--pe target/release/pe] [--nproc 8] [--data /data/imagenet] \
        [--epochs 10] [--set KEY=VALUE ...] [--runs-dir runs/paper-table2] [--retry-failed] \
        [--out bench/results/paper_table2]

Each row is a normal run folder (`<runs-dir>/<recipe>`, or `<recipe>-<E>ep` with `--epochs E`, so a
short-schedule look never resumes into a full run). The driver's own record, `<runs-dir>/paper_table.json`,
keeps each run's status, exit code, wall time and log. A stop signal (SLURM preemption, Ctrl-C) goes to
the run in progress, which checkpoints; the driver then exits with its code, and rerunning the same
command continues where it stopped.
"""

import argparse
import json
import pathlib
import signal
import subprocess
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: recipe -> (label, the paper's printed acc@1, acc@5, params (M), GFLOPs); None where it prints none.
TABLES = {
    1: [
        ("deit_tiny_300e", "DeiT-T/16", 72.2, None, 5.7, 1.3),
        ("deit_small_300e", "DeiT-S/16", 79.9, None, 22.1, 4.6),
        ("vit_pe_300e", "ViT-PE¹ (300 ep)", 77.3, None, 11.1, 4.6),
        ("vit_pe_600e", "ViT-PE² (600 ep)", 78.8, None, 11.1, 4.6),
        ("vit_small_matched_300e", "ViT-S matched to ViT-PE (ours, no paper row)", None, None, None, None),
    ],
    2: [
        ("resnet18", "ResNet18", 69.7, 89.0, 11.7, 1.8),
        ("resnet34", "ResNet34", 73.3, 91.4, 21.8, 3.66),
        ("resnet50", "ResNet50", 76.1, 92.8, 25.6, 4.09),
        ("resnet50_pe_all", "ResNet50-PE¹ (all stages)", 74.2, 91.9, 12.8, 4.09),
        ("resnet50_pe_stage34", "ResNet50-PE² (stages 3-4)", 75.1, 92.8, 13.4, 4.09),
        ("resnet50_matched", "ResNet50 matched to PE² (ours, no paper row)", None, None, None, None),
    ],
}
#: Exit codes of a run stopped by a signal (128 + SIGINT / SIGTERM / SIGUSR1): it resumes on a rerun.
STOPPED = {130, 143, 138}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", type=int, choices=sorted(TABLES), required=True)
    p.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    p.add_argument("--nproc", type=int, default=1, help="processes per run (pe launch --nproc)")
    p.add_argument("--data", help="data.root for every recipe (default: the recipes' data/imagenet)")
    p.add_argument("--epochs", type=int, help="a short schedule for a first look (train.epochs)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run (repeatable)")
    p.add_argument("--runs-dir", help="default: runs/paper-table<N>")
    p.add_argument("--retry-failed", action="store_true", help="train runs that failed before once more")
    p.add_argument("--out", help="write <out>.md and <out>.json (default: bench/results/paper_table<N>)")
    p.add_argument("--list", action="store_true", help="print the table's recipes and run names, one per line")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: the table of the runs as they stand (after a SLURM array trained them)")
    return p.parse_args()


def toml_string(value):
    return json.dumps(str(value))


def model_name(recipe_path):
    """The registry model a recipe trains: its `model.name`, or that of the recipe it is based on."""
    recipe = tomllib.loads(recipe_path.read_text())
    if "name" in recipe.get("model", {}):
        return recipe["model"]["name"]
    if "base" not in recipe:
        raise SystemExit(f"{recipe_path}: no model.name in the recipe or its bases")
    return model_name(recipe_path.parent / recipe["base"])


def duration(seconds):
    if seconds is None:
        return "—"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_finished(run_dir):
    """Whether a run folder holds a complete run: its last epoch evaluated (or `train.max_steps` reached),
    whoever trained it (this driver, or a SLURM array task)."""
    config_path, metrics_path = run_dir / "config.toml", run_dir / "metrics.jsonl"
    if not (config_path.exists() and metrics_path.exists()):
        return False
    train = tomllib.loads(config_path.read_text())["train"]
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evaluated = {r["epoch"] for r in records if r.get("type") == "eval"}
    steps = max((r["step"] for r in records if r.get("type") == "train"), default=0)
    return train["epochs"] in evaluated or 0 < train.get("max_steps", 0) <= steps


class Driver:
    def __init__(self, a):
        self.a = a
        self.runs = pathlib.Path(a.runs_dir or ROOT / "runs" / f"paper-table{a.table}").absolute()
        self.record_path = self.runs / "paper_table.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
        self.child = None

    def save_record(self):
        self.runs.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.record_path)

    def run_name(self, recipe):
        return recipe if self.a.epochs is None else f"{recipe}-{self.a.epochs}ep"

    def train_command(self, recipe, name):
        sets = [f"name={toml_string(name)}", f"logging.runs_dir={toml_string(self.runs)}", "logging.progress=false"]
        if self.a.data:
            sets.append(f"data.root={toml_string(pathlib.Path(self.a.data).absolute())}")
        if self.a.epochs is not None:
            sets.append(f"train.epochs={self.a.epochs}")
        sets += self.a.sets
        launch = [] if self.a.nproc == 1 else ["launch", "--nproc", str(self.a.nproc), "--"]
        command = [self.a.pe, *launch, "train", str(ROOT / "experiments" / f"{recipe}.toml")]
        for s in sets:
            command += ["--set", s]
        return command

    def forward_signal(self, signum, _frame):
        """A stop signal for the driver is one for the run in progress (pe checkpoints and exits 128+n)."""
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def train(self, recipe):
        """Trains one recipe unless it finished (or failed, without --retry-failed); returns the exit
        code of a stopped run, which ends the driver."""
        name = self.run_name(recipe)
        entry = self.record.setdefault(name, {"recipe": recipe, "status": "new", "wall_s": 0.0, "attempts": 0})
        if entry["status"] == "finished" or run_finished(self.runs / name):
            if entry["status"] != "finished":  # trained elsewhere (a SLURM array task)
                entry["status"] = "finished"
                self.save_record()
            print(f"{name}: finished, skipped", flush=True)
            return None
        if entry["status"] == "failed" and not self.a.retry_failed:
            print(f"{name}: failed before (exit {entry['exit']}, log {entry['log']}); skipped (--retry-failed to "
                  "train it again)", flush=True)
            return None
        log = self.runs / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.train_command(recipe, name)
        print(f"{name}: training ({'resuming' if (self.runs / name).exists() else 'new'}), log {log}", flush=True)
        started = time.monotonic()
        with open(log, "a") as out:
            out.write(f"\n$ {' '.join(command)}\n")
            out.flush()
            self.child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            code = self.child.wait()
            self.child = None
        entry["wall_s"] += time.monotonic() - started
        entry["attempts"] += 1
        entry.update(exit=code, log=str(log), nproc=self.a.nproc)
        entry["status"] = "finished" if code == 0 else "stopped" if code in STOPPED else "failed"
        self.save_record()
        print(f"{name}: {entry['status']} (exit {code}) after {entry['wall_s']:.0f} s in all", flush=True)
        return code if code in STOPPED else None

    def pe_json(self, *args):
        out = subprocess.run([self.a.pe, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"pe {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr}")
        return json.loads(out.stdout)

    def row(self, recipe, label, paper1, paper5, paper_params, paper_gflops):
        name = self.run_name(recipe)
        entry = self.record.get(name, {})
        status = "finished" if run_finished(self.runs / name) else entry.get("status", "new")
        row = {"recipe": recipe, "model": label, "run": str(self.runs / name), "status": status,
               "paper": {"acc1": paper1, "acc5": paper5, "params_m": paper_params, "gflops": paper_gflops}}
        config_path = self.runs / name / "config.toml"
        config = tomllib.loads(config_path.read_text()) if config_path.exists() else {}
        img_size = config.get("data", {}).get("img_size", 224)
        summary = self.pe_json("summary", "--model", model_name(ROOT / "experiments" / f"{recipe}.toml"),
                               "--img-size", img_size, "--format", "json")
        row.update(params_m=summary["params"] / 1e6, params_without_head_m=summary["params_without_head"] / 1e6,
                   gflops=summary["macs"] / 1e9, img_size=img_size, log=entry.get("log"),
                   exit=entry.get("exit"), wall_s=entry.get("wall_s"))
        if status != "finished":
            return row
        train = config["train"]
        row.update(epochs=train["epochs"], global_batch=train["batch_size"] * train.get("accum_steps", 1)
                   * entry.get("nproc", 1))
        best = self.pe_json("eval", self.runs / name, "--format", "json")["evaluations"][0]
        row.update(acc1=best["acc1"], acc5=best["acc5"], eval_images=best["samples"], weights=best["weights"])
        if train.get("ema_decay", 0) > 0:
            ema = self.pe_json("eval", self.runs / name, "--ema", "--format", "json")["evaluations"][0]
            row.update(ema_acc1=ema["acc1"], ema_acc5=ema["acc5"])
        return row


def number(value, fmt):
    return "—" if value is None else format(value, fmt)


def difference(ours, paper):
    return "—" if ours is None or paper is None else f"{ours - paper:+.1f}"


def markdown(a, rows):
    short = "" if a.epochs is None else (
        f" **Short schedule: {a.epochs} epoch(s) per run**, every other recipe setting (warm-up included) as "
        "written unless overridden: compare the rows with each other, not with the paper's column, which is "
        "for the full schedule.")
    lines = [
        f"# The paper's Table {a.table}, reproduced (`make paper-table{a.table}`)",
        "",
        f"Ours: `pe eval` of each run's best checkpoint (EMA where the recipe keeps one), on its validation split"
        f" ({rows[0].get('eval_images', '?')} images in the first row). Params of the registry model (1,000-class head) with and "
        f"without the head; GFLOPs = GMACs at the run's input size, the paper's convention. Paper: its printed numbers (— where it prints none).{short}",
        "",
        "| model | params (M) | w/o head | GFLOPs | acc@1 | acc@5 | EMA acc@1 | paper acc@1 | Δ acc@1 | "
        "paper acc@5 | paper params (M) | epochs | global batch | wall time | recipe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["paper"]
        if r["status"] != "finished":
            status = f"{r['status']}" + (f" (exit {r['exit']}, log {r['log']})" if r.get("exit") else "")
            lines.append(f"| {r['model']} | {r['params_m']:.1f} | {r['params_without_head_m']:.1f} | "
                         f"{r['gflops']:.2f} | {status} | | | {number(p['acc1'], '.1f')} | | {number(p['acc5'], '.1f')} | "
                         f"{number(p['params_m'], '.1f')} | | | {duration(r['wall_s'])} | {r['recipe']} |")
            continue
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f} | {r['params_without_head_m']:.1f} | {r['gflops']:.2f} | "
            f"{r['acc1']:.2f} | {r['acc5']:.2f} | {number(r.get('ema_acc1'), '.2f')} | {number(p['acc1'], '.1f')} | "
            f"{difference(r['acc1'], p['acc1'])} | {number(p['acc5'], '.1f')} | {number(p['params_m'], '.1f')} | "
            f"{r['epochs']} | {r['global_batch']} | {duration(r['wall_s'])} | {r['recipe']} |")
    return "\n".join(lines) + "\n"


def main():
    a = parse_args()
    driver = Driver(a)
    if a.list:
        for recipe, *_ in TABLES[a.table]:
            print(recipe, driver.run_name(recipe))
        return
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, driver.forward_signal)
    for recipe, *_ in ([] if a.report_only else TABLES[a.table]):
        stopped = driver.train(recipe)
        if stopped is not None:
            print(f"stopped by a signal: rerun the same command to continue ({driver.record_path})", flush=True)
            sys.exit(stopped)
    rows = [driver.row(*spec) for spec in TABLES[a.table]]
    text = markdown(a, rows)
    out = pathlib.Path(a.out or ROOT / "bench" / "results" / f"paper_table{a.table}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    failed = [r["recipe"] for r in rows if r["status"] != "finished"]
    if failed:
        print(f"not finished: {', '.join(failed)} (see {driver.record_path})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
