"""PyTorch side of the pe-torch benchmark (crates/pe-torch/examples/torch_bench.rs).

Measures the same things with torch 2.11 on the same machine: torch.optim AdamW/SGD with
fused=True and the single-tensor for-loop (foreach=False) on resnet50's and deit_small's parameter
sets, and the same small conv net's training step in fp32 / bf16 autocast / channels_last. With
--rust-json it prints the Rust numbers beside PyTorch's (ratio = Rust ms / PyTorch ms, <1 is faster).

    .venv/bin/python bench/torch/torch_bench.py [--quick] [--rust-json FILE] [--json FILE]
"""

import argparse
import json
import time

import torch
from torch import nn


def resnet50_shapes():
    s = [[64, 3, 7, 7], [64], [64]]
    inp = 64
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for b in range(blocks):
            cin = inp if b == 0 else 4 * width
            s += [[width, cin, 1, 1], [width], [width], [width, width, 3, 3], [width], [width]]
            s += [[4 * width, width, 1, 1], [4 * width], [4 * width]]
            if b == 0:
                s += [[4 * width, inp, 1, 1], [4 * width], [4 * width]]
        inp = 4 * width
    return s + [[1000, 2048], [1000]]


def deit_small_shapes():
    d = 384
    s = [[d, 3, 16, 16], [d], [1, 1, d], [1, 197, d]]
    for _ in range(12):
        s += [[d], [d], [3 * d, d], [3 * d], [d, d], [d], [d], [d], [4 * d, d], [4 * d], [d, 4 * d], [d]]
    return s + [[d], [d], [1000, d], [1000]]


def numel(shapes):
    n = 0
    for s in shapes:
        k = 1
        for x in s:
            k *= x
        n += k
    return n


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(device, warmup, iters, f):
    for _ in range(warmup):
        f()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]  # (median, min), as the Rust side


def optimizer_bench(device, iters, out):
    for model, shapes in [("resnet50", resnet50_shapes()), ("deit_small", deit_small_shapes())]:
        decay, no_decay = [], []
        for shape in shapes:
            p = (torch.randn(shape, device=device) * 0.02).requires_grad_(True)
            p.grad = torch.randn_like(p)
            (decay if len(shape) >= 2 and shape[0] != 1 else no_decay).append(p)

        def groups():
            # Fresh dicts per optimizer: torch.optim writes its defaults (fused/foreach too) into them.
            return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]

        print(f"  {model}: {len(shapes)} tensors, {numel(shapes)} parameters")
        for name, make in [
            ("adamw", lambda kw: torch.optim.AdamW(groups(), lr=1e-4, **kw)),
            ("sgd", lambda kw: torch.optim.SGD(groups(), lr=1e-4, momentum=0.9, **kw)),
        ]:
            row = {}
            for variant, kw in [("fused", {"fused": True}), ("foreach", {"foreach": True}), ("per_tensor", {"foreach": False})]:
                if variant == "foreach" and device.type == "cpu":
                    continue  # torch.optim only uses foreach kernels on accelerators
                opt = make(kw)
                med, mn = time_ms(device, 3, iters, opt.step)
                row[variant] = (med, mn)
                out.append({"device": dev_name(device), "bench": f"optim_{model}", "variant": f"{name}_{variant}",
                            "median_ms": med, "min_ms": mn})
            (f, fmin), (p, pmin) = row["fused"], row["per_tensor"]
            extra = f"   foreach {row['foreach'][0]:8.2f} ms" if "foreach" in row else ""
            print(f"    {name + '_fused':<14} {f:8.2f} ms/step (min {fmin:7.2f})   per-tensor {p:8.2f} ms (min {pmin:7.2f})"
                  f"{extra}   fused speed-up x{p / f:.2f} (min x{pmin / fmin:.2f})")


def conv_net():
    def conv(i, o, stride):
        return nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False)

    return nn.Sequential(
        conv(3, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
        conv(64, 128, 2), nn.BatchNorm2d(128), nn.ReLU(),
        conv(128, 256, 2), nn.BatchNorm2d(256), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10),
    )


def train_step_bench(device, iters, out):
    batch = 64 if device.type == "cpu" else 256
    print(f"  conv net, batch {batch}x3x32x32, fwd+bwd+fused AdamW:")
    base = None
    for name, amp, cl in [("fp32", False, False), ("bf16_autocast", True, False),
                          ("fp32_channels_last", False, True), ("bf16_channels_last", True, True)]:
        torch.manual_seed(0)
        net = conv_net().to(device)
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = net.to(memory_format=fmt)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        y = torch.randint(10, (batch,), device=device)

        def step():
            opt.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        med, mn = time_ms(device, 2, iters, step)
        base = base or (med, mn)
        print(f"    {name:<20} {med:8.2f} ms/step (min {mn:7.2f})   x{base[0] / med:.2f} vs fp32 (min x{base[1] / mn:.2f})")
        out.append({"device": dev_name(device), "bench": "train_step_convnet", "variant": name, "median_ms": med, "min_ms": mn})


def dev_name(device):
    return "Cpu" if device.type == "cpu" else f"Cuda({device.index or 0})"


def compare(rust, torch_rows):
    by_key = {(r["device"], r["bench"], r["variant"]): r for r in torch_rows}
    print("\nRust (pe-torch) vs PyTorch, same machine, same run; min over the timed steps "
          "(ratio = Rust / PyTorch, <1 = Rust faster):")
    print(f"  {'device':<8} {'bench':<22} {'variant':<22} {'rust ms':>10} {'torch ms':>10} {'ratio':>7}")
    for r in rust:
        t = by_key.get((r["device"], r["bench"], r["variant"]))
        ts = f"{t['min_ms']:10.2f} {r['min_ms'] / t['min_ms']:7.2f}" if t else f"{'-':>10} {'-':>7}"
        print(f"  {r['device']:<8} {r['bench']:<22} {r['variant']:<22} {r['min_ms']:10.2f} {ts}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rust-json")
    ap.add_argument("--json")
    args = ap.parse_args()
    assert numel(resnet50_shapes()) == 25_557_032 and numel(deit_small_shapes()) == 22_050_664
    torch.manual_seed(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])
    print(f"PyTorch {torch.__version__} bench: threads {torch.get_num_threads()}, CUDA devices {torch.cuda.device_count()}")
    rows = []
    for device in devices:
        opt_iters, step_iters = (3, 3) if args.quick else ((10, 10) if device.type == "cpu" else (50, 30))
        print(f"{dev_name(device)}: optimizer step, median of {opt_iters}")
        optimizer_bench(device, opt_iters, rows)
        print(f"{dev_name(device)}: training step, median of {step_iters}")
        train_step_bench(device, step_iters, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.rust_json:
        with open(args.rust_json) as f:
            compare(json.load(f), rows)


if __name__ == "__main__":
    main()
