"""Inference time of the same weights in `pe` (`pe bench --infer`: the Rust model's eval forward on
libtorch), PyTorch eager (`pe_models`, the package's module of the model) and ONNX Runtime (the file
`python -m pe_models.export` writes), on the same machine with the same threads; writes a table with
the ratios, each side's peak RSS, and the exported files' sizes.

    python bench/infer.py [--pe target/release/pe] [--threads 1 2] [--amp off bf16] [--batches 1 32]
        [--models ...] [--steps 10] [--out bench/results/inference_cpu.md]

Each side runs in a fresh process of its own for every row, serving one forward per line it reads
(`pe bench --serve`, this script's `--serve torch|onnx`); the driver rotates which side goes first,
so a busy moment on the machine lands on all three. Medians are reported with the 10th-90th
percentile spread. ONNX Runtime's threads do not spin between runs (`allow_spinning = 0`): spinning,
they would take the cores the other sides are timed on. ONNX Runtime has no bf16 kernels for these graphs on the CPU: its bf16 rows run
the fp32 file, and say so.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from train_step import ServedStep, spread  # noqa: E402

#: (model, input side): the ImageNet models at 224, the Fashion-MNIST ones at 28.
MODELS = [("resnet50", 224), ("resnet50_pe", 224), ("deit_small", 224), ("vit_pe_small", 224),
          ("resnet_mini", 28), ("resnet_mini_pe", 28), ("vit_mini", 28), ("vit_pe_mini", 28)]
SIDES = ("pe", "torch", "onnx")


def serve_torch(args):
    import pe_models

    torch.set_num_threads(args.threads)
    model = pe_models.create_model(args.model, pretrained=args.weights).eval()
    x = torch.randn(args.batch, 3, args.img, args.img)

    def step():
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.amp == "bf16"):
            model(x)
        return (time.perf_counter() - start) * 1e3

    serve(step, args.warmup)


def serve_onnx(args):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    # ORT's threads otherwise busy-wait between runs, taking the cores the other sides run on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.img, args.img), dtype=np.float32)

    def step():
        start = time.perf_counter()
        session.run(None, {"input": x})
        return (time.perf_counter() - start) * 1e3

    serve(step, args.warmup)


def serve(step, warmup):
    """One timed call per line of stdin, as `pe bench --serve` does; the peak RSS at the end."""
    for _ in range(warmup):
        step()
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"ms": step()}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def prepare(args, name, img, workdir):
    """Random weights of `name` (the Rust initialisation), its ONNX file and TorchScript files."""
    weights = workdir / f"{name}.safetensors"
    subprocess.run([args.pe, "forward", "--model", name, "--save-weights", weights], check=True,
                   stdout=subprocess.DEVNULL)
    onnx = workdir / f"{name}.onnx"
    subprocess.run([sys.executable, "-m", "pe_models.export", weights, "--model", name, "--out", onnx,
                    "--img-size", str(img)], check=True, stdout=subprocess.DEVNULL)
    sizes = {"safetensors": weights.stat().st_size, "onnx": onnx.stat().st_size}
    for flag, key in (([], "torchscript"), (["--no-freeze"], "torchscript_unfrozen")):
        out = workdir / f"{name}.{key}.pt"
        subprocess.run([args.pe, "export", weights, "--model", name, "--format", "torchscript", "--out", out,
                        "--img-size", str(img), *flag], check=True, stdout=subprocess.DEVNULL)
        sizes[key] = out.stat().st_size
    return weights, onnx, sizes


def measure(args, name, img, batch, threads, amp, weights, onnx):
    common = ["--batch", str(batch), "--warmup", str(args.warmup), "--threads", str(threads)]
    sides = [
        ServedStep([args.pe, "bench", "--infer", "--model", name, "--img-size", str(img), "--amp", amp,
                    "--weights", weights, "--serve", "--format", "json", *common]),
        ServedStep([sys.executable, __file__, "--serve", "torch", "--model", name, "--weights", weights,
                    "--img", str(img), "--amp", amp, *common]),
        ServedStep([sys.executable, __file__, "--serve", "onnx", "--onnx", onnx, "--img", str(img), *common]),
    ]
    times = [[] for _ in sides]
    for i in range(args.steps):
        # Rotate which side goes first.
        for k in range(len(sides)):
            side = (i + k) % len(sides)
            times[side].append(sides[side]())
    rss = [side.finish()["peak_rss_mb"] for side in sides]
    return {"model": name, "img": img, "batch": batch, "threads": threads, "amp": amp,
            **{f"{s}_ms": spread(t) for s, t in zip(SIDES, times)}, **{f"{s}_rss": r for s, r in zip(SIDES, rss)}}


def markdown(rows, sizes, args):
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Inference on the CPU: pe vs PyTorch eager vs ONNX Runtime",
        "",
        f"`python bench/infer.py {' '.join(sys.argv[1:])}` on {cpu}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}. "
        f"{args.steps} timed forwards per side and row after {args.warmup} warm-up ones, interleaved; "
        "median (10th–90th percentile) ms per batch. ONNX Runtime runs fp32 on bf16 rows (no CPU bf16 kernels).",
        "",
        "| model | img | batch | threads | amp | pe ms | PyTorch ms | ORT ms | pe/ORT | pe/PyTorch | pe img/s | peak RSS MB pe / PyTorch / ORT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cell = lambda s: f"{r[s + '_ms'][0]:.2f} ({r[s + '_ms'][1]:.2f}–{r[s + '_ms'][2]:.2f})"
        pe, th, ort = (r[s + "_ms"][0] for s in SIDES)
        lines.append(
            f"| {r['model']} | {r['img']} | {r['batch']} | {r['threads']} | {r['amp']} | {cell('pe')} | {cell('torch')} "
            f"| {cell('onnx')} | {pe / ort:.2f} | {pe / th:.2f} | {r['batch'] * 1e3 / pe:.1f} "
            f"| {r['pe_rss']:.0f} / {r['torch_rss']:.0f} / {r['onnx_rss']:.0f} |")
    lines += ["", "Exported files (MB): the safetensors weights, ONNX, TorchScript frozen (BatchNorm folded; the "
              "default) and unfrozen (`--no-freeze`, ties kept).", "",
              "| model | safetensors | ONNX | TorchScript frozen | TorchScript unfrozen |", "|---|---|---|---|---|"]
    for name, s in sizes.items():
        mb = lambda k: f"{s[k] / 1e6:.1f}"
        lines.append(f"| {name} | {mb('safetensors')} | {mb('onnx')} | {mb('torchscript')} | {mb('torchscript_unfrozen')} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pe", default=str(ROOT / "target" / "release" / "pe"))
    parser.add_argument("--models", nargs="*", default=[m for m, _ in MODELS])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--amp", nargs="*", choices=["off", "bf16"], default=["off", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None)
    served = parser.add_argument_group("--serve torch|onnx: one side of one row (run by the driver)")
    served.add_argument("--serve", choices=["torch", "onnx"])
    served.add_argument("--model")
    served.add_argument("--weights")
    served.add_argument("--onnx")
    served.add_argument("--img", type=int)
    served.add_argument("--batch", type=int)
    args = parser.parse_args()
    if args.serve:
        args.threads, args.amp = args.threads[0], args.amp[0]
        return serve_torch(args) if args.serve == "torch" else serve_onnx(args)
    sides = dict(MODELS)
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            img = sides[name]
            weights, onnx, sizes[name] = prepare(args, name, img, pathlib.Path(tmp))
            for threads in args.threads:
                for amp in args.amp:
                    for batch in args.batches:
                        rows.append(measure(args, name, img, batch, threads, amp, weights, onnx))
                        r = rows[-1]
                        print(f"{name} b{batch} t{threads} {amp}: pe {r['pe_ms'][0]:.2f} torch {r['torch_ms'][0]:.2f} "
                              f"ort {r['onnx_ms'][0]:.2f} ms", file=sys.stderr, flush=True)
    text = markdown(rows, sizes, args)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
