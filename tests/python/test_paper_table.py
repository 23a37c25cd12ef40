"""`make paper-table1/2` (bench/paper_table.py) end to end on a generated ImageFolder, with overrides that
make each ImageNet recipe a few steps at 32 px: every recipe trains, a stop signal checkpoints the run in
progress and a rerun resumes it, finished runs are skipped, a failed run is reported and not retried
unless asked, and the table's numbers are those `pe eval` and `pe summary` give for the runs."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import PE, ROOT, make_image_folder

SCRIPT = ROOT / "bench" / "paper_table.py"
#: 3 classes × 6 images, batch 4: 4 steps per epoch; every step logged and checkpointed.
SMALL = ["model.num_classes=3", 'train.device="cpu"', "train.batch_size=4", "train.threads=1", "eval.batch_size=6",
         "data.img_size=32", "data.workers=1", "schedule.warmup_epochs=0", "train.checkpoint_every_steps=1",
         "logging.every_steps=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-table-data")
    make_image_folder(root, classes=3, per_class=6, side=40, val_per_class=2)
    return root


def command(table, data, runs, *extra, epochs=2):
    sets = SMALL + (["model.img_size=32"] if table == 1 else [])
    args = [sys.executable, str(SCRIPT), "--table", str(table), "--pe", PE, "--data", str(data), "--epochs",
            str(epochs), "--runs-dir", str(runs), "--out", str(runs / f"table{table}")]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


def run(args, ok=True):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if ok and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def train_steps(run_dir):
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if '"type":"train"' in line.replace(" ", ""))


def wait_for_steps(process, run_dir, steps):
    """Waits until `run_dir` logged `steps` training steps, failing if `process` ends first."""
    deadline = time.monotonic() + 300
    while train_steps(run_dir) < steps:
        assert process.poll() is None, f"{process.args} ended early:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{run_dir.name} never reached step {steps}"
        time.sleep(0.02)


def pe_json(*args):
    return json.loads(subprocess.run([PE, *map(str, args)], check=True, capture_output=True, text=True).stdout)


def test_table2_trains_every_recipe_resumes_after_a_stop_and_reports_what_pe_eval_measures(data, tmp_path):
    runs = tmp_path / "runs"
    # A run folder with a damaged checkpoint: `pe train` refuses it, so that row fails.
    poisoned = runs / "resnet50_matched-2ep"
    (poisoned / "checkpoints" / "step-000000001").mkdir(parents=True)
    (poisoned / "checkpoints" / "step-000000001" / "state.json").write_text("not json")

    driver = subprocess.Popen(command(2, data, runs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(driver, runs / "resnet34-2ep", 2)
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 143, f"a stop signal ends the driver with the run's code:\n{out}"
    record = json.loads((runs / "paper_table.json").read_text())
    assert record["resnet18-2ep"]["status"] == "finished"
    assert record["resnet34-2ep"]["status"] == "stopped", record
    assert "resnet50-2ep" not in record, "nothing after the stopped run was started"
    assert (runs / "resnet34-2ep" / "checkpoints").is_dir()

    again = run(command(2, data, runs), ok=False)
    assert again.returncode == 1, f"a failed row makes the table incomplete:\n{again.stdout}\n{again.stderr}"
    assert "resnet18-2ep: finished, skipped" in again.stdout
    assert "resnet34-2ep: training (resuming)" in again.stdout
    assert "resumed from" in (runs / "logs" / "resnet34-2ep.log").read_text()
    record = json.loads((runs / "paper_table.json").read_text())
    failed = record["resnet50_matched-2ep"]
    assert failed["status"] == "failed" and failed["exit"] not in (0, 130, 143), failed
    table = (runs / "table2.md").read_text()
    assert "failed (exit" in table, table

    third = run(command(2, data, runs), ok=False)
    assert "resnet50_matched-2ep: failed before" in third.stdout, "a failed run is not retried unasked"
    assert json.loads((runs / "paper_table.json").read_text())["resnet50_matched-2ep"]["attempts"] == 1

    shutil.rmtree(poisoned)
    run(command(2, data, runs, "--retry-failed"))
    rows = {r["recipe"]: r for r in json.loads((runs / "table2.json").read_text())}
    assert list(rows) == ["resnet18", "resnet34", "resnet50", "resnet50_pe_all", "resnet50_pe_stage34",
                          "resnet50_matched"]
    assert all(r["status"] == "finished" for r in rows.values()), rows
    row = rows["resnet50_pe_stage34"]
    measured = pe_json("eval", runs / "resnet50_pe_stage34-2ep", "--format", "json")["evaluations"][0]
    assert (row["acc1"], row["acc5"], row["eval_images"]) == (measured["acc1"], measured["acc5"], 6)
    summary = pe_json("summary", "--model", "resnet50_pe_stage34", "--img-size", 32, "--format", "json")
    assert row["params_m"] == summary["params"] / 1e6 and row["gflops"] == summary["macs"] / 1e9
    assert (row["epochs"], row["global_batch"], row["paper"]["acc1"]) == (2, 4, 75.1)
    table = (runs / "table2.md").read_text()
    assert "| ResNet50-PE² (stages 3-4) | 18.1 | 16.0 |" in table, table
    assert f"| {row['acc1']:.2f} | {row['acc5']:.2f} | — | 75.1 | {row['acc1'] - 75.1:+.1f} | 92.8 |" in table, table
    assert "Short schedule: 2 epoch(s)" in table


def test_table1_trains_the_vit_family_and_prints_the_papers_numbers(data, tmp_path):
    runs = tmp_path / "runs"
    result = run(command(1, data, runs, epochs=1))
    rows = json.loads((runs / "table1.json").read_text())
    assert [r["recipe"] for r in rows] == ["deit_tiny_300e", "deit_small_300e", "vit_pe_300e", "vit_pe_600e",
                                           "vit_small_matched_300e"]
    assert all(r["status"] == "finished" and r["eval_images"] == 6 for r in rows), rows
    assert [r["paper"]["acc1"] for r in rows] == [72.2, 79.9, 77.3, 78.8, None]
    assert "| ViT-PE² (600 ep) | 11.4 | 11.0 |" in result.stdout, result.stdout


def test_make_passes_nproc_data_epochs_and_set_through():
    dry = subprocess.run(["make", "-n", "paper-table2", "NPROC=8", "DATA=/data/imagenet", "EPOCHS=10",
                          "SET=train.amp=true eval.batch_size=128"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "MAKEFLAGS": ""}, check=True).stdout
    line = next(l for l in dry.splitlines() if "paper_table.py" in l)
    for part in ["--table 2", "--nproc 8", "--data /data/imagenet", "--epochs 10", "--set train.amp=true",
                 "--set eval.batch_size=128"]:
        assert part in line, line


def test_the_slurm_array_task_trains_its_row_checkpoints_on_usr1_requeues_and_resumes(data, tmp_path):
    """bench/slurm/paper_table.sbatch with stand-ins for `srun` (runs the step here) and `scontrol`
    (records the requeue): SLURM's early USR1 to the batch script stops the step at a checkpoint."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\nif [ "$1" = show ]; then echo localhost; '
                                      f'else echo "$@" >> {tmp_path / "scontrol.log"}; fi\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    runs = tmp_path / "runs"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TABLE": "2", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_ID": "78", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost",
           "GPUS_PER_NODE": "1", "RUNS_DIR": str(runs), "DATA": str(data), "EPOCHS": "2", "SET": " ".join(SMALL),
           "PE": PE, "PYTHON": sys.executable, "OUT": str(tmp_path / "table2")}
    script = ["bash", str(ROOT / "bench" / "slurm" / "paper_table.sbatch")]
    task = subprocess.Popen(script, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(task, runs / "resnet18-2ep", 2)
    task.send_signal(signal.SIGUSR1)
    out, _ = task.communicate(timeout=120)
    assert task.returncode == 0, out
    assert "requeueing" in out, out
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "77_0"]
    steps = train_steps(runs / "resnet18-2ep")
    assert 2 <= steps < 8, f"stopped inside the run: {steps} of 8 steps"

    requeued = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    assert "resumed from" in requeued.stdout, requeued.stdout
    report = subprocess.run(script + ["report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 1, "the other rows are not trained yet"
    assert "| ResNet18 | 11.7 |" in report.stdout and "| new |" in report.stdout, report.stdout
    assert (tmp_path / "table2.md").read_text() in report.stdout, "the table went to OUT, not bench/results"
