"""Downloading CIFAR-10 from a local HTTP server: success, checksum, truncation, network errors.

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
    """Serves ``server.body`` at any path; ``server.mode`` picks ok / truncate / 404 / hang."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.hits += 1
        mode, body = self.server.mode, self.server.body
        if mode == "404":
            self.send_error(404, "Not Found")
            return
        if mode == "hang":
            time.sleep(1.0)
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
    srv.mode, srv.body, srv.hits = "ok", ARCHIVE, 0
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
