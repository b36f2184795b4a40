"""Downloads from a local HTTP server: success, checksum, truncation, network errors, stalls, deadlines.

No network: a test-made archive in the official layout is served from 127.0.0.1.
"""

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time

import numpy as np
import pytest

from gpucnn.data import load_dataset
from gpucnn.data.cifar10 import load_cifar10
from gpucnn.data.download import download_file
from gpucnn.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar_archive(records_per_file=3, seed=0):
    """(archive bytes, {file name: (x, y)}) in the official cifar-10-binary.tar.gz layout."""
    rng = np.random.default_rng(seed)
    contents, buf = {}, io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        files = {}
        for name in names:
            x = rng.integers(0, 256, size=(records_per_file, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, 10, size=records_per_file).astype(np.uint8)
            contents[name] = (x, y)
            files[name] = np.concatenate([y[:, None], x.reshape(records_per_file, -1)], axis=1).tobytes()
        files["batches.meta.txt"] = ("\n".join(CLASSES) + "\n\n").encode()
        dir_info = tarfile.TarInfo("cifar-10-batches-bin")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), contents


ARCHIVE, CONTENTS = make_cifar_archive()
ARCHIVE_MD5 = hashlib.md5(ARCHIVE).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.body`` at any path (or ``server.files[path]`` when set);
    ``server.mode`` picks ok / truncate / 404 / hang / stall (a few bytes, then silence) /
    trickle (one byte per 0.2 s)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.hits += 1
        self.server.paths.append(self.path)
        mode, body = self.server.mode, self.server.body
        if self.server.files is not None:
            if self.path not in self.server.files:
                self.send_error(404, "Not Found")
                return
            body = self.server.files[self.path]
        if mode == "404":
            self.send_error(404, "Not Found")
            return
        if mode == "hang":
            time.sleep(1.0)
            return
        if mode in ("stall", "trickle"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if mode == "stall":
                    self.wfile.write(body[:10])
                    self.wfile.flush()
                    time.sleep(1.5)
                    return
                for i in range(min(len(body), 40)):  # at most 8 s, in case the client never gives up
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up: that is the point of the test
                pass
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if mode == "ok" else body[: len(body) // 2])  # truncate: close early

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.mode, srv.body, srv.hits, srv.files, srv.paths = "ok", ARCHIVE, 0, None, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-binary.tar.gz"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cifar_env(server, monkeypatch):
    monkeypatch.setenv("GPUCNN_CIFAR10_URL", server.url)
    monkeypatch.setenv("GPUCNN_CIFAR10_MD5", ARCHIVE_MD5)
    return server


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_extracts_and_loads(cifar_env, tmp_path):
    ds = load_dataset("cifar10", data_dir=tmp_path, progress=False)
    assert cifar_env.hits == 1
    assert ds.name == "cifar10" and ds.classes == CLASSES
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.x_test.shape == (3, 3, 32, 32)
    expected_x = np.concatenate([CONTENTS[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    expected_y = np.concatenate([CONTENTS[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.x_train, expected_x)
    np.testing.assert_array_equal(ds.y_train, expected_y)
    np.testing.assert_array_equal(ds.x_test, CONTENTS["test_batch.bin"][0])
    np.testing.assert_array_equal(ds.y_test, CONTENTS["test_batch.bin"][1])
    assert leftovers(tmp_path) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    # second load: uses the extracted folder, no request
    cifar_env.mode = "404"
    again = load_dataset("cifar10", data_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert cifar_env.hits == 1


def test_data_dir_from_environment(cifar_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DATA_DIR", str(tmp_path / "cache"))
    ds = load_dataset("cifar10", progress=False)
    assert ds.x_train.shape[0] == 15
    assert (tmp_path / "cache" / "cifar-10-batches-bin" / "test_batch.bin").is_file()


def test_progress_bar_runs(server, tmp_path, capsys):
    download_file(server.url, tmp_path / "a.tar.gz", md5=ARCHIVE_MD5, progress=True)
    assert "downloading a.tar.gz" in capsys.readouterr().err
    assert (tmp_path / "a.tar.gz").read_bytes() == ARCHIVE


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(DataError, match="checksum: expected md5 0{32}, got " + ARCHIVE_MD5) as info:
        download_file(server.url, tmp_path / "a.tar.gz", md5="0" * 32, progress=False)
    assert server.url in str(info.value) and "\n" not in str(info.value)
    assert leftovers(tmp_path) == []


def test_official_checksum_is_the_default(cifar_env, tmp_path, monkeypatch):
    monkeypatch.delenv("GPUCNN_CIFAR10_MD5")
    with pytest.raises(DataError, match="expected md5 c32a1d4ab5d03f1284b67883e8d87530"):
        load_cifar10(data_dir=tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_truncated_download_then_retry_succeeds(cifar_env, tmp_path):
    cifar_env.mode = "truncate"
    with pytest.raises(DataError, match=f"closed after {len(ARCHIVE) // 2} of {len(ARCHIVE)} bytes"):
        load_dataset("cifar10", data_dir=tmp_path, progress=False)
    assert leftovers(tmp_path) == []
    cifar_env.mode = "ok"
    ds = load_dataset("cifar10", data_dir=tmp_path, progress=False)
    assert ds.x_train.shape == (15, 3, 32, 32)


def test_truncated_download_without_checksum_leaves_nothing(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(DataError, match="connection closed after"):
        download_file(server.url, tmp_path / "a.tar.gz", md5=None, progress=False)
    assert leftovers(tmp_path) == []


def test_http_404_is_one_line_with_url(server, tmp_path):
    server.mode = "404"
    with pytest.raises(DataError) as info:
        download_file(server.url, tmp_path / "a.tar.gz", progress=False)
    assert str(info.value) == f"could not download {server.url}: HTTP 404 Not Found"
    assert leftovers(tmp_path) == []


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(DataError, match=f"could not download {url}: .*[Rr]efused"):
        download_file(url, tmp_path / "x.tar.gz", progress=False)
    assert leftovers(tmp_path) == []


def test_timeout(server, tmp_path):
    server.mode = "hang"
    with pytest.raises(DataError, match=f"could not download {server.url}: timed out"):
        download_file(server.url, tmp_path / "a.tar.gz", progress=False, timeout=0.2)
    assert leftovers(tmp_path) == []


def test_malformed_url(tmp_path):
    with pytest.raises(DataError, match="could not download notaurl"):
        download_file("notaurl", tmp_path / "a", progress=False)


def test_stalled_server_hits_the_stall_timeout(server, tmp_path):
    server.mode = "stall"
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        download_file(server.url, tmp_path / "a.tar.gz", progress=False, timeout=0.3, deadline=10)
    assert time.monotonic() - start < 1.2
    assert str(info.value) == f"could not download {server.url}: stalled, no data for 0.3 s after 10 bytes"
    assert leftovers(tmp_path) == []


def test_trickling_server_hits_the_deadline(server, tmp_path):
    server.mode = "trickle"
    start = time.monotonic()
    with pytest.raises(DataError, match=rf"could not download {server.url}: not finished within the 0.7 s "
                                        r"deadline \((3|4|5) bytes received\)$"):
        # each byte arrives well within the stall timeout, only the deadline can stop it
        download_file(server.url, tmp_path / "a.tar.gz", progress=False, timeout=1.0, deadline=0.7)
    assert time.monotonic() - start < 2.0
    assert leftovers(tmp_path) == []


def test_no_network_error_says_how_to_work_offline(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GPUCNN_CIFAR10_URL", f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path / "d", progress=False)
    message = str(info.value)
    assert message.startswith(f"could not download http://127.0.0.1:{port}/cifar-10-binary.tar.gz: ")
    assert message.endswith("; to work offline, put cifar-10-binary.tar.gz or its extracted cifar-10-batches-bin/ "
                            "in a folder and pass --data-dir DIR, or try gpucnn without a download: --config digits")
    assert "\n" not in message and leftovers(tmp_path / "d") == []


def test_stall_while_loading_a_dataset_keeps_the_hint(server, tmp_path, monkeypatch):
    from gpucnn.data.cifar100 import load_cifar100

    server.mode = "stall"
    with pytest.raises(DataError, match=r"stalled, no data for 0.2 s after 10 bytes; to work offline, put "
                                        r"cifar-100-binary.tar.gz or its extracted cifar-100-binary/ in a folder"):
        load_cifar100(tmp_path, progress=False, url=server.url, md5="0" * 32, timeout=0.2, deadline=5)
    assert leftovers(tmp_path) == []


def idx_gz(array):
    import gzip
    import struct

    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes())


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def served_idx(seed=0):
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4).astype(np.uint8),
              rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), rng.integers(0, 10, 2).astype(np.uint8))
    blobs = {f"{name}.gz": idx_gz(a) for name, a in zip(MNIST_FILES, arrays)}
    return arrays, blobs


@pytest.mark.parametrize("name, env, folder", [("mnist", "GPUCNN_MNIST_URL", "mnist"),
                                               ("fashion-mnist", "GPUCNN_FASHION_MNIST_URL", "fashion-mnist")])
def test_idx_download_verifies_and_loads(server, tmp_path, monkeypatch, name, env, folder):
    from gpucnn.data.mnist import load_idx_dataset

    arrays, blobs = served_idx()
    server.files = {f"/mirror/{k}": v for k, v in blobs.items()}
    md5s = {k.removesuffix(".gz"): hashlib.md5(v).hexdigest() for k, v in blobs.items()}
    monkeypatch.setenv(env, f"http://127.0.0.1:{server.server_address[1]}/mirror/")
    ds = load_idx_dataset(name, data_dir=tmp_path, progress=False, md5s=md5s)
    assert sorted(server.paths) == sorted(server.files)
    assert leftovers(tmp_path / folder) == sorted(blobs)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays[0])
    np.testing.assert_array_equal(ds.y_test, arrays[3])
    again = load_dataset(name, data_dir=tmp_path, download=False)  # the downloaded copy, no request
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert server.hits == 4


def test_idx_download_uses_the_official_md5s(server, tmp_path, monkeypatch):
    _, blobs = served_idx()
    server.files = {f"/m/{k}": v for k, v in blobs.items()}
    monkeypatch.setenv("GPUCNN_MNIST_URL", f"http://127.0.0.1:{server.server_address[1]}/m")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz failed its checksum: expected md5 "
                                        "f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        load_dataset("mnist", data_dir=tmp_path, progress=False)
    assert leftovers(tmp_path / "mnist") == []


def test_idx_download_falls_back_to_the_next_mirror(server, tmp_path, monkeypatch):
    from gpucnn.data import mnist

    arrays, blobs = served_idx(seed=4)
    port = server.server_address[1]
    server.files = {f"/good/{k}": v for k, v in blobs.items()}
    md5s = {k.removesuffix(".gz"): hashlib.md5(v).hexdigest() for k, v in blobs.items()}
    variant = mnist.Variant(**{**mnist.MNIST.__dict__, "mirrors": (f"http://127.0.0.1:{port}/gone/",
                                                                   f"http://127.0.0.1:{port}/good/")})
    monkeypatch.setitem(mnist.VARIANTS, "mnist", variant)
    monkeypatch.delenv("GPUCNN_MNIST_URL", raising=False)
    ds = mnist.load_idx_dataset("mnist", data_dir=tmp_path, progress=False, md5s=md5s)
    np.testing.assert_array_equal(ds.y_train, arrays[1])
    assert server.paths[:2] == ["/gone/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]
