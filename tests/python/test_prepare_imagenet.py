"""`pe prepare imagenet` on tiny archives in the official formats, and `pe prepare shards` on the result.

The archives come from make_imagenet_archives.py (meta.mat written by scipy); every produced file is
compared byte for byte with the folder the script expects, and class_names.tsv with the names read here
from the inputs (meta.mat by scipy, LOC_synset_mapping.txt).
"""

import io
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest
import scipy.io

from conftest import PE, run_pe

HERE = pathlib.Path(__file__).resolve().parent


def make_archives(out, *flags):
    subprocess.run([sys.executable, HERE / "make_imagenet_archives.py", out, *flags], check=True)


def tree(root):
    """{relative path: bytes} of the files below root/train and root/val (markers and caches left out)."""
    root = pathlib.Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.relative_to(root).parts[0] in ("train", "val")
    }


def devkit_names(src):
    """{wnid: words} of the leaf synsets in the devkit's meta.mat, read by scipy."""
    with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz") as tar:
        data = tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
    synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    return {str(s["WNID"]): str(s["words"]) for s in synsets if s["num_children"] == 0}


def kaggle_names(src):
    """{wnid: words} of Kaggle's LOC_synset_mapping.txt (`wnid words...`)."""
    lines = (src / "kaggle" / "LOC_synset_mapping.txt").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


def assert_class_names(out, names):
    """class_names.tsv: `wnid<TAB>words` per class, in class-index (sorted wnid) order."""
    assert len(names) == 3 and all(", " in words for words in names.values())  # the fixture's are "a, b"
    expected = "".join(f"{w}\t{names[w]}\n" for w in sorted(names))
    assert (out / "class_names.tsv").read_text() == expected


def prepare_archives(src, to):
    return run_pe(
        "prepare", "imagenet",
        "--train-tar", src / "ILSVRC2012_img_train.tar",
        "--val-tar", src / "ILSVRC2012_img_val.tar",
        "--devkit", src / "ILSVRC2012_devkit_t12.tar.gz",
        "--to", to,
    )


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    src = tmp_path_factory.mktemp("archives")
    make_archives(src)
    return src


def test_archives_give_the_expected_folder_and_a_rerun_does_nothing(archives, tmp_path):
    out = tmp_path / "imagenet"
    result = prepare_archives(archives, out)
    assert "prepared: 3 classes, 12 train / 7 val images" in result.stdout
    assert tree(out) == tree(archives / "expected")
    assert sorted(p.name for p in (out / "train").iterdir()) == ["n01440764", "n01443537", "n01484850"]
    assert not (out / "val" / "n01443537").exists()  # no validation image of class 2
    assert (out / ".pe-prepared").exists() and not (out / ".partial").exists()
    assert_class_names(out, devkit_names(archives))
    assert "already prepared" in prepare_archives(archives, out).stdout
    assert_class_names(out, devkit_names(archives))


def test_a_folder_prepared_before_class_names_gets_them_on_a_rerun(archives, tmp_path):
    out = tmp_path / "imagenet"
    prepare_archives(archives, out)
    (out / "class_names.tsv").unlink()
    assert "already prepared" in prepare_archives(archives, out).stdout
    assert_class_names(out, devkit_names(archives))
    assert tree(out) == tree(archives / "expected")
    # Names are written only for the classes the folder holds.
    (out / "class_names.tsv").unlink()
    (out / "train" / "n01484850").rename(out / "train" / "n01484851")
    result = subprocess.run(
        [PE, "prepare", "imagenet", "--train-tar", archives / "ILSVRC2012_img_train.tar",
         "--val-tar", archives / "ILSVRC2012_img_val.tar", "--devkit", archives / "ILSVRC2012_devkit_t12.tar.gz",
         "--to", out],
        capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stderr
    assert str(out / "train") in result.stderr and "class_names.tsv" in result.stderr
    assert not (out / "class_names.tsv").exists()


def test_an_interrupted_run_continues_to_the_same_folder(archives, tmp_path):
    out = tmp_path / "imagenet"
    prepare_archives(archives, out)
    # What a kill leaves: no marker, a class and a val image missing, half-written files in .partial.
    (out / ".pe-prepared").unlink()
    (out / "class_names.tsv").unlink()
    shutil.rmtree(out / "train" / "n01484850")
    (out / "val" / "n01440764" / "ILSVRC2012_val_00000002.JPEG").unlink()
    (out / ".partial" / "train" / "n01484850").mkdir(parents=True)
    (out / ".partial" / "train" / "n01484850" / "half.JPEG").write_bytes(b"\xff\xd8")
    prepare_archives(archives, out)
    assert tree(out) == tree(archives / "expected")
    assert (out / ".pe-prepared").exists()
    assert_class_names(out, devkit_names(archives))


def test_kaggle_layout_gives_the_same_folder(archives, tmp_path):
    out = tmp_path / "imagenet"
    result = run_pe("prepare", "imagenet", "--kaggle", archives / "kaggle", "--to", out)
    assert "3 classes, 12 train / 7 val" in result.stdout
    assert tree(out) == tree(archives / "expected")
    assert_class_names(out, kaggle_names(archives))
    assert kaggle_names(archives) == devkit_names(archives)  # the fixture gives both the same words


def test_a_class_outside_the_devkit_is_an_error_naming_it(tmp_path):
    src = tmp_path / "archives"
    src.mkdir()
    make_archives(src, "--extra-class")
    result = subprocess.run(
        [PE, "prepare", "imagenet", "--train-tar", src / "ILSVRC2012_img_train.tar",
         "--val-tar", src / "ILSVRC2012_img_val.tar", "--devkit", src / "ILSVRC2012_devkit_t12.tar.gz",
         "--to", tmp_path / "out"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "n09999999" in result.stderr
    assert not (tmp_path / "out" / ".pe-prepared").exists()


def test_shards_of_the_prepared_folder(archives, tmp_path):
    out = tmp_path / "imagenet"
    prepare_archives(archives, out)
    shards = tmp_path / "shards"
    result = run_pe("prepare", "shards", "--from", out, "--to", shards, "--shard-mb", "1")
    assert "train: 12 samples" in result.stdout and "val: 7 samples" in result.stdout
    assert "warning: val has no sample of 1 class(es): n01443537" in result.stdout
    index = json.loads((shards / "index.json").read_text())
    assert index["classes"] == ["n01440764", "n01443537", "n01484850"]
    packed = {}
    for split in ("train", "val"):
        for shard in index["splits"][split]["shards"]:
            with tarfile.open(shards / split / shard["file"]) as tar:
                for m in tar.getmembers():
                    packed[f"{split}/{m.name}"] = tar.extractfile(m).read()
    expected = tree(archives / "expected")
    labels = {w: i for i, w in enumerate(index["classes"])}
    for rel, data in expected.items():
        key = rel[: -len(".JPEG")]
        assert packed[key + ".jpg"] == data
        assert packed[key + ".cls"] == str(labels[rel.split("/")[1]]).encode()
    assert len(packed) == 2 * len(expected)


@pytest.mark.parametrize("numbers", ["int64", "uint8"])
def test_a_meta_mat_with_integer_fields_gives_the_same_folder(numbers, archives, tmp_path):
    """A devkit re-saved from numpy/scipy stores ILSVRC2012_ID and num_children as integers, not doubles."""
    src = tmp_path / "archives"
    src.mkdir()
    make_archives(src, "--meta-numbers", numbers)
    out = tmp_path / "imagenet"
    prepare_archives(src, out)
    assert tree(out) == tree(archives / "expected")
    assert_class_names(out, devkit_names(src))


@pytest.mark.parametrize("fault, names", [
    ("no-num-children", ["synset 1", "num_children"]),
    ("text-id", ["synset 1", "ILSVRC2012_ID"]),
    ("no-synsets", ["synsets"]),
    ("truncated", []),
])
def test_a_malformed_meta_mat_is_an_error_naming_the_file_and_field(fault, names, tmp_path):
    src = tmp_path / "archives"
    src.mkdir()
    make_archives(src, "--meta-fault", fault)
    result = subprocess.run(
        [PE, "prepare", "imagenet", "--train-tar", src / "ILSVRC2012_img_train.tar",
         "--val-tar", src / "ILSVRC2012_img_val.tar", "--devkit", src / "ILSVRC2012_devkit_t12.tar.gz",
         "--to", tmp_path / "out"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stderr  # a failure with a message, not a panic (101)
    assert "panicked" not in result.stderr
    assert "ILSVRC2012_devkit_t12.tar.gz" in result.stderr and "meta.mat" in result.stderr
    for name in names:
        assert name in result.stderr, result.stderr
    assert not (tmp_path / "out" / ".pe-prepared").exists()
