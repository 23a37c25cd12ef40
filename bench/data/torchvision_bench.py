"""Reference side of the data-pipeline benchmark: torchvision DataLoader + PIL transforms (timm for DeiT).

Same files, transforms, worker count and batch size as `pipeline_bench` (pe-data). Output is uint8 CHW
on both sides (timm's prefetcher path: normalisation and random erasing happen on the GPU there, so
the PIL side here does strictly less work than ours in `train-deit`). One warm-up epoch, then timed
epochs; prints one JSON line.
"""

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def build(pipeline):
    if pipeline == "train-basic":
        return transforms.Compose([
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ])
    if pipeline == "train-deit":
        from timm.data import auto_augment, create_transform
        # Pillow >= 12 rejects posterize(bits=0), which timm's PosterizeIncreasing reaches when the
        # magnitude noise (mstd) pushes m to 10; older Pillow returned black. Restore that behaviour.
        def posterize(img, bits_to_keep, **_):
            if bits_to_keep >= 8:
                return img
            if bits_to_keep <= 0:
                return img.point([0] * 256 * len(img.getbands()))
            return auto_augment.ImageOps.posterize(img, bits_to_keep)
        for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
            auto_augment.NAME_TO_OP[name] = posterize
        # use_prefetcher=True: timm's fast path, PIL ops then uint8 tensor; RE is done later on device.
        return create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                interpolation="bicubic", re_prob=0.25, re_mode="pixel", color_jitter=0.0,
                                use_prefetcher=True)
    if pipeline == "eval":
        return transforms.Compose([
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.PILToTensor(),
        ])
    raise SystemExit(f"unknown pipeline {pipeline}")


def to_uint8_collate(batch):
    imgs = [torch.as_tensor(x if not hasattr(x, "shape") or x.ndim == 3 else x) for x, _ in batch]
    imgs = [x if x.dtype == torch.uint8 else x.to(torch.uint8) for x in imgs]
    return torch.stack(imgs), torch.tensor([y for _, y in batch])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("pipeline")
    ap.add_argument("workers", type=int)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(f"{a.root}/train", transform=build(a.pipeline))
    dl = DataLoader(ds, batch_size=a.batch, shuffle=a.pipeline != "eval", num_workers=a.workers,
                    persistent_workers=True, prefetch_factor=2, collate_fn=to_uint8_collate)
    for _ in dl:  # warm-up epoch: worker start-up, page cache
        pass
    n = 0
    start = time.perf_counter()
    for _ in range(a.epochs):
        for x, _y in dl:
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 224, 224), (x.dtype, x.shape)
            n += x.shape[0]
    secs = time.perf_counter() - start
    rate = n / secs
    print(json.dumps({"impl": "torchvision", "pipeline": a.pipeline, "workers": a.workers, "batch": a.batch,
                      "images": n, "seconds": round(secs, 3), "img_per_s": round(rate, 1),
                      "img_per_s_per_worker": round(rate / a.workers, 1)}))


if __name__ == "__main__":
    main()
