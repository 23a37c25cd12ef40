"""Training throughput on one GPU: Rust (`pe`) beside PyTorch eager on the same card, bf16 autocast and
channels_last, written as a table with the card's name (`make bench-gpu`).

    python bench/gpu_bench.py --pe target/release/pe --photos data/bench-photos \
        [--steps 30] [--warmup 10] [--out bench/results/gpu_<card>.md]

Two parts:

* Synthetic: one fixed random batch per model (ResNet50, ResNet50-PE at batch 256; DeiT-S, ViT-PE at 128),
  forward + backward + fused AdamW; `pe bench` against `bench/train_step.py`'s PyTorch step. Median
  step time after the warm-up (each step waits for the GPU), images/s and peak CUDA memory (the caching
  allocator's `max_memory_allocated` on both sides).
* Real JPEGs: the ResNet-50 recipe (RandomResizedCrop + flip, SGD) reading the bench-photos ImageFolder
  with every core decoding: `pe train experiments/resnet50.toml` against a torchvision ImageFolder +
  DataLoader loop (the torchvision reference script's train transforms, one worker process per core,
  pinned memory). The photo set is small, so it is repeated through symbolic links to make an epoch
  longer than the measurement (the page cache serves the files, as it would after ImageNet's first epoch).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchvision
from torchvision import transforms

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from train_step import TorchStep, torch_model  # noqa: E402

SYNTHETIC = [("resnet50", 256), ("resnet50_pe", 256), ("deit_small", 128), ("vit_pe_small", 128)]
IMG = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rust_synthetic(pe, name, batch, steps, warmup):
    cmd = [pe, "bench", "--model", name, "--batch", str(batch), "--img-size", str(IMG), "--device", "cuda",
           "--amp", "bf16", "--channels-last", "--steps", str(steps), "--warmup", str(warmup), "--format", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return record["ms_per_step"], record["cuda_peak_mb"]


def torch_synthetic(pe, name, batch, steps, warmup):
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    step = TorchStep(torch_model(pe, name, IMG), batch, IMG, "bf16", True, "cuda")
    for _ in range(warmup):
        step()
    median = statistics.median(step() for _ in range(steps))
    peak = torch.cuda.max_memory_allocated() / 2**20
    del step
    torch.cuda.empty_cache()
    return median, peak


def repeated_folder(photos, out, copies):
    """`out/{train,val}/<class>/` of symbolic links: each training photo `copies` times, one per class
    for validation. Returns the number of classes."""
    classes = sorted(d.name for d in (photos / "train").iterdir() if d.is_dir())
    for cls in classes:
        files = sorted((photos / "train" / cls).iterdir())
        for split, links in (("train", [(c, f) for c in range(copies) for f in files]), ("val", [(0, files[0])])):
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for copy, source in links:
                (folder / f"{copy:03}_{source.name}").symlink_to(source.resolve())
    return len(classes)


def rust_real(pe, root, classes, steps, skip, work):
    runs = work / "runs"
    cmd = [pe, "train", str(ROOT / "experiments" / "resnet50.toml"), "--name", "gpu-bench",
           "--set", f"data.root={json.dumps(str(root))}", "--set", f"model.num_classes={classes}",
           "--set", f"train.max_steps={steps}", "--set", "logging.every_steps=10",
           "--set", f"logging.runs_dir={json.dumps(str(runs))}", "--set", "logging.progress=false",
           "--set", 'train.device="cuda"']
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (runs / "gpu-bench" / "metrics.jsonl").read_text().splitlines()]
    perf = [r for r in records if r.get("type") == "perf" and r["step"] > skip]
    return (statistics.median(r["img_per_s"] for r in perf),
            statistics.median(r["data_wait_fraction"] for r in perf))


def torch_real(root, classes, steps, skip, workers):
    """The torchvision reference recipe's train loop for ResNet-50 with bf16 autocast and channels_last."""
    torch.backends.cudnn.benchmark = True
    preset = transforms.Compose([
        transforms.RandomResizedCrop(IMG), transforms.RandomHorizontalFlip(), transforms.PILToTensor(),
        transforms.ConvertImageDtype(torch.float), transforms.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), preset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True, num_workers=workers,
                                         pin_memory=True, drop_last=True, persistent_workers=True)
    model = torchvision.models.resnet50(num_classes=classes).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    waited, start, done = 0.0, None, 0
    batches = iter(loader)
    for step in range(1, steps + 1):
        asked = time.perf_counter()
        images, labels = next(batches)
        images = images.cuda(non_blocking=True).to(memory_format=torch.channels_last)
        labels = labels.cuda(non_blocking=True)
        if start is not None:
            waited += time.perf_counter() - asked
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == skip:
            torch.cuda.synchronize()
            start = time.perf_counter()
        elif step > skip:
            done += images.shape[0]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return done / seconds, waited / seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--photos", default=str(ROOT / "data" / "bench-photos"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--real-steps", type=int, default=80)
    parser.add_argument("--copies", type=int, default=64, help="times each photo is linked into the train set")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    card = torch.cuda.get_device_name()
    torch.backends.cudnn.benchmark = True
    lines = [
        f"Training throughput on one {card}, bf16 autocast + channels_last; torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores. Produced by `bench/gpu_bench.py` (`make bench-gpu`).",
        "",
        f"Synthetic batch (forward + backward + fused AdamW); median of {args.steps} steps after {args.warmup} "
        "warm-up, each step waiting for the GPU; peak = the caching allocator's max_memory_allocated.",
        "",
        "| model | batch | Rust img/s | PyTorch img/s | ratio Rust/PyTorch time | Rust peak MiB | PyTorch peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, batch in SYNTHETIC:
        rust_ms, rust_peak = rust_synthetic(args.pe, name, batch, args.steps, args.warmup)
        torch_ms, torch_peak = torch_synthetic(args.pe, name, batch, args.steps, args.warmup)
        row = (f"| {name} | {batch} | {batch * 1e3 / rust_ms:,.0f} | {batch * 1e3 / torch_ms:,.0f} | "
               f"**{rust_ms / torch_ms:.3f}** | {rust_peak:,.0f} | {torch_peak:,.0f} |")
        print(row, flush=True)
        lines.append(row)
    if not args.skip_real:
        skip = 20
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp)
            classes = repeated_folder(pathlib.Path(args.photos), work / "photos", args.copies)
            rust_ips, rust_wait = rust_real(args.pe, work / "photos", classes, args.real_steps, skip, work)
            torch_ips, torch_wait = torch_real(work / "photos", classes, args.real_steps, skip, args.workers)
        lines += [
            "",
            f"Real JPEGs (bench-photos, ~500x375, quality 90): ResNet-50 recipe, batch 256, RandomResizedCrop "
            f"224 + flip, SGD; steps {skip + 1}-{args.real_steps}; {args.workers} loader workers on each side.",
            "",
            "| side | img/s | share of time waiting for data |",
            "|---|---|---|",
            f"| Rust `pe train` | {rust_ips:,.0f} | {rust_wait:.1%} |",
            f"| PyTorch DataLoader + torchvision | {torch_ips:,.0f} | {torch_wait:.1%} |",
            f"| ratio Rust/PyTorch img/s | **{rust_ips / torch_ips:.2f}** | |",
        ]
        print("\n".join(lines[-4:]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
