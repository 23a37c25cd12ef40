"""Make the decode/pipeline benchmark set: real photographs at ImageNet-typical sizes, JPEG quality 90.

The photographs are the colour (and a few grayscale) sample images scikit-image ships. Each output file is
a random crop of one of them (random aspect ratio and zoom, random horizontal flip), re-scaled so that its
longer side is 500 px (ImageNet's typical ~500x375 / 375x500), and encoded by Pillow at quality 90 with
4:2:0 chroma subsampling, like most of ImageNet. The set is an ImageFolder (`<out>/train/<photo>/*.JPEG`)
so both our loader and torchvision's ImageFolder read the same files. Deterministic given --seed;
idempotent (a marker file is written last, a complete set is left alone).
"""

import argparse
import os
import shutil

import numpy as np
from PIL import Image
from skimage import data as skdata

# (name, loader); the grayscale ones exercise the 1-channel -> 3-channel path (~1 in 10 files here).
COLOUR = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry"]
GRAY = ["camera", "moon"]


def sources():
    out = []
    for name in COLOUR:
        out.append((name, np.asarray(getattr(skdata, name)())))
    for side in ("left", "right"):
        left, right, _disp = skdata.stereo_motorcycle()
        out.append((f"motorcycle_{side}", np.asarray(left if side == "left" else right)))
    for name in GRAY:
        out.append((name, np.asarray(getattr(skdata, name)())))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/bench-photos")
    ap.add_argument("--n", type=int, default=1200, help="number of files (>= 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--long-side", type=int, default=500)
    args = ap.parse_args()

    marker = os.path.join(args.out, ".complete")
    if os.path.exists(marker) and open(marker).read().strip() == f"{args.n} {args.seed} {args.long_side}":
        print(f"{args.out}: complete ({args.n} files)")
        return
    if os.path.exists(args.out):
        shutil.rmtree(args.out)

    rng = np.random.default_rng(args.seed)
    srcs = sources()
    total_bytes = 0
    for i in range(args.n):
        name, arr = srcs[i % len(srcs)]
        img = Image.fromarray(arr)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        w, h = img.size
        # A crop covering 50-100% of the shorter side, aspect 3:4 .. 4:3 (landscape 3 times in 4).
        aspect = 4 / 3 if rng.random() < 0.75 else 3 / 4
        aspect *= float(np.exp(rng.uniform(np.log(0.9), np.log(1.1))))
        frac = rng.uniform(0.5, 1.0)
        cw = min(w, int(round(min(w, h) * frac * max(aspect, 1.0))))
        ch = min(h, int(round(cw / aspect)))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        crop = img.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = args.long_side / max(cw, ch)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        crop = crop.resize(size, Image.Resampling.LANCZOS)
        d = os.path.join(args.out, "train", name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{i:05d}.JPEG")
        crop.save(path, quality=90, subsampling="4:2:0")
        total_bytes += os.path.getsize(path)
    with open(marker, "w") as f:
        f.write(f"{args.n} {args.seed} {args.long_side}\n")
    print(f"{args.out}: wrote {args.n} files, {total_bytes / args.n / 1024:.1f} KiB mean")


if __name__ == "__main__":
    main()
