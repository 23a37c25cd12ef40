"""Writes a tiny ImageNet in exactly the official archive formats, plus Kaggle's layout, for tests.

Usage: python make_imagenet_archives.py OUT [--extra-class]

OUT/ILSVRC2012_img_train.tar      tar of per-class tars (<wnid>.tar holding <wnid>_<n>.JPEG)
OUT/ILSVRC2012_img_val.tar        flat tar of ILSVRC2012_val_<8 digits>.JPEG
OUT/ILSVRC2012_devkit_t12.tar.gz  ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}
OUT/kaggle/                       LOC_synset_mapping.txt, LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/{train,val}
OUT/expected/                     the ImageFolder `pe prepare imagenet` must produce (train/<wnid>, val/<wnid>)

meta.mat is written by scipy like the real one: a struct array `synsets` with the devkit's eight
fields, leaves (num_children == 0) numbered ILSVRC2012_ID 1..n in wnid order, plus an internal node.
The validation split has no image of the second class (a class with no validation images).
"""

import io
import pathlib
import sys
import tarfile

import numpy as np
import scipy.io
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted, as in the real devkit
TRAIN_PER_CLASS = [4, 3, 5]
VAL_LABELS = [3, 1, 3, 1, 3, 1, 3]  # ILSVRC2012_IDs of val images 1..7: class 2 has none


def jpeg(seed, size=(48, 36)):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def synsets(wnids):
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    rows = []
    for i, w in enumerate(wnids):
        rows.append((float(i + 1), w, f"class {w}", "a test class", 0.0, np.zeros((1, 0)), 0.0, float(TRAIN_PER_CLASS[i % 3])))
    rows.append((float(len(wnids) + 1), "n00000001", "entity", "an internal node", 2.0, np.array([[1.0, 2.0]]), 5.0, 0.0))
    arr = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            arr[i, 0][f] = np.array([[v]]) if isinstance(v, float) else v
    return arr


def main(out, extra_class):
    out = pathlib.Path(out)
    expected = out / "expected"
    kaggle = out / "kaggle"
    cls_loc = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    train_wnids = WNIDS + (["n09999999"] if extra_class else [])
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in reversed(list(enumerate(train_wnids))):  # archive order need not be sorted
            inner_buf = io.BytesIO()
            with tarfile.open(fileobj=inner_buf, mode="w") as inner:
                for k in range(TRAIN_PER_CLASS[c % 3]):
                    name = f"{wnid}_{1000 + k}.JPEG"
                    data = jpeg(100 * c + k)
                    add(inner, name, data)
                    for root in (expected / "train", cls_loc / "train"):
                        (root / wnid).mkdir(parents=True, exist_ok=True)
                        (root / wnid / name).write_bytes(data)
            add(outer, f"{wnid}.tar", inner_buf.getvalue())
    (cls_loc / "val").mkdir(parents=True, exist_ok=True)
    solution = ["ImageId,PredictionString"]
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as val:
        for i, label in enumerate(VAL_LABELS, start=1):
            name = f"ILSVRC2012_val_{i:08d}.JPEG"
            data = jpeg(10_000 + i, size=(40 + i, 30))
            add(val, name, data)
            wnid = WNIDS[label - 1]
            (expected / "val" / wnid).mkdir(parents=True, exist_ok=True)
            (expected / "val" / wnid / name).write_bytes(data)
            (cls_loc / "val" / name).write_bytes(data)
            solution.append(f"{name[:-5]},{wnid} 1 2 30 20 {wnid} 3 4 10 10")
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets(WNIDS)})
    truth = "".join(f"{label}\n" for label in VAL_LABELS).encode()
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as devkit:
        add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
        add(devkit, "ILSVRC2012_devkit_t12/readme.txt", b"test devkit\n")
    (kaggle / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {w}\n" for w in WNIDS))
    (kaggle / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], "--extra-class" in sys.argv[2:])
