"""Export a trained (or any) registry model to ONNX, verified by onnxruntime, with a JSON sidecar
saying what the file expects and where its weights came from.

    python -m pe_models.export runs/fmnist_vit_pe_mini --out vit_pe_mini.onnx
    python -m pe_models.export runs/X --out x.onnx --ema --img-size 56 --batch 8
    python -m pe_models.export w.safetensors --model vit_pe_small --out vit_pe_small.onnx

The graph takes `input` [B, 3, H, W] float32, already normalised (the sidecar's `preprocessing`),
and returns `logits` [B, num_classes]; the batch axis is dynamic unless `--batch N` fixes it.

**Exporter.** The default is torch's TorchScript-based exporter (`torch.onnx.export(...,
dynamo=False)`) with constant folding off. In torch 2.11 (the version tch 0.24 pins for this
workspace) both of torch's exporters export every registry model, and onnxruntime reproduces
them to ~1e-6 (ResNet-50: ~4e-5, the fp32 noise torch itself has against float64); this one needs
only the `onnx` package and takes 0.3-2 s a model where the `torch.export`-based one (`dynamo=True`,
which also needs `onnxscript`) takes 4-16 s (23 s against 155 s for the 17 registry models on a
2-core machine). Constant folding would store each tied `Wᵀ` as a second copy of `W`
(vit_pe_small: 88 MB instead of 46 MB), undoing in the file the sharing a PE model is about;
unfolded, the file stores `W` once and transposes it in the graph, as the dynamo exporter does.
torch deprecates the TorchScript exporter since 2.9, so `--exporter dynamo` is here and tested
too, for a torch that drops it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .config import VitConfig
from .factory import INIT_KEYS, build, load
from .preprocessing import Preprocessing

INPUT, OUTPUT = "input", "logits"
#: The largest max |logits - PyTorch| the export accepts from onnxruntime (relative above 1).
DEFAULT_ATOL = 1e-4
EXPORTERS = ("torchscript", "dynamo")
#: The newest opset torch 2.11's TorchScript exporter implements (`torch.onnx._constants`).
TORCHSCRIPT_MAX_OPSET = 20


class ExportError(RuntimeError):
    """An export that failed, or whose file onnxruntime does not run as PyTorch does."""


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       prefix_tokens: int = 1) -> torch.Tensor:
    """A position embedding for another patch grid, as timm's `resample_abs_pos_embed` makes it
    (and the Rust `pretrained` loader): the prefix (class) token kept, the grid resampled
    bicubically with antialiasing (timm's default), in float32: [1, P + h·w, C] -> [1, P + H·W, C]."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    dim = grid.shape[-1]
    # [1, h·w, C] -> [1, C, h, w] -> [1, C, H, W] -> [1, H·W, C]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def at_img_size(model: nn.Module, size: int) -> nn.Module:
    """`model` for `size`-px inputs: a ViT rebuilt at that size with its position embedding
    resampled; a ResNet as it is (it takes any size). The result is in eval mode."""
    config = model.config
    if not isinstance(config, VitConfig) or size == config.img_size:
        return model.eval()
    if size % config.patch_size:
        raise ExportError(f"--img-size {size} is not a multiple of the ViT's patch size {config.patch_size}")
    resized = build(config.replace(img_size=size))
    state = model.state_dict()
    old, new = config.img_size // config.patch_size, size // config.patch_size
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (new, new), (old, old))
    resized.load_state_dict(state, strict=True)
    for name in ("preprocessing", "pretrained_cfg"):
        if hasattr(model, name):
            setattr(resized, name, getattr(model, name))
    return resized.eval()


def export_onnx(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ema: bool = False,
    model: Any = None,
    img_size: int | None = None,
    batch: int | None = None,
    opset: int | None = None,
    exporter: str = "torchscript",
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    log=print,
) -> dict[str, Any]:
    """Exports the model `source` names (what `pe_models.load` takes; `model` as there) to `out`
    and writes `out + ".json"`; returns that sidecar. `batch=None` makes the batch axis dynamic.
    With onnxruntime installed (and `verify`), the file's logits on a random batch must be within
    `atol` of PyTorch's (relative where they exceed 1, see `verify_onnx`), else `ExportError`, and
    neither file is left behind."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if batch is not None and batch < 1:
        raise ExportError(f"a fixed batch must be positive, got {batch}")
    if img_size is not None and img_size < 1:
        raise ExportError(f"--img-size must be positive, got {img_size}")
    if exporter == "torchscript" and opset is not None and opset > TORCHSCRIPT_MAX_OPSET:
        # torch would only warn, and write a file that claims an opset its ops were not made for.
        raise ExportError(f"the TorchScript exporter writes opsets up to {TORCHSCRIPT_MAX_OPSET}, not {opset}: "
                          "use --exporter dynamo for newer ones")
    out = Path(out)
    resolved = checkpoints.resolve(source, ema)
    net = load(source, ema=ema, model=model)
    config = net.config
    if img_size is None:  # a ViT's own size; a ResNet's from its recipe's [data]
        img_size = config.img_size if isinstance(config, VitConfig) else net.preprocessing.input_size[-1]
    size = img_size
    net = at_img_size(net, size)
    channels = net.config.in_channels
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").unlink(missing_ok=True)  # a sidecar describes only a file that passed
    example = torch.randn(batch or 2, channels, size, size, generator=torch.Generator().manual_seed(0))
    _export(net, example, out, dynamic=batch is None, opset=opset, exporter=exporter)
    if verify:
        # Another batch than the traced one (of another size when the axis is dynamic).
        check = torch.randn(batch or 3, channels, size, size, generator=torch.Generator().manual_seed(1))
        try:
            verified = verify_onnx(out, net, check, atol)
        except ExportError:
            out.unlink(missing_ok=True)
            raise
        if verified is None:
            log("onnxruntime is not installed: the file was not verified (pip install onnxruntime)")
        else:
            log(f"verified with onnxruntime (CPU): max |logits - PyTorch| = {verified[0]:.3g} (allowed "
                f"{verified[1]:.3g}) on a random batch of {check.shape[0]} at {size} px")
    preprocessing = dataclasses.replace(net.preprocessing, input_size=(channels, size, size))
    info = sidecar(out, net.config.to_dict(), _classes(resolved), preprocessing, batch, resolved.file, ema)
    Path(f"{out}.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {out} and {out}.json")
    return info


def _export(net: nn.Module, example: torch.Tensor, out: Path, *, dynamic: bool, opset: int | None,
            exporter: str) -> None:
    names = dict(input_names=[INPUT], output_names=[OUTPUT], opset_version=opset)
    try:
        import onnx  # noqa: F401  (torch's exporters write the file through it)
    except ImportError as error:
        raise ExportError("exporting needs the onnx package: pip install 'pe-models[onnx]'") from error
    with torch.no_grad():
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError as error:
                raise ExportError("--exporter dynamo needs onnxscript (pip install onnxscript)") from error
            # One file (every model here is far below protobuf's 2 GB), the batch axis symbolic.
            shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
            torch.onnx.export(net, (example,), str(out), dynamo=True, external_data=False,
                              dynamic_shapes=shapes, **names)
            return
        axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic else None
        with warnings.catch_warnings():
            # The exporter chosen on purpose (module doc); torch's note that it is the legacy one.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            # do_constant_folding=False: folding would store each tied Wᵀ as a second copy of W.
            torch.onnx.export(net, (example,), str(out), dynamo=False, do_constant_folding=False,
                              dynamic_axes=axes, **names)


def verify_onnx(path: str | os.PathLike, net: nn.Module, x: torch.Tensor,
                atol: float = DEFAULT_ATOL) -> tuple[float, float] | None:
    """Runs `path` in onnxruntime (CPU) and `net` on `x`: (max |logits difference|, the largest
    allowed), or None when onnxruntime is not installed; an `ExportError` above the allowed.

    Allowed is `atol` on logits of magnitude ≤ 1 and `atol` relative to larger ones, as `pe export`
    checks its TorchScript files: random weights can give a deep ResNet logits of 1e9, where fp32
    rounding alone differs by far more than 1e-4."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT], {INPUT: x.numpy()})
    with torch.no_grad():
        expected = net.eval()(x).double()
    got = torch.from_numpy(logits).double()
    if got.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime gives logits of shape {list(got.shape)}, "
                          f"PyTorch {list(expected.shape)}")
    diff = (got - expected).abs().max().item()
    allowed = atol * max(1.0, expected.abs().max().item())
    if not diff <= allowed:  # also NaN
        raise ExportError(
            f"{path}: onnxruntime's logits differ from PyTorch's by up to {diff:.3g} (> {allowed:.3g}) on a "
            f"random batch of {x.shape[0]}; the export is wrong, so the file was removed"
        )
    return diff, allowed


def sidecar(out: Path, model: dict[str, Any], classes: list[str] | None, preprocessing: Preprocessing,
            batch: int | None, weights: Path, ema: bool) -> dict[str, Any]:
    """What `FILE.onnx.json` holds; the Rust `pe export` writes the same keys for its formats."""
    channels, height, width = preprocessing.input_size
    return {
        "format": "onnx",
        "file": out.name,
        "model": {k: v for k, v in model.items() if k not in INIT_KEYS},
        "classes": classes,
        "input": {"name": INPUT, "shape": [batch, channels, height, width], "dtype": "float32", "layout": "NCHW",
                  "normalised": True},
        "output": {"name": OUTPUT, "shape": [batch, model["num_classes"]]},
        "preprocessing": {
            "input_size": [channels, height, width],
            "resize_size": preprocessing.resize_size,
            "crop_pct": preprocessing.crop_pct,
            "crop_mode": "center",
            "interpolation": preprocessing.interpolation,
            "mean": list(preprocessing.mean),
            "std": list(preprocessing.std),
        },
        "source": {"weights": os.path.abspath(weights), "ema": ema},
    }


def _classes(source: checkpoints.Source) -> list[str] | None:
    """The class names a checkpoint's `identity.json` recorded (a bare file records none)."""
    if source.recipe is None:
        return None
    identity = source.file.parent / checkpoints.IDENTITY
    if not identity.is_file():
        return None
    classes = json.loads(identity.read_text()).get("dataset", {}).get("classes")
    return list(classes) if classes is not None else None


def _batch(text: str) -> int | None:
    if text == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a fixed batch must be positive, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pe_models.export",
        description="Export a pe model to ONNX (input `input` [B, 3, H, W] normalised, output `logits`), "
                    "verified with onnxruntime when it is installed, and write FILE.onnx.json beside it.")
    parser.add_argument("source", help="a run folder, a checkpoint folder, or a .safetensors file (with --model)")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--ema", action="store_true", help="the checkpoint's EMA weights")
    parser.add_argument("--model", help="a registry name or a config JSON file (needed for a bare .safetensors)")
    parser.add_argument("--img-size", type=int, help="input side; a ViT's position embedding is resampled to it")
    parser.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                        help="a dynamic batch axis (default) or a fixed batch size")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20 in torch 2.11)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="torch's TorchScript-based exporter (default) or the torch.export one (needs onnxscript)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"largest accepted max |logits - PyTorch| from onnxruntime, relative to logits "
                             f"above 1 (default {DEFAULT_ATOL:g})")
    args = parser.parse_args(argv)
    try:
        export_onnx(args.source, args.out, ema=args.ema, model=args.model, img_size=args.img_size,
                    batch=args.batch, opset=args.opset, exporter=args.exporter, atol=args.atol)
    except (ExportError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
