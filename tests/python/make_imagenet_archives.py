"""Writes a tiny ImageNet in exactly the official archive formats, plus Kaggle's layout, for tests.

Usage: python make_imagenet_archives.py OUT [--extra-class] [--meta-numbers CLASS] [--meta-fault FAULT]

OUT/ILSVRC2012_img_train.tar      tar of per-class tars (<wnid>.tar holding <wnid>_<n>.JPEG)
OUT/ILSVRC2012_img_val.tar        flat tar of ILSVRC2012_val_<8 digits>.JPEG
OUT/ILSVRC2012_devkit_t12.tar.gz  ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}
OUT/kaggle/                       LOC_synset_mapping.txt, LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/{train,val}
OUT/expected/                     the ImageFolder `pe prepare imagenet` must produce (train/<wnid>, val/<wnid>)

meta.mat is written by scipy like the real one: a struct array `synsets` with the devkit's eight
fields, leaves (num_children == 0) numbered ILSVRC2012_ID 1..n in an order that is not the wnids'
sorted order (as in the real devkit, where ID 1 is n02119789), plus an internal node. The validation
split has no image of the second class by sorted wnid (a class with no validation images).

--meta-numbers stores the numeric fields as that numpy class (`int64`, `uint8`: what a re-save from
numpy/scipy gives) instead of MATLAB's double. --meta-fault writes a malformed meta.mat:
`no-num-children` (a synset without that field), `text-id` (ILSVRC2012_ID stored as text),
`no-synsets` (another variable name), `truncated` (the file cut in half).
"""

import argparse
import io
import pathlib
import sys
import tarfile

import numpy as np
import scipy.io
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted
ILSVRC2012_IDS = [2, 3, 1]  # ILSVRC2012_ID of each sorted wnid: not in sorted order, as in the real devkit
TRAIN_PER_CLASS = [4, 3, 5]
VAL_LABELS = [1, 2, 1, 2, 1, 2, 1]  # ILSVRC2012_IDs of val images 1..7: n01443537 (ID 3) has none
WNID_OF_ID = {i: w for w, i in zip(WNIDS, ILSVRC2012_IDS)}


def words(wnid):
    """A synset's `words`: several names, comma-separated, as in the real devkit ("tench, Tinca tinca")."""
    return f"class {wnid}, a test"


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


def synsets(wnids, numbers, fault):
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    if fault == "no-num-children":
        fields.remove("num_children")
    rows = []
    for i, w in enumerate(wnids):
        rows.append({"ILSVRC2012_ID": float(ILSVRC2012_IDS[i]), "WNID": w, "words": words(w), "gloss": "a test class",
                     "num_children": 0.0, "children": np.zeros((1, 0)), "wordnet_height": 0.0,
                     "num_train_images": float(TRAIN_PER_CLASS[i % 3])})
    rows.append({"ILSVRC2012_ID": float(len(wnids) + 1), "WNID": "n00000001", "words": "entity", "gloss": "an internal node",
                 "num_children": 2.0, "children": np.array([[1.0, 2.0]]), "wordnet_height": 5.0, "num_train_images": 0.0})
    if fault == "text-id":
        rows[0]["ILSVRC2012_ID"] = "2"
    arr = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            v = row[f]
            arr[i, 0][f] = np.array([[v]], dtype=numbers) if isinstance(v, float) else v
    return arr


def meta_mat(numbers, fault):
    buf = io.BytesIO()
    name = "synset_list" if fault == "no-synsets" else "synsets"
    scipy.io.savemat(buf, {name: synsets(WNIDS, numbers, fault)})
    data = buf.getvalue()
    return data[: len(data) // 2] if fault == "truncated" else data


def main(out, extra_class, numbers, fault):
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
            wnid = WNID_OF_ID[label]
            (expected / "val" / wnid).mkdir(parents=True, exist_ok=True)
            (expected / "val" / wnid / name).write_bytes(data)
            (cls_loc / "val" / name).write_bytes(data)
            solution.append(f"{name[:-5]},{wnid} 1 2 30 20 {wnid} 3 4 10 10")
    truth = "".join(f"{label}\n" for label in VAL_LABELS).encode()
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as devkit:
        add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(numbers, fault))
        add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
        add(devkit, "ILSVRC2012_devkit_t12/readme.txt", b"test devkit\n")
    (kaggle / "LOC_synset_mapping.txt").write_text("".join(f"{w} {words(w)}\n" for w in WNIDS))  # sorted, as Kaggle's
    (kaggle / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--extra-class", action="store_true")
    parser.add_argument("--meta-numbers", default="float64", choices=["float64", "int64", "uint8"])
    parser.add_argument("--meta-fault", choices=["no-num-children", "text-id", "no-synsets", "truncated"])
    args = parser.parse_args()
    main(args.out, args.extra_class, args.meta_numbers, args.meta_fault)
