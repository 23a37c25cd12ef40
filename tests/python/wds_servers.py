"""Loopback servers and WebDataset shards for tests/python/test_webdataset.py.

Everything listens on 127.0.0.1 on a free port and is started and stopped by the tests:

- `s3_server()`: moto's S3 server as a subprocess (`moto_server` from the venv), with `upload` to
  put a folder of files into a bucket through boto3, and the `AWS_*` variables the object_store
  crate reads (`S3Server.env`; `S3Server.environ()` is the whole environment for a subprocess).
- `http_server(directory)`: a plain HTTP server (ThreadingHTTPServer in a thread) serving a folder,
  with single `Range` requests answered 206 as a real server would.
- `faulty_http_server(directory, mode="once")`: the same, but the first GET of every `.tar` file
  (every GET of them with `mode="always"`; none with `mode="off"`, `server.set_mode` switches) sends
  the headers with the full Content-Length and about half the body, then closes the connection;
  GETs and drops are counted per path (`server.gets`, `server.drops`).
- `write_webdataset(split_dir, out_dir, ...)`: an ImageFolder split written with
  `webdataset.ShardWriter`; `write_info_json` / `write_sizes_json` add timm's and open_clip's
  sample-count files beside the shards.

The pytest fixture `s3` (one moto server per session) is defined here too; a test module imports
it (`from wds_servers import s3`). `environ()` is the environment for a `pe` subprocess: no AWS_*
variable of the machine, no proxy for 127.0.0.1.
"""

import contextlib
import dataclasses
import email.utils
import functools
import http.server
import json
import os
import pathlib
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

#: Addresses the servers listen on; kept away from any proxy the environment names.
HOST = "127.0.0.1"
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def environ(extra=None):
    """os.environ without any AWS_* variable (no profile or token of the machine may leak into a
    test) and without proxies for the loopback servers, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(NO_PROXY)
    env.update(extra or {})
    return env


def no_proxy_opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_answers(url, timeout=60.0, process=None):
    """Polls `url` until any HTTP answer comes back (an error status counts: the server is up)."""
    opener, deadline, last = no_proxy_opener(), time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before answering {url}")
        try:
            with opener.open(url, timeout=2) as response:
                response.read()
            return
        except urllib.error.HTTPError:
            return
        except OSError as e:  # refused, reset, timed out: not up yet
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {last}")


# ---------------------------------------------------------------------------------------------
# S3 (moto)
# ---------------------------------------------------------------------------------------------

#: Dummy credentials: moto accepts any.
S3_KEY_ID, S3_SECRET, S3_REGION = "testing", "testing", "us-east-1"


@dataclasses.dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log: pathlib.Path

    @property
    def env(self):
        """The variables the object_store crate (and boto3) read for this server: dummy
        credentials, plain HTTP, path-style addressing."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": S3_REGION,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ALLOW_HTTP": "true",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def environ(self, extra=None):
        """The whole environment for a subprocess that talks to this server."""
        return environ({**self.env, **(extra or {})})

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION, config=Config(s3={"addressing_style": "path"}, proxies={}),
        )

    def create_bucket(self, bucket):
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        return client

    def upload(self, bucket, folder, prefix=""):
        """Creates `bucket` (if needed) and puts every file below `folder` at `prefix/<relative
        path>`; returns the keys written, sorted."""
        client, folder, keys = self.create_bucket(bucket), pathlib.Path(folder), []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(folder).as_posix()]))
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def keys(self, bucket, prefix=""):
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _moto_command(port):
    script = pathlib.Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", HOST, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


@contextlib.contextmanager
def s3_server(log_dir):
    """moto's S3 server on a free port, up and answering; stopped (and its log kept in
    `log_dir/moto.log`) on exit."""
    port, log = free_port(), pathlib.Path(log_dir) / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(_moto_command(port), stdout=out, stderr=subprocess.STDOUT, env=environ())
    server = S3Server(f"http://{HOST}:{port}", process, log)
    try:
        try:
            wait_until_answers(server.endpoint + "/", process=process)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nmoto log:\n{log.read_text(errors='replace')}") from None
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One moto S3 server for the session (tests use their own buckets)."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _DirectoryHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the files below `directory` (no listings), with Content-Length, Last-Modified,
    an ETag and single `bytes=a-b` ranges; subclasses decide what to do with a body."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: a dropped connection is then a real fault

    def __init__(self, *args, directory, server_state, **kwargs):
        self.directory, self.state = pathlib.Path(directory).resolve(), server_state
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # quiet; the state records what was asked
        pass

    def _file(self):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        target = (self.directory / path.lstrip("/")).resolve()
        if self.directory not in target.parents or not target.is_file():
            return path, None
        return path, target

    def _not_found(self):
        body = b"not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def _serve(self, send_body):
        path, target = self._file()
        self.state.record(self.command, path, self.headers.get("Range"))
        if target is None:
            return self._not_found()
        data = target.read_bytes()
        start, end, status = 0, len(data), 200
        if (asked := self.headers.get("Range")) and (m := _RANGE.match(asked.strip())):
            a, b = m.groups()
            if a == "" and b != "":  # the last b bytes
                start = max(len(data) - int(b), 0)
            else:
                start, end = int(a), min(int(b) + 1, len(data)) if b else len(data)
            if start >= len(data) or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        stat = target.stat()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-tar" if target.suffix == ".tar" else "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if self.command == "GET":
            send_body(path, data[start:end])

    def do_HEAD(self):
        self._serve(lambda path, body: None)

    def do_GET(self):
        self._serve(lambda path, body: self.wfile.write(body))


class _FaultyHandler(_DirectoryHandler):
    def do_GET(self):
        self._serve(self._send_or_drop)

    def _send_or_drop(self, path, body):
        if not self.state.should_drop(path):
            self.wfile.write(body)
            return
        # About half the promised bytes, then the connection goes: the client sees a body shorter
        # than its Content-Length (end of file, or a reset with `reset=True`).
        self.wfile.write(body[: max(len(body) // 2, 1)])
        self.wfile.flush()
        self.close_connection = True
        if self.state.reset:  # close at once with SO_LINGER 0: a TCP reset, no FIN first
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
        self.state.note_drop(path)


class _State:
    """What a server was asked, and (faulty servers) which paths to drop."""

    MODES = ("off", "once", "always")

    def __init__(self, mode="off", reset=False, suffix=".tar"):
        assert mode in self.MODES, mode
        self.lock, self.mode, self.reset, self.suffix = threading.Lock(), mode, reset, suffix
        self.requests = []  # (method, path, range header or None), in arrival order
        self.gets, self.drops = {}, {}  # path -> count

    def record(self, method, path, range_header):
        with self.lock:
            self.requests.append((method, path, range_header))
            if method == "GET":
                self.gets[path] = self.gets.get(path, 0) + 1

    def should_drop(self, path):
        with self.lock:
            if self.mode == "off" or not path.endswith(self.suffix):
                return False
            return self.mode == "always" or self.drops.get(path, 0) == 0

    def note_drop(self, path):
        with self.lock:
            self.drops[path] = self.drops.get(path, 0) + 1


@dataclasses.dataclass
class HTTPServer:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    directory: pathlib.Path
    state: _State

    def url_of(self, relative):
        return f"{self.url}/{pathlib.PurePosixPath(relative).as_posix().lstrip('/')}"

    @property
    def gets(self):
        """GET requests per path (`/train-000000.tar`), a copy."""
        with self.state.lock:
            return dict(self.state.gets)

    @property
    def drops(self):
        """Connections dropped per path, a copy."""
        with self.state.lock:
            return dict(self.state.drops)

    @property
    def requests(self):
        """(method, path, Range header or None) of every request, in arrival order."""
        with self.state.lock:
            return list(self.state.requests)

    def set_mode(self, mode):
        """Faulty servers: "off", "once" (the first GET of each `.tar` from now on drops) or
        "always"; forgets the counts so far."""
        assert mode in _State.MODES, mode
        with self.state.lock:
            self.state.mode = mode
            self.state.requests, self.state.gets, self.state.drops = [], {}, {}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a client that gave up: not a test failure
        pass


@contextlib.contextmanager
def _serve(directory, handler, state):
    server = _Server((HOST, 0), functools.partial(handler, directory=directory, server_state=state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield HTTPServer(f"http://{HOST}:{server.server_address[1]}", pathlib.Path(directory), state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def http_server(directory):
    """Serves `directory` over plain HTTP; a context manager yielding an `HTTPServer`."""
    return _serve(directory, _DirectoryHandler, _State())


def faulty_http_server(directory, mode="once", reset=False):
    """Serves `directory`, but the first GET of each `.tar` (`mode="once"`; every GET with
    `mode="always"`, none with `mode="off"`) sends the full Content-Length, about half the body,
    and closes the connection (a clean end of file, or a TCP reset with `reset=True`).
    `server.gets` / `server.drops` count per path; `server.set_mode` switches and resets them."""
    return _serve(directory, _FaultyHandler, _State(mode=mode, reset=reset))


# ---------------------------------------------------------------------------------------------
# WebDataset shards
# ---------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class WrittenShards:
    shards: list  # pathlib.Path of each shard, in order
    count: int  # samples written
    samples: list  # (key, label) in write order
    shard_lengths: list  # samples per shard, in the order of `shards`
    classes: list  # class folder names, sorted (label = index)


def image_folder_samples(split_dir):
    """(path, label) of every image below `split_dir/<class>/`, classes sorted, label = the class's
    index in that order; and the class names."""
    split_dir = pathlib.Path(split_dir)
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted(split_dir.joinpath(name).iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return samples, classes


def write_webdataset(split_dir, out_dir, pattern="train-%06d.tar", maxcount=8, json_label=False, seed=0,
                     classes=None, cls_member=True):
    """Writes the ImageFolder split `split_dir` as WebDataset shards `out_dir/pattern` with
    `webdataset.ShardWriter`: each sample `{"__key__": "<class>_<stem>", "jpg": bytes, "cls": label}`
    (plus `"json": {"label": label, "filename": "<class>/<file>"}` with `json_label`; without the
    `cls` member with `cls_member=False`, so only the json holds the label), at most `maxcount` per
    shard, in an order shuffled with `seed` (None: the folder's order). `classes` (the training
    split's list) numbers another split's labels. Returns a `WrittenShards`."""
    assert cls_member or json_label, "a sample needs a label"
    import webdataset as wds

    samples, found = image_folder_samples(split_dir)
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        samples = [(path, index[found[label]]) for path, label in samples]
    else:
        classes = found
    if seed is not None:
        random.Random(seed).shuffle(samples)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, closed = [], []
    with wds.ShardWriter(str(out_dir / pattern), maxcount=maxcount, verbose=0, post=closed.append) as sink:
        for path, label in samples:
            key = f"{path.parent.name}_{path.stem}".replace(".", "_")
            sample = {"__key__": key, "jpg": path.read_bytes()}
            if cls_member:
                sample["cls"] = label
            if json_label:
                sample["json"] = {"label": label, "filename": f"{path.parent.name}/{path.name}"}
            sink.write(sample)
            written.append((key, label))
    shards = [pathlib.Path(name) for name in closed]
    expected = [out_dir / (pattern % i) for i in range(-(-len(written) // maxcount))]
    assert shards == expected, f"ShardWriter wrote {shards}, not {expected}"
    lengths = [min(maxcount, len(written) - i * maxcount) for i in range(len(shards))]
    return WrittenShards(shards, len(written), written, lengths, classes)


def brace_pattern(shards, prefix=""):
    """`prefix + "train-{000000..000002}.tar"` for consecutive shards named `<stem>-NNNNNN.tar` (or
    `NNNNNN.tar`); a single shard is its plain name."""
    names = [pathlib.Path(s).name for s in shards]
    m = [re.fullmatch(r"(.*?)(\d+)(\.tar)", n) for n in names]
    assert all(m), names
    head, tail, width = m[0].group(1), m[0].group(3), len(m[0].group(2))
    numbers = [int(x.group(2)) for x in m]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), names
    if len(names) == 1:
        return prefix + names[0]
    return f"{prefix}{head}{{{numbers[0]:0{width}d}..{numbers[-1]:0{width}d}}}{tail}"


def write_info_json(out_dir, splits, num_classes, name="pe-test"):
    """timm's `_info.json` in `out_dir`: `splits` maps a split name to its `WrittenShards`; the
    filenames are relative to `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    info = {
        "name": name,
        "splits": {
            split: {
                "name": split,
                "num_samples": written.count,
                "filenames": [pathlib.Path(s).relative_to(out_dir).as_posix() for s in written.shards],
                "shard_lengths": list(written.shard_lengths),
            }
            for split, written in splits.items()
        },
        "num_classes": num_classes,
    }
    (out_dir / "_info.json").write_text(json.dumps(info, indent=2))
    return info


def write_sizes_json(out_dir, *written):
    """open_clip's `sizes.json` in `out_dir`: `{"<shard file>": samples}` for every shard given."""
    sizes = {pathlib.Path(s).name: n for w in written for s, n in zip(w.shards, w.shard_lengths)}
    (pathlib.Path(out_dir) / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return sizes


def read_webdataset(urls, label_key="cls"):
    """(key, label, jpg bytes) of every sample `webdataset.WebDataset(urls)` yields, in order (no
    shuffling, no decoding); the label from `KEY.cls`, or with `label_key="json:FIELD"` the field of
    `KEY.json` (pe's `data.label_key`)."""
    import webdataset as wds

    def label(sample):
        if label_key == "cls":
            return int(sample["cls"])
        assert label_key.startswith("json:"), label_key
        return int(json.loads(sample["json"])[label_key[len("json:"):]])

    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return [(s["__key__"], label(s), s.get("jpg")) for s in dataset]
