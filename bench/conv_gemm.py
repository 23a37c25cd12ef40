"""1×1 convolutions over small maps: libtorch's conv2d against the same product as one GEMM, on CPU.

Usage: python bench/conv_gemm.py [--threads N] [--out bench/results/conv_gemm.md]

Why: pe-layers' `Conv` and `StageShared` run convolutions whose output maps have at most
`GEMM_MAX_PIXELS` (16) pixels as matrix products on the CPU. This measures where that pays, on the
shapes of ResNet-50's bottlenecks (batch 128 at 32 px, batch 16 at 224 px), forward + backward
(input and weight gradients), in fp32 (NCHW and channels_last) and bf16 autocast + channels_last.
Both forms are PyTorch calls in one process, so the ratio is the kernels', not the language's.
"""

import argparse
import contextlib
import pathlib
import time

import torch

# (batch, in channels, out channels, map side)
SHAPES = [(128, 2048, 512, 1), (128, 1024, 256, 2), (128, 256, 1024, 2), (128, 512, 128, 4), (128, 256, 64, 8),
          (16, 2048, 512, 7), (16, 1024, 256, 14), (16, 256, 64, 56), (16, 64, 256, 56)]
MODES = [("fp32", False), ("fp32", True), ("bf16", True)]


def timed(f, iters):
    for _ in range(2):
        f()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def row(batch, c_in, c_out, side, amp, channels_last, iters):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, c_in, side, side).to(memory_format=layout).requires_grad_()
    weight = torch.randn(c_out, c_in, 1, 1, requires_grad=True)
    upstream = torch.randn(batch, c_out, side, side).to(memory_format=layout)

    def region():
        return torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()

    def conv():
        with region():
            out = torch.nn.functional.conv2d(x, weight)
        out.backward(upstream)

    def gemm():
        # What pe-layers does: channels-last pixels as rows, NCHW images as [C, H·W] columns.
        with region():
            if channels_last or side == 1:
                rows = x.permute(0, 2, 3, 1).reshape(-1, c_in)
                out = torch.nn.functional.linear(rows, weight.flatten(1)).view(batch, side, side, c_out)
                out = out.permute(0, 3, 1, 2)
            else:
                out = weight.flatten(1).matmul(x.reshape(batch, c_in, side * side)).view(batch, c_out, side, side)
        out.backward(upstream)

    return timed(conv, iters), timed(gemm, iters)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=9)
    parser.add_argument("--out", default="bench/results/conv_gemm.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# 1×1 convolution vs the same GEMM (forward + backward, CPU)",
        "",
        f"torch {torch.__version__}, {args.threads} threads, median of {args.iters}; `bench/conv_gemm.py`. "
        "pe-layers runs maps of at most 16 output pixels as GEMMs (`GEMM_MAX_PIXELS`).",
        "",
        "| batch | C in → out | map | mode | conv2d ms | GEMM ms | GEMM / conv |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, c_in, c_out, side in SHAPES:
        for amp, channels_last in MODES:
            conv_ms, gemm_ms = row(batch, c_in, c_out, side, amp, channels_last, args.iters)
            mode = f"{amp} {'channels_last' if channels_last else 'NCHW'}"
            line = (f"| {batch} | {c_in} → {c_out} | {side}×{side} | {mode} | {conv_ms:.2f} | {gemm_ms:.2f} | "
                    f"{gemm_ms / conv_ms:.2f} |")
            print(line, flush=True)
            lines.append(line)
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
