"""Local vs remote shards: the same `pe prepare shards` set read from the local disk, from a loopback
S3 server (moto) and from a loopback HTTP server, by `shards_bench` (crates/pe-data/examples), 1 and 2
decode workers. Writes a Markdown table of img/s per epoch and the remote/local ratio.

Usage: python bench/data/remote_shards.py --bench target/release/examples/shards_bench \
    --folder data/bench-photos --shards data/bench-photos-shards --out bench/results/shards_remote.md
"""

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from wds_servers import http_server, s3_server  # noqa: E402  (the servers the tests start)


def run(bench, folder, shards, workers, epochs, urls, env):
    command = [bench, folder, shards, "train-basic", str(workers), "64", str(epochs), *urls]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench", required=True)
    p.add_argument("--folder", required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    shards = pathlib.Path(a.shards)
    log_dir = pathlib.Path(a.out).parent
    rows = []
    with s3_server(log_dir) as s3, http_server(shards) as http:
        s3.create_bucket("bench")
        s3.upload("bench", shards, "shards")
        env = s3.environ()
        urls = ["s3://bench/shards", http.url]
        for workers in (1, 2):
            rows += run(a.bench, a.folder, a.shards, workers, a.epochs, urls, env)
    by = {}
    for r in rows:
        by.setdefault((r["workers"], r["format"]), []).append(r["img_per_s"])
    sizes = sum(f.stat().st_size for f in (shards / "train").glob("*.tar"))
    lines = [
        "# Local vs remote WebDataset shards: loader throughput on loopback",
        "",
        f"`bench/data/remote_shards.py` ({datetime.date.today()}): the {a.shards} train split "
        f"({len(list((shards / 'train').glob('*.tar')))} shards, {sizes / 2**20:.1f} MiB) read by "
        "`shards_bench train-basic` (RandomResizedCrop 224 + flip, batch 64) from the local disk "
        "(`format = \"shards\"`), from moto's S3 server (`s3://`, `format = \"webdataset\"`, counts from "
        "`_info.json`) and from a Python HTTP server (`http://`), both on 127.0.0.1 and started by the script. "
        f"One warm-up epoch, then {a.epochs} timed epochs per source, alternating. Machine: {os.cpu_count()} "
        "CPU cores shared with the servers themselves; differences below ~10 % are noise here.",
        "",
        "| workers | source | img/s per epoch | median | vs local shards |",
        "|---|---|---|---|---|",
    ]
    for (workers, source), rates in sorted(by.items()):
        local = statistics.median(by[(workers, "shards")])
        median = statistics.median(rates)
        lines.append(f"| {workers} | {source} | {', '.join(f'{r:.0f}' for r in rates)} | {median:.0f} | "
                     f"{median / local:.2f} |")
    text = "\n".join(lines) + "\n"
    pathlib.Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
