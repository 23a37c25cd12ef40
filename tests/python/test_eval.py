"""`pe eval` and `pe predict` on runs trained on real Fashion-MNIST JPEGs, checked against
computations made here: per-class numbers and the confusion matrix recomputed with numpy from the
`--predictions` file; the ImageNet-V2 index layout, the ImageNet-A/R 200-class restriction and the
ImageNet-ReaL rule on fixtures in those formats, their answers worked out from an unrestricted
evaluation of the same images; `pe predict` against `pe eval` image for image.
"""

import csv
import io
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from conftest import PE, run_pe, train_on_fashion_mnist

#: A learning rate that gets a few epochs on 320 images past chance; per-class TensorBoard summaries.
EXTRA = """
[optimizer]
name = "adamw"
lr = 3e-3
base_batch = 0

[eval]
batch_size = 24
per_class = {per_class}
"""

#: Evaluate on the 320 training images: enough for every class to be confused with some other.
ON_TRAIN = ("--set", "data.val_split=train")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_mnist):
    """A vit_pe_mini run with an EMA and per-class TensorBoard summaries (4 epochs), and a
    resnet_mini_pe run without an EMA (2 epochs)."""
    tmp = tmp_path_factory.mktemp("eval")
    return {
        model: train_on_fashion_mnist(tmp, model, fashion_mnist, epochs=epochs, ema=ema,
                                      extra=EXTRA.format(per_class=per_class))
        for model, epochs, ema, per_class in (("vit_pe_mini", 4, 0.9, "true"), ("resnet_mini_pe", 2, 0, "false"))
    }


def pe_eval(*args):
    return run_pe("eval", *args)


def eval_json(*args):
    return json.loads(pe_eval(*args, "--format", "json").stdout)["evaluations"]


def read_predictions(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pe_fails(*args):
    result = subprocess.run([PE, *map(str, args)], capture_output=True, text=True)
    assert result.returncode != 0, result.stdout
    return result


def test_per_class_numbers_and_the_confusion_matrix_agree_with_numpy_over_the_predictions(tmp_path, runs,
                                                                                        fashion_mnist):
    out = tmp_path / "p.csv"
    [evaluated] = eval_json(runs["vit_pe_mini"], "--per-class", "--predictions", out, *ON_TRAIN)
    rows = read_predictions(out)
    classes = sorted(p.name for p in (fashion_mnist / "train").iterdir())
    assert evaluated["classes"] == classes
    # Every image of the split exactly once, its label its folder.
    files = sorted(str(p) for p in (fashion_mnist / "train").rglob("*.jpg"))
    assert sorted(r["file"] for r in rows) == files
    for r in rows:
        assert r["label"] == r["file"].split("/")[-2] and classes[int(r["label_index"])] == r["label"]
    labels = np.array([int(r["label_index"]) for r in rows])
    top = np.array([[int(r[f"index_{k}"]) for k in range(1, 6)] for r in rows])
    probs = np.array([[float(r[f"prob_{k}"]) for k in range(1, 6)] for r in rows])
    assert (np.diff(probs, axis=1) <= 1e-6).all() and (probs.sum(axis=1) <= 1 + 1e-5).all()
    assert [classes[i] for i in top[:, 0]] == [r["class_1"] for r in rows]
    # The accuracies and the matrix from the file.
    assert evaluated["samples"] == len(rows) == 320
    assert evaluated["acc1"] == pytest.approx(100 * np.mean(top[:, 0] == labels), abs=1e-9)
    assert evaluated["acc5"] == pytest.approx(100 * np.mean((top == labels[:, None]).any(axis=1)), abs=1e-9)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, top[:, 0]), 1)
    assert np.array_equal(np.array(evaluated["confusion"]), confusion)
    assert confusion.trace() not in (0, 320), "a degenerate model would not test the matrix"
    support, predicted, correct = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    by_index = {row["index"]: row for row in evaluated["per_class"]}
    for c in range(10):
        row = by_index[c]
        assert (row["support"], row["predicted"], row["correct"]) == (support[c], predicted[c], correct[c])
        assert row["recall"] == pytest.approx(correct[c] / support[c])
        if predicted[c]:
            precision, recall = correct[c] / predicted[c], correct[c] / support[c]
            assert row["precision"] == pytest.approx(precision)
            f1 = 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
            assert row["f1"] == pytest.approx(f1)
        else:
            assert row["precision"] is None
    assert evaluated["mean_recall"] == pytest.approx(100 * np.mean(correct / support))
    # The most-confused pairs are the largest off-diagonal cells.
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    largest = sorted(((off[i, j], i, j) for i in range(10) for j in range(10) if off[i, j]), key=lambda t: (-t[0], t[1], t[2]))
    assert [(p["label"], p["predicted"], p["images"]) for p in evaluated["most_confused"]] == \
        [(classes[i], classes[j], n) for n, i, j in largest[:10]]


def test_the_text_markdown_and_csv_reports_say_the_same(tmp_path, runs):
    [evaluated] = eval_json(runs["vit_pe_mini"], "--per-class", *ON_TRAIN)
    text = pe_eval(runs["vit_pe_mini"], "--per-class", "--worst", "3", *ON_TRAIN).stdout.splitlines()
    assert text[0].startswith(f"{runs['vit_pe_mini']}: top-1 {evaluated['acc1']:.2f}%")
    assert "  worst 3 classes by recall:" in text and "most confused (label -> predicted):" in "\n".join(text)
    worst = min(evaluated["per_class"], key=lambda r: (r["recall"], -r["support"]))
    assert text[text.index("  worst 3 classes by recall:") + 1].split()[0] == worst["class"]
    assert json.loads(text[-1])["acc1"] == evaluated["acc1"]
    table = list(csv.DictReader(io.StringIO(pe_eval(runs["vit_pe_mini"], "--per-class", "--format", "csv",
                                                   *ON_TRAIN).stdout)))
    assert [int(r["images"]) for r in table] == [r["support"] for r in evaluated["per_class"]]
    assert [float(r["recall"]) for r in table] == pytest.approx([r["recall"] for r in evaluated["per_class"]], abs=1e-6)
    markdown = pe_eval(runs["vit_pe_mini"], "--per-class", "--format", "markdown", *ON_TRAIN).stdout
    assert f"| {evaluated['acc1']:.2f} |" in markdown and "| index | class | images |" in markdown


def test_the_confusion_figure_is_an_svg_with_a_cell_per_pair(tmp_path, runs):
    out = tmp_path / "confusion.svg"
    [evaluated] = eval_json(runs["vit_pe_mini"], "--confusion", out, *ON_TRAIN)
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    titles = [t.text for t in root.iter() if t.tag.endswith("title") and t.text and "→" in t.text]
    assert len(titles) == 100
    confusion = np.array(evaluated["confusion"])
    # Every tooltip's count is the matrix's cell.
    classes = evaluated["classes"]
    for title in titles:
        pair, count = title.split(": ")
        label, predicted = pair.split(" → ")
        assert int(count.split()[0]) == confusion[classes.index(label), classes.index(predicted)]


def copy_val(fashion_mnist, to, name_folder):
    """The validation images under `to/val/<name_folder(class)>/`."""
    for folder in sorted((fashion_mnist / "val").iterdir()):
        if (name := name_folder(folder.name)) is not None:
            shutil.copytree(folder, to / "val" / name)
    return to


def test_imagenet_v2_folders_are_class_indices(tmp_path, runs, fashion_mnist):
    classes = sorted(p.name for p in (fashion_mnist / "val").iterdir())
    v2 = copy_val(fashion_mnist, tmp_path / "v2", lambda c: str(classes.index(c)))
    own, theirs = tmp_path / "own.csv", tmp_path / "v2.csv"
    [reference] = eval_json(runs["resnet_mini_pe"], "--predictions", own)
    [evaluated] = eval_json(runs["resnet_mini_pe"], "--class-map", "index", "--set", f"data.root={v2}",
                            "--predictions", theirs)
    # The same images under index folders: the same labels, so the same predictions and numbers.
    name = lambda r: r["file"].split("/")[-1]
    ours = {name(r): (r["label"], r["class_1"]) for r in read_predictions(own)}
    assert {name(r): (r["label"], r["class_1"]) for r in read_predictions(theirs)} == ours
    for r in read_predictions(theirs):
        assert r["file"].split("/")[-2] == r["label_index"]
    assert (evaluated["acc1"], evaluated["acc5"]) == (reference["acc1"], reference["acc5"])
    # Without --class-map index the folders are unknown classes: exit 2, naming the fix.
    result = pe_fails("eval", runs["resnet_mini_pe"], "--set", f"data.root={v2}")
    assert result.returncode == 2 and "--class-map index" in result.stderr
    (v2 / "val" / "10").mkdir()
    shutil.copy(next((v2 / "val" / "0").iterdir()), v2 / "val" / "10" / "x.jpg")
    result = pe_fails("eval", runs["resnet_mini_pe"], "--class-map", "index", "--set", f"data.root={v2}")
    assert result.returncode == 2 and "folders named 0..9" in result.stderr and "\"10\"" in result.stderr


def test_imagenet_a_and_r_restrict_the_argmax_to_their_classes(tmp_path, runs, fashion_mnist):
    subset = ["2_Pullover", "4_Coat", "6_Shirt"]  # the classes most often confused with each other
    a = copy_val(fashion_mnist, tmp_path / "a", lambda c: c if c in subset else None)
    full, restricted = tmp_path / "full.csv", tmp_path / "restricted.csv"
    # All ten probabilities of each image, unrestricted.
    eval_json(runs["vit_pe_mini"], "--set", f"data.root={a}", "--predictions", full, "--topk", "10")
    [evaluated] = eval_json(runs["vit_pe_mini"], "--class-map", "subset", "--set", f"data.root={a}",
                            "--predictions", restricted, "--topk", "3")
    hits, seen = 0, {}
    for r in read_predictions(full):
        p = {r[f"class_{k}"]: float(r[f"prob_{k}"]) for k in range(1, 11)}
        best = max(subset, key=lambda c: p[c])
        hits += best == r["label"]
        seen[r["file"]] = sorted(((p[c] / sum(p[c] for c in subset), c) for c in subset), reverse=True)
    assert evaluated["samples"] == 12
    assert evaluated["acc1"] == pytest.approx(100 * hits / 12, abs=1e-9)
    assert evaluated["acc5"] == 100.0  # three classes: the label is always among them
    for r in read_predictions(restricted):
        expected = seen[r["file"]]
        assert [r[f"class_{k}"] for k in (1, 2, 3)] == [c for _, c in expected]
        assert [float(r[f"prob_{k}"]) for k in (1, 2, 3)] == pytest.approx([p for p, _ in expected], abs=2e-5)
    # A folder outside the checkpoint's classes is an error naming it.
    (a / "val" / "n01440764").mkdir()
    shutil.copy(next((a / "val" / "4_Coat").iterdir()), a / "val" / "n01440764" / "x.jpg")
    result = pe_fails("eval", runs["vit_pe_mini"], "--class-map", "subset", "--set", f"data.root={a}")
    assert result.returncode == 2 and "n01440764" in result.stderr


def test_imagenet_real_counts_a_top1_in_the_list_and_skips_empty_lists(tmp_path, runs, fashion_mnist):
    classes = sorted(p.name for p in (fashion_mnist / "val").iterdir())
    own = tmp_path / "own.csv"
    eval_json(runs["vit_pe_mini"], "--predictions", own)
    by_name = {r["file"].split("/")[-1]: r for r in read_predictions(own)}
    names = sorted(by_name)  # ReaL's order: file names
    lists, hits, counted = [], 0, 0
    for i, name in enumerate(names):
        r = by_name[name]
        label, top1 = int(r["label_index"]), int(r["index_1"])
        other = (label + 1) % 10
        entry = [[], [label], [other, label], [other]][i % 4]
        if i % 8 == 3:
            entry = [top1]  # some always right
        lists.append(entry)
        if entry:
            counted += 1
            hits += top1 in entry
    real = tmp_path / "real.json"
    real.write_text(json.dumps(lists))
    [evaluated] = eval_json(runs["vit_pe_mini"], "--labels", real)
    assert evaluated["real"]["counted"] == counted == 30
    assert evaluated["real"]["acc1"] == pytest.approx(100 * hits / counted, abs=1e-9)
    assert 0 < hits < counted
    text = pe_eval(runs["vit_pe_mini"], "--labels", real).stdout
    assert f"ReaL top-1 {100 * hits / counted:.2f}%" in text
    real.write_text(json.dumps(lists[:-1]))
    result = pe_fails("eval", runs["vit_pe_mini"], "--labels", real)
    assert result.returncode == 2 and "39 label lists for the 40 images" in result.stderr
    real.write_text(json.dumps([[10]] * 40))
    result = pe_fails("eval", runs["vit_pe_mini"], "--labels", real)
    assert result.returncode == 2 and "class 10" in result.stderr


def test_sizes_crops_and_checkpoints_side_by_side(tmp_path, runs):
    vit, resnet = runs["vit_pe_mini"], runs["resnet_mini_pe"]
    result = run_pe("eval", vit, resnet, "--img-size", "28,56", "--crop-pct", "0.9,1.0", "--format", "json")
    evaluations = json.loads(result.stdout)["evaluations"]
    assert [(e["source"], e["img_size"], e["crop_pct"]) for e in evaluations] == [
        (str(run), size, crop) for run in (vit, resnet) for size in (28, 56) for crop in (0.9, 1.0)]
    assert "pos_embed resampled from a 7×7 to a 14×14 patch grid" in result.stderr
    # Each row is what a single evaluation with that recipe change gives.
    for e in evaluations:
        [single] = eval_json(e["source"], "--set", f"data.img_size={e['img_size']}",
                             "--set", f"data.crop_pct={e['crop_pct']}") if e["img_size"] == 28 else [e]
        assert (single["acc1"], single["loss"]) == (e["acc1"], e["loss"])
    assert len({e["loss"] for e in evaluations}) == 8
    table = pe_eval(vit, resnet, "--format", "markdown").stdout
    assert table.count("\n") == 4 and f"| {vit} | 28 | 0.9 |" in table
    # --ema where a checkpoint has one; the other's own weights, marked.
    both = eval_json(vit, resnet, "--ema")
    assert [e["source"] for e in both] == [f"{vit} (EMA)", f"{resnet} (no EMA)"]
    assert both[0]["weights"].endswith("ema.safetensors")
    assert pe_fails("eval", resnet, "--ema").returncode == 1


def test_pe_predict_gives_pe_evals_top1_image_for_image(tmp_path, runs, fashion_mnist):
    own = tmp_path / "own.csv"
    eval_json(runs["vit_pe_mini"], "--predictions", own)
    expected = {r["file"]: (r["class_1"], float(r["prob_1"])) for r in read_predictions(own)}
    result = run_pe("predict", "--checkpoint", runs["vit_pe_mini"], fashion_mnist / "val", "--format", "json", "--topk", "3")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 40
    for line in lines:
        assert line["top"][0]["class"] == expected[line["file"]][0]
        assert line["top"][0]["prob"] == pytest.approx(expected[line["file"]][1], abs=1e-5)
        assert len(line["top"]) == 3
    # A bad file among good ones: named, the rest predicted, exit 1.
    good = sorted((fashion_mnist / "val" / "8_Bag").iterdir())[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = subprocess.run([PE, "predict", "--checkpoint", runs["vit_pe_mini"], bad, good], capture_output=True, text=True)
    assert result.returncode == 1 and f"{bad}:" in result.stderr
    assert result.stdout.splitlines()[0] == str(good) and expected[str(good)][0] in result.stdout
    # The table prints percentages to 3 decimals; a batch of one may differ from eval's batches in the
    # last float bits, so the printed value is compared with that tolerance, not as a string.
    printed = float(result.stdout.splitlines()[1].split("%")[0])
    assert printed == pytest.approx(100 * expected[str(good)][1], abs=2e-3)


def test_training_writes_the_per_class_summary_and_figure_to_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["vit_pe_mini"]), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("eval/acc1")]
    for tag in ("eval/confusion", "eval_ema/confusion"):
        images = events.Images(tag)
        assert [i.step for i in images] == steps and len(steps) == 4
        png = Image.open(io.BytesIO(images[-1].encoded_image_string))
        assert png.size[0] == png.size[1] and png.size[0] % 10 == 0
    texts = events.Tensors("eval/per_class")
    assert [t.step for t in texts] == steps
    assert "Worst 10 classes by recall" in texts[-1].tensor_proto.string_val[0].decode()
