"""`data.format = "webdataset"`: `pe train` streams WebDataset tar shards written by the reference
implementation (`webdataset.ShardWriter`) from local files, `pipe:` commands, a loopback S3 server
(moto) and loopback HTTP servers (one of them dropping connections mid-body), counting samples from
timm's `_info.json`, open_clip's `sizes.json` or a scan; `pe prepare shards` output is read by
`webdataset.WebDataset` and timm's `ReaderWds`, and trained from as WebDataset. A run over S3 killed
mid-epoch resumes to the same per-step losses as an uninterrupted one.

The data: a 3-class ImageFolder of noisy 20 px JPEGs, 36 training images (6 steps of 6 per epoch)
in 4 shards of ≤ 10, and 9 validation images in 2 shards of ≤ 5.
"""

import http.client
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import time
import urllib.request

import pytest

from conftest import PE, make_image_folder
from wds_servers import (
    no_proxy_opener, brace_pattern, environ, faulty_http_server, http_server, image_folder_samples,
    read_webdataset, s3, write_info_json, write_sizes_json, write_webdataset,
)

assert s3  # a fixture, used by name

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, BATCH = 3, 12, 3, 6
TRAIN_IMAGES, VAL_IMAGES = CLASSES * TRAIN_PER_CLASS, CLASSES * VAL_PER_CLASS
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH

#: The tiny PE ResNet of crates/pe-runner/tests/common/mod.rs (`tiny_recipe`), as WebDataset.
RECIPE = """name = "{name}"

[model]
arch = "resnet"
block = "bottleneck"
layers = [1, 2]
widths = [4, 8]
stem = "small"
stem_channels = 8
in_channels = 3
num_classes = 3
pe_stages = [2]

[data]
{root}format = "webdataset"
train_urls = {train_urls}
val_urls = {val_urls}
img_size = 16
scale = [0.5, 1.0]
color_jitter = 0.0
label_smoothing = 0.1
workers = 2
{data_extra}
[optimizer]
name = "adamw"
lr = 2e-3
base_batch = 0
weight_decay = 0.05

[schedule]
name = "cosine"
warmup_epochs = 0
min_lr = 1e-5

[train]
epochs = {epochs}
batch_size = {batch}
device = "cpu"
seed = 7
threads = 1
checkpoint_every_steps = {every}

[logging]
runs_dir = {runs}
every_steps = 1
sample_images = 0
progress = false
"""


def toml(value):
    """A TOML string or array of strings (JSON's escaping is TOML's for these)."""
    return json.dumps(value if isinstance(value, str) else list(value))


def write_recipe(tmp, name, *, train_urls, val_urls, root=None, epochs=1, every=0, data_extra=""):
    """`tmp/<name>.toml`; returns it and its run folder `tmp/runs/<name>`."""
    tmp = pathlib.Path(tmp)
    recipe = tmp / f"{name}.toml"
    recipe.write_text(RECIPE.format(
        name=name, root="" if root is None else f"root = {toml(str(root))}\n", train_urls=toml(train_urls),
        val_urls=toml(val_urls), data_extra=data_extra, epochs=epochs, batch=BATCH, every=every,
        runs=toml(str(tmp / "runs"))))
    return recipe, tmp / "runs" / name


def describe(result):
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def pe_train(recipe, *, env=None, ok=True, timeout=300):
    """`pe train recipe` in the recipe's folder (so the default `data.root` finds nothing of the
    checkout's); fails the test with both streams when it exits non-zero (`ok`) or zero
    (`ok=False`), or runs past `timeout` seconds."""
    if not os.path.exists(PE):
        pytest.fail(f"no pe binary at {PE}: build it (cargo build --release) or set PE_BIN")
    try:
        result = subprocess.run([PE, "train", str(recipe)], capture_output=True, text=True,
                                env=env or environ(), timeout=timeout, cwd=pathlib.Path(recipe).parent)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pe train {recipe} ran past {timeout} s\n--- stdout\n{e.stdout}\n--- stderr\n{e.stderr}")
    if ok and result.returncode != 0:
        pytest.fail(f"pe train {recipe} failed: {describe(result)}\n--- recipe\n{pathlib.Path(recipe).read_text()}")
    if not ok and result.returncode == 0:
        pytest.fail(f"pe train {recipe} succeeded where it should fail: {describe(result)}")
    return result


def step_losses(run):
    """{step: loss} of the train records in run/metrics.jsonl (the last per step), whole lines only:
    the run may be writing the file."""
    path = pathlib.Path(run) / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    losses = {}
    for line in text[: text.rfind("\n") + 1].splitlines():
        record = json.loads(line)
        if record.get("type") == "train":
            losses[record["step"]] = record["loss"]
    return dict(sorted(losses.items()))


def assert_trained(result, run, *, epochs=1, val=VAL_IMAGES):
    assert f"on {val} images" in result.stdout, f"every validation image once: {describe(result)}"
    steps = sorted(step_losses(run))
    assert steps == list(range(1, epochs * STEPS_PER_EPOCH + 1)), \
        f"{TRAIN_IMAGES} images / batch {BATCH} = {STEPS_PER_EPOCH} steps per epoch; metrics.jsonl has {steps}"


def assert_same_losses(resumed, uninterrupted):
    assert sorted(resumed) == sorted(uninterrupted), f"steps {sorted(resumed)} vs {sorted(uninterrupted)}"
    for step, loss in uninterrupted.items():
        assert abs(resumed[step] - loss) <= 1e-6, f"step {step}: resumed {resumed[step]} vs uninterrupted {loss}"


def assert_scanned(result, run):
    assert "scanning" in result.stderr, f"no metadata: pe scans the shards: {describe(result)}"
    cache = pathlib.Path(run).parent / ".webdataset"
    assert cache.is_dir() and any(cache.iterdir()), f"the scan's counts are cached beside the run, in {cache}"


def assert_not_scanned(result):
    assert "scanning" not in result.stderr, f"the counts came from the metadata, no scan: {describe(result)}"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds-folder")
    make_image_folder(root, classes=CLASSES, per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, side=20)
    return root


def write_set(folder, out, *, info=False, sizes=False, json_label=False, cls_member=True):
    """The folder's splits as ShardWriter shards `out/train-NNNNNN.tar` (≤ 10 each) and
    `out/val-NNNNNN.tar` (≤ 5 each), with timm's `_info.json` and/or open_clip's `sizes.json`."""
    train = write_webdataset(folder / "train", out, "train-%06d.tar", maxcount=10, json_label=json_label,
                             cls_member=cls_member)
    val = write_webdataset(folder / "val", out, "val-%06d.tar", maxcount=5, json_label=json_label,
                           classes=train.classes, cls_member=cls_member, seed=1)
    assert (train.count, len(train.shards), val.count, len(val.shards)) == (TRAIN_IMAGES, 4, VAL_IMAGES, 2)
    if info:
        write_info_json(out, {"train": train, "val": val}, len(train.classes))
    if sizes:
        write_sizes_json(out, train, val)
    return train, val


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    """ShardWriter shards of `folder` without metadata: (directory, train, val)."""
    out = tmp_path_factory.mktemp("wds-shards")
    train, val = write_set(folder, out)
    return out, train, val


@pytest.fixture(scope="module")
def shards_with_info(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("wds-shards-info")
    train, val = write_set(folder, out, info=True)
    return out, train, val


# ---------------------------------------------------------------------------------------------
# The fixtures themselves (no pe): the references read what they write, the servers serve it
# ---------------------------------------------------------------------------------------------


def test_shardwriter_shards_read_back_with_webdataset_timm_and_through_the_servers(folder, shards, tmp_path):
    out, train, val = shards
    samples, classes = image_folder_samples(folder / "train")
    assert classes == ["c0", "c1", "c2"] and len(samples) == TRAIN_IMAGES
    assert sorted(train.samples) == sorted((f"{p.parent.name}_{p.stem}", label) for p, label in samples)
    pattern = brace_pattern(train.shards, f"{out}/")
    assert pattern == f"{out}/train-{{000000..000003}}.tar"
    for urls in (pattern, f"pipe:cat {pattern}"):
        got = read_webdataset(urls)
        assert [(k, label) for k, label, _ in got] == train.samples, urls
    by_key = {f"{p.parent.name}_{p.stem}": p.read_bytes() for p, _ in samples}
    assert all(jpg == by_key[k] for k, _, jpg in read_webdataset(pattern)), "image bytes stored as they are"
    # json labels, no .cls member.
    json_train, _ = write_set(folder, tmp_path / "json", json_label=True, cls_member=False)
    got = read_webdataset(brace_pattern(json_train.shards, f"{tmp_path / 'json'}/"), label_key="json:label")
    assert [(k, label) for k, label, _ in got] == json_train.samples
    with tarfile.open(json_train.shards[0]) as tar:
        assert not [n for n in tar.getnames() if n.endswith(".cls")]
    # timm reads the _info.json format write_info_json writes.
    from timm.data.readers.reader_wds import ReaderWds

    info_dir = tmp_path / "info"
    write_set(folder, info_dir, info=True)
    for split, written in (("train", train), ("val", val)):
        reader = ReaderWds(str(info_dir), split=split, is_training=False)
        assert len(reader) == written.count
        assert sorted(t for _, t in reader) == sorted(label for _, label in written.samples)
    # The plain HTTP server, whole files and ranges.
    with http_server(out) as server:
        assert [(k, label) for k, label, _ in read_webdataset(brace_pattern(train.shards, server.url + "/"))] \
            == train.samples
        assert server.gets == {f"/{s.name}": 1 for s in train.shards}
        request = urllib.request.Request(server.url_of(train.shards[0].name), headers={"Range": "bytes=100-199"})
        with no_proxy_opener().open(request) as response:
            assert response.status == 206 and response.read() == train.shards[0].read_bytes()[100:200]


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
def test_the_faulty_server_drops_the_first_get_of_each_tar_midway_and_always_mode_every_get(shards, reset):
    out, train, _ = shards
    name, whole = train.shards[0].name, train.shards[0].read_bytes()
    opener = no_proxy_opener()

    def get(server, path):
        try:
            with opener.open(server.url_of(path), timeout=10) as response:
                return response.read()
        except (OSError, http.client.HTTPException) as e:
            return e

    with faulty_http_server(out, reset=reset) as server:
        first = get(server, name)
        assert isinstance(first, (http.client.IncompleteRead, ConnectionError, OSError)), first
        assert get(server, name) == whole, "the second GET is whole"
        assert server.gets == {f"/{name}": 2} and server.drops == {f"/{name}": 1}
        server.set_mode("always")
        assert all(not isinstance(get(server, name), bytes) for _ in range(3))
        assert server.gets == {f"/{name}": 3}
        server.set_mode("off")
        assert get(server, name) == whole


def test_s3_upload_to_moto_lists_and_reads_back(s3, shards):
    out, train, _ = shards
    keys = s3.upload("wds-selftest", out, "wds")
    assert keys == s3.keys("wds-selftest", "wds/") == sorted(f"wds/{p.name}" for p in out.iterdir())
    body = s3.client().get_object(Bucket="wds-selftest", Key=f"wds/{train.shards[0].name}")["Body"].read()
    assert body == train.shards[0].read_bytes()
    env = s3.environ()
    assert env["AWS_ENDPOINT_URL"] == s3.endpoint and env["AWS_ALLOW_HTTP"] == "true"
    assert env["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] == "false" and env["AWS_REGION"] == "us-east-1"


# ---------------------------------------------------------------------------------------------
# a. Local ShardWriter shards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata, label_key", [
    ("none", None), ("info", None), ("sizes", None), ("none", "json:label"), ("info", "cls"),
])
def test_shardwriter_shards_train_from_brace_patterns(folder, tmp_path, metadata, label_key):
    out = tmp_path / "shards"
    json_label = label_key == "json:label"
    train, val = write_set(folder, out, info=metadata == "info", sizes=metadata == "sizes",
                           json_label=json_label, cls_member=not json_label)
    extra = "" if label_key is None else f"label_key = {toml(label_key)}\n"
    if metadata == "sizes":  # sizes.json holds no class count, and nothing is scanned
        extra += 'classes = ["c0", "c1", "c2"]\n'
    recipe, run = write_recipe(tmp_path, f"local-{metadata}", root=out, train_urls=brace_pattern(train.shards),
                               val_urls=brace_pattern(val.shards), data_extra=extra)
    result = pe_train(recipe)
    assert_trained(result, run)
    if metadata == "none":
        assert_scanned(result, run)
    else:
        assert_not_scanned(result)


def test_absolute_paths_and_file_urls_joined_with_double_colons_train(shards, tmp_path):
    out, train, val = shards
    first, rest = train.shards[:1], train.shards[1:]
    train_urls = f"{first[0]}::file://{brace_pattern(rest, f'{out}/')}"
    recipe, run = write_recipe(tmp_path, "absolute", train_urls=train_urls,
                               val_urls=[f"file://{val.shards[0]}", str(val.shards[1])], data_extra="classes = 3\n")
    assert_trained(pe_train(recipe), run)


# ---------------------------------------------------------------------------------------------
# b. `pe prepare shards` output is WebDataset
# ---------------------------------------------------------------------------------------------


def test_pe_prepare_shards_writes_webdataset_with_timms_info_json_and_trains_from_it(tmp_path):
    source, out = tmp_path / "folder", tmp_path / "prepared"
    # ~13 kB JPEGs, 90 for training: more than one 1 MB shard.
    make_image_folder(source, classes=3, per_class=30, val_per_class=4, side=192)
    if not os.path.exists(PE):
        pytest.fail(f"no pe binary at {PE}: build it (cargo build --release) or set PE_BIN")
    prepared = subprocess.run([PE, "prepare", "shards", "--from", source, "--to", out, "--shard-mb", "1"],
                              capture_output=True, text=True, env=environ(), timeout=300)
    assert prepared.returncode == 0, describe(prepared)

    info_path = out / "_info.json"
    assert info_path.is_file(), f"pe prepare shards writes {info_path}: {sorted(p.name for p in out.iterdir())}"
    info = json.loads(info_path.read_text())
    assert info["num_classes"] == 3, info
    import webdataset as wds
    from timm.data.readers.reader_wds import ReaderWds, _parse_split_info

    counts = {}
    for split, images in (("train", 90), ("val", 12)):
        files = sorted(p.relative_to(out).as_posix() for p in (out / split).glob("*.tar"))
        assert len(files) >= (2 if split == "train" else 1), f"{split}: {files}"
        assert files == [f"{split}/{i:06d}.tar" for i in range(len(files))], files
        entry = info["splits"][split]
        assert entry["name"] == split and entry["filenames"] == files, entry
        lengths = [sum(1 for _ in wds.WebDataset(str(out / f), shardshuffle=False, empty_check=False))
                   for f in files]
        assert entry["shard_lengths"] == lengths and entry["num_samples"] == sum(lengths) == images, entry
        parsed = _parse_split_info(split, info)  # timm's own reading of it
        assert (parsed.num_samples, list(parsed.filenames)) == (images, files)

        # Keys and labels: as the folder has them (label = class index, sorted), bytes as stored.
        got = read_webdataset(brace_pattern([out / f for f in files], f"{out}/{split}/"))
        samples, classes = image_folder_samples(source / split)
        expected = {f"{p.parent.name}/{p.stem}".replace(".", "_"): (label, p.read_bytes()) for p, label in samples}
        assert len(got) == images and len({k for k, _, _ in got}) == images, "each image once"
        assert {k: (label, jpg) for k, label, jpg in got} == expected
        with tarfile.open(out / files[0]) as tar:
            names = tar.getnames()
        assert all(n.rsplit(".", 1)[0] in expected and n.rsplit(".", 1)[1] in ("jpg", "cls") for n in names), names
        reader = ReaderWds(str(out), split=split, is_training=False)
        assert len(reader) == images
        assert sorted(t for _, t in reader) == sorted(label for label, _ in expected.values())
        counts[split] = files

    recipe, run = write_recipe(tmp_path, "prepared", root=out, train_urls=brace_pattern(counts["train"], "train/"),
                               val_urls=brace_pattern(counts["val"], "val/"))
    result = pe_train(recipe)
    assert "on 12 images" in result.stdout, describe(result)
    assert sorted(step_losses(run)) == list(range(1, 90 // BATCH + 1))
    assert_not_scanned(result)  # the counts from OUT/_info.json (data.root), its filenames relative to it


# ---------------------------------------------------------------------------------------------
# c. S3 (moto): train, kill, resume exactly
# ---------------------------------------------------------------------------------------------


def wait_for_steps(child, run, steps, stderr_path, timeout=120):
    started = time.monotonic()
    while len(step_losses(run)) < steps:
        if child.poll() is not None:
            pytest.fail(f"the run ended ({child.returncode}) before it could be stopped at step {steps}:\n"
                        f"{pathlib.Path(stderr_path).read_text()}")
        if time.monotonic() - started > timeout:
            child.kill()
            pytest.fail(f"no {steps} steps in {timeout} s:\n{pathlib.Path(stderr_path).read_text()}")
        time.sleep(0.002)


@pytest.fixture(scope="module")
def s3_bucket(s3, shards):
    """The ShardWriter shards (no metadata) at s3://wds-train/wds/."""
    out, train, val = shards
    s3.upload("wds-train", out, "wds")
    return "wds-train", train, val


def test_s3_root_trains_and_a_killed_run_resumes_to_the_same_losses(s3, s3_bucket, tmp_path):
    bucket, train, val = s3_bucket
    env = s3.environ()
    urls = dict(root=f"s3://{bucket}/wds", train_urls=brace_pattern(train.shards), val_urls=brace_pattern(val.shards))

    reference, reference_run = write_recipe(tmp_path, "reference", epochs=3, every=1, **urls)
    result = pe_train(reference, env=env)
    assert_trained(result, reference_run, epochs=3)
    assert_scanned(result, reference_run)
    expected = step_losses(reference_run)

    interrupted, run = write_recipe(tmp_path, "interrupted", epochs=3, every=1, **urls)
    stderr_path = tmp_path / "interrupted.stderr"
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen([PE, "train", str(interrupted)], stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                 cwd=tmp_path)
        try:
            wait_for_steps(child, run, STEPS_PER_EPOCH + 2, stderr_path)  # mid-way through epoch 2
        finally:
            child.kill()
            child.wait()
    assert len(step_losses(run)) < len(expected), "killed before the end"
    resumed = pe_train(interrupted, env=env)
    assert "resumed from" in resumed.stdout, describe(resumed)
    assert_not_scanned(resumed)  # the counts are cached beside the runs
    assert_same_losses(step_losses(run), expected)


def test_full_s3_urls_joined_with_double_colons_train(s3, s3_bucket, tmp_path):
    bucket, train, val = s3_bucket
    prefix = f"s3://{bucket}/wds/"
    train_urls = f"{brace_pattern(train.shards[:2], prefix)}::{brace_pattern(train.shards[2:], prefix)}"
    recipe, run = write_recipe(tmp_path, "s3-urls", train_urls=train_urls, val_urls=[prefix + s.name for s in val.shards])
    assert_trained(pe_train(recipe, env=s3.environ()), run)


# ---------------------------------------------------------------------------------------------
# d. Plain HTTP
# ---------------------------------------------------------------------------------------------


def test_http_root_trains(shards, tmp_path):
    out, train, val = shards
    served = tmp_path / "www"
    shutil.copytree(out, served / "wds")
    with http_server(served) as server:
        recipe, run = write_recipe(tmp_path, "http", root=f"{server.url}/wds", train_urls=brace_pattern(train.shards),
                                   val_urls=brace_pattern(val.shards))
        result = pe_train(recipe)
        gets = server.gets
    assert_trained(result, run)
    assert_scanned(result, run)
    assert all(gets.get(f"/wds/{s.name}", 0) >= 1 for s in train.shards + val.shards), \
        f"every shard came over HTTP: {gets}"


# ---------------------------------------------------------------------------------------------
# e. A server that drops connections mid-body
# ---------------------------------------------------------------------------------------------


def test_dropped_connections_are_retried_and_give_the_same_run(shards_with_info, tmp_path):
    out, train, val = shards_with_info
    with faulty_http_server(out, mode="off") as server:
        urls = dict(train_urls=brace_pattern(train.shards, server.url + "/"),
                    val_urls=brace_pattern(val.shards, server.url + "/"))
        recipe, clean_run = write_recipe(tmp_path, "clean", **urls)
        assert_trained(pe_train(recipe), clean_run)

        server.set_mode("once")
        recipe, run = write_recipe(tmp_path, "retried", **urls)
        result = pe_train(recipe)
        gets, drops = server.gets, server.drops
    assert_trained(result, run)
    assert drops, f"no connection was dropped: {gets}"
    not_retried = [path for path in drops if gets[path] < 2]
    assert not not_retried, f"dropped and not asked for again: {not_retried} (gets {gets}, drops {drops})"
    assert all(f"/{s.name}" in drops for s in train.shards), f"every training shard was read: {gets}"
    assert_same_losses(step_losses(run), step_losses(clean_run))


def test_a_shard_that_always_drops_fails_the_run_naming_its_url(shards_with_info, tmp_path):
    out, train, val = shards_with_info
    with faulty_http_server(out, mode="always") as server:
        shard_urls = [server.url_of(s.name) for s in train.shards + val.shards]
        recipe, _ = write_recipe(tmp_path, "doomed", train_urls=brace_pattern(train.shards, server.url + "/"),
                                 val_urls=brace_pattern(val.shards, server.url + "/"), data_extra="read_retries = 1\n")
        started = time.monotonic()
        result = pe_train(recipe, ok=False, timeout=120)
        elapsed, gets = time.monotonic() - started, server.gets
    assert any(url in result.stderr for url in shard_urls), f"stderr names the shard's URL: {describe(result)}"
    assert "panicked" not in result.stderr, f"an error, not a panic: {describe(result)}"
    assert gets, "the shards were asked for"
    assert elapsed < 60, f"gave up after {elapsed:.0f} s with read_retries = 1"


# ---------------------------------------------------------------------------------------------
# f. pipe: commands
# ---------------------------------------------------------------------------------------------


def test_pipe_cat_urls_train(shards, tmp_path):
    out, train, val = shards
    train_urls = f"pipe:cat {brace_pattern(train.shards, f'{out}/')}"
    val_urls = [f"pipe:cat {s}" for s in val.shards]
    # The reference reads the same strings.
    assert [(k, label) for k, label, _ in read_webdataset(train_urls)] == train.samples
    assert [(k, label) for k, label, _ in read_webdataset(val_urls)] == val.samples
    recipe, run = write_recipe(tmp_path, "pipe", train_urls=train_urls, val_urls=val_urls)
    assert_trained(pe_train(recipe), run)
