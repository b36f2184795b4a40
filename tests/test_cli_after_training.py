"""The after-training commands end to end, through the real CLI, on a real short digits run.

``train --config digits --epochs 2`` runs once per module in a subprocess; ``predict``,
``export``, ``plot``, ``evaluate --confusion`` and ``bench --plot`` then run on what it wrote,
through click's CliRunner (and ``python -m gpucnn`` where the process boundary matters:
one-line errors on stderr, training without matplotlib). Expected values come from the
test itself: the restored model's forward pass on images normalized here, softmax here,
the digits labels, onnxruntime on the exported file. Every PNG written is opened and
checked for size and ink.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import gpucnn
from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import cli
from gpucnn.data.digits import load_digits
from gpucnn.plots import MAX_WIDTH_PX, bench_groups

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 12  # digits test images the predict tests classify


def _env() -> dict:
    """The environment of a ``python -m gpucnn`` child: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("GPUCNN_BACKEND", None)
    return env


def _gpucnn(*args, code: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m gpucnn ARGS`` (or ``python -c CODE ARGS``) in a child process."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "gpucnn", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)


def _check_png(path: Path, min_size=(300, 200)) -> tuple[int, int]:
    """Open the PNG: a real PNG, within the width bound, not blank (pixel spread and some ink)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        size = img.size
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert min_size[0] <= size[0] <= MAX_WIDTH_PX and min_size[1] <= size[1], f"{path}: {size}"
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"
    assert (pixels < 128).mean() > 0.005, f"{path} has almost no dark pixels"
    return size


def _invoke(*args) -> "click.testing.Result":  # noqa: F821
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two real runs of the shipped digits config: ``a`` (2 epochs) and ``b`` (1 epoch, lower lr)."""
    base = tmp_path_factory.mktemp("after-training")
    out = {"a": base / "digits-a", "b": base / "digits-b"}
    done = _gpucnn("train", "--config", "digits", "--epochs", "2", "--device", "cpu", "--out", out["a"])
    assert done.returncode == 0, done.stderr
    done = _gpucnn("train", "--config", "digits", "--epochs", "1", "--lr", "0.02", "--device", "cpu",
                   "--out", out["b"])
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    """(N_IMAGES, 3, 32, 32) uint8 digits test images."""
    return np.ascontiguousarray(digits.x_test[:N_IMAGES])


def _reference(checkpoint: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of ``images`` by the checkpoint's model, normalized and softmaxed here."""
    ckpt = load_checkpoint(checkpoint)
    model = gpucnn.load(checkpoint, device="numpy").model
    mean = np.asarray(ckpt.mean, np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(ckpt.std, np.float64).reshape(1, -1, 1, 1)
    x = ((images.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)
    logits = np.asarray(model.forward(x, training=False), np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def _probabilities(predictions: list[dict], classes: list[str]) -> np.ndarray:
    """(N, K) probabilities by class index from --json predictions that list every class."""
    out = np.full((len(predictions), len(classes)), np.nan)
    for i, p in enumerate(predictions):
        for entry in p["top_k"]:
            out[i, classes.index(entry["class"])] = entry["probability"]
    return out


# The run itself ------------------------------------------------------------------------------
def test_the_run_wrote_checkpoints_metrics_and_curves(runs):
    for run, epochs in ((runs["a"], 2), (runs["b"], 1)):
        assert (run / "best.npz").is_file() and (run / "last.npz").is_file()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", r["time"]) for r in rows)
        _check_png(run / "curves.png", (1000, 300))


# predict -------------------------------------------------------------------------------------
def test_predict_png_files_matches_the_models_own_prediction(runs, images, digits, tmp_path):
    best = runs["a"] / "best.npz"
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(image.transpose(1, 2, 0)).save(path)  # (H, W, 3) uint8: lossless
        paths.append(path)
    _, want = _reference(best, images)
    result = _invoke("predict", best, *paths, "--json", "--top-k", "10")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["checkpoint"] == str(best)
    assert [p["file"] for p in doc["predictions"]] == [str(p) for p in paths]
    probs = _probabilities(doc["predictions"], digits.classes)
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    top1 = [p["top_k"][0]["class"] for p in doc["predictions"]]
    assert top1 == [digits.classes[j] for j in want.argmax(axis=1)]
    # A model at 80-90% test accuracy after 2 epochs gets most of these right.
    assert np.mean([t == digits.classes[y] for t, y in zip(top1, digits.y_test[:N_IMAGES])]) >= 0.6


def test_predict_arrays_in_both_layouts_and_top_k(runs, images, digits, tmp_path):
    best = runs["a"] / "best.npz"
    _, want = _reference(best, images)
    nchw, nhwc = tmp_path / "nchw.npy", tmp_path / "nhwc.npz"
    np.save(nchw, images)  # (N, C, H, W) uint8
    np.savez(nhwc, images=images.transpose(0, 2, 3, 1).astype(np.float32) / 255)  # (N, H, W, C) float
    k = 3
    result = _invoke("predict", best, nchw, nhwc, "--json", "--top-k", k)
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["file"] for p in predictions] == ([f"{nchw}[{i}]" for i in range(N_IMAGES)]
                                                + [f"{nhwc}[{i}]" for i in range(N_IMAGES)])
    order = np.argsort(-want, axis=1, kind="stable")[:, :k]
    for i, p in enumerate(predictions):
        row = i % N_IMAGES
        assert len(p["top_k"]) == k
        got = [e["probability"] for e in p["top_k"]]
        assert got == sorted(got, reverse=True)
        np.testing.assert_allclose(got, want[row, order[row]], rtol=1e-4, atol=1e-6)
        assert p["top_k"][0]["class"] == digits.classes[int(order[row, 0])]
    # The table: k rows per image, the class names and percentages.
    table = _invoke("predict", best, nchw, "--top-k", 2)
    assert table.exit_code == 0, table.output
    rows = [line.split() for line in table.stdout.splitlines() if line.startswith(str(nchw))]
    assert len(rows) == 2 * N_IMAGES
    for i, (name, rank, cls, pct) in enumerate(rows):
        assert name == f"{nchw}[{i // 2}]" and rank == str(i % 2 + 1)
        assert cls == digits.classes[int(order[i // 2, i % 2])]
        assert float(pct.rstrip("%")) == pytest.approx(100 * want[i // 2, order[i // 2, i % 2]], abs=0.006)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (2, 32, 32, 1), (3, 32, 32, 4)],
                         ids=["size", "channels", "channels-last", "hwc-4-channels"])
def test_predict_wrong_array_shape_is_a_one_line_error(runs, tmp_path, shape):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, np.uint8))
    result = _invoke("predict", runs["a"] / "best.npz", path)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpucnn: error: image ")
    assert str(path) in lines[0] and str(shape) in lines[0] and "(3, 32, 32)" in lines[0]


def test_predict_error_in_a_real_process_has_no_traceback(runs, tmp_path):
    path = tmp_path / "gray.npy"
    np.save(path, np.zeros((4, 1, 32, 32), np.float32))
    done = _gpucnn("predict", runs["a"] / "best.npz", path, "--device", "cpu")
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"gpucnn: error: image {path}: array of shape (4, 1, 32, 32); the model takes (3, 32, 32) or "
        "(32, 32, 3), optionally with a batch axis"]


def test_predict_on_the_emulated_backend_agrees_with_numpy(runs, images, digits, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, images[:4])
    got = {}
    for device in ("numpy", "emulated"):
        result = _invoke("predict", runs["a"] / "best.npz", path, "--json", "--top-k", 10, "--device", device,
                         "--batch-size", 3)  # two batches, the second one short
        assert result.exit_code == 0, result.output
        got[device] = _probabilities(json.loads(result.stdout)["predictions"], digits.classes)
    np.testing.assert_allclose(got["emulated"], got["numpy"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["numpy"], _reference(runs["a"] / "best.npz", images[:4])[1], rtol=1e-4, atol=1e-6)


# gpucnn.load ---------------------------------------------------------------------------------
def test_gpucnn_load_predicts_what_evaluate_measures(runs, digits):
    best = runs["a"] / "best.npz"
    model = gpucnn.load(best)
    assert model.classes == digits.classes
    probs = model.predict(digits.x_test)
    assert probs.shape == (len(digits.y_test), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs[:N_IMAGES], _reference(best, digits.x_test[:N_IMAGES])[1], rtol=1e-4, atol=1e-6)
    # evaluate reports the accuracy of the same model on the same test images.
    result = _invoke("evaluate", best, "--device", "cpu")
    assert result.exit_code == 0, result.output
    reported = float(re.search(r"accuracy (\d+\.\d+)%", result.stdout).group(1))
    assert 100 * np.mean(probs.argmax(axis=1) == digits.y_test) == pytest.approx(reported, abs=0.005)


def test_evaluate_and_predict_share_the_restore_path(runs, images, tmp_path, monkeypatch):
    import gpucnn.build

    calls = []
    original = gpucnn.build.restored_model

    def counting(*args, **kwargs):
        calls.append(args[1])  # the per-sample input shape
        return original(*args, **kwargs)

    monkeypatch.setattr(gpucnn.build, "restored_model", counting)
    path = tmp_path / "x.npy"
    np.save(path, images[:2])
    assert _invoke("predict", runs["a"] / "best.npz", path).exit_code == 0
    assert _invoke("evaluate", runs["a"] / "best.npz", "--device", "cpu").exit_code == 0
    assert [tuple(c) for c in calls] == [(3, 32, 32), (3, 32, 32)]


# export --------------------------------------------------------------------------------------
def test_export_matches_onnxruntime_and_carries_the_class_names(runs, images, digits, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    best, output = runs["a"] / "best.npz", tmp_path / "digits.onnx"
    result = _invoke("export", best, "--output", output)
    assert result.exit_code == 0, result.output
    assert f"wrote {output}" in result.stdout
    proto = onnx.load(str(output))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == digits.classes
    assert json.loads(meta["input_shape"]) == [3, 32, 32]
    ckpt = load_checkpoint(best)
    np.testing.assert_allclose(json.loads(meta["mean"]), ckpt.mean)
    np.testing.assert_allclose(json.loads(meta["std"]), ckpt.std)
    want, _ = _reference(best, images)
    mean = np.asarray(ckpt.mean).reshape(1, -1, 1, 1)
    std = np.asarray(ckpt.std).reshape(1, -1, 1, 1)
    x = ((images / 255.0 - mean) / std).astype(np.float32)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (x[:1], x):  # the batch axis is dynamic
        (logits,) = session.run(None, {name: batch})
        np.testing.assert_allclose(logits, want[: len(batch)], rtol=1e-4, atol=1e-4)


# plot ----------------------------------------------------------------------------------------
def test_plot_one_run_and_a_comparison(runs, tmp_path):
    curves = runs["a"] / "curves.png"
    curves.unlink()
    result = _invoke("plot", runs["a"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {curves}"
    _check_png(curves, (1000, 300))
    compared = tmp_path / "x.png"
    result = _invoke("plot", runs["a"], runs["b"], "--output", compared)
    assert result.exit_code == 0, result.output
    width, height = _check_png(compared, (1000, 300))
    assert width > 2 * height  # three panels side by side
    # Each run's colour shows up: C0 (blue) and C1 (orange) lines.
    with Image.open(compared) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int32)
    for color in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(rgb - color).sum(axis=2) < 30).sum() > 200, color


def test_plot_of_several_runs_defaults_to_runs_png(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("plot", runs["a"], runs["b"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {tmp_path / 'runs.png'}"  # what `gpucnn plot --help` promises
    _check_png(tmp_path / "runs.png", (1000, 300))


def test_plot_without_metrics_is_a_one_line_error(tmp_path):
    result = _invoke("plot", tmp_path)
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"gpucnn: error: run {tmp_path}: no metrics.jsonl "
                                     "(expected the --out folder of gpucnn train)")


# evaluate --confusion ------------------------------------------------------------------------
def test_evaluate_draws_the_confusion_matrix(runs, digits, tmp_path):
    path = tmp_path / "c.png"
    result = _invoke("evaluate", runs["a"] / "best.npz", "--device", "cpu", "--confusion", path)
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.stdout
    width, height = _check_png(path, (400, 400))
    assert 0.8 < width / height < 1.6  # a square matrix with a colour bar


# bench --plot --------------------------------------------------------------------------------
def test_bench_plot_writes_one_figure_per_op_group(tmp_path):
    prefix, records = tmp_path / "b.png", tmp_path / "k.json"
    # Two batch sizes: the act family's 56 cases are more than one figure holds.
    result = _invoke("bench", "--device", "cpu", "--set", "lenet", "--batches", "2,3", "--repeats", "1",
                     "--warmup", "0", "--no-peers", "--sgemm-size", "64", "--plot", prefix, "--json", records)
    assert result.exit_code == 0, result.output
    kernels = [r for r in json.loads(records.read_text())["kernels"] if r.get("ours", {}).get("ms") is not None]
    groups = bench_groups(kernels)
    # Small families stay whole; act is split by activation, forward and backward together.
    assert {"conv", "pool", "dense", "loss", "sgd", "relu", "gelu", "dropout"} <= set(groups)
    assert "act" not in groups and "relu_forward" not in groups
    assert {r["op"] for r in groups["relu"]} == {"relu_forward", "relu_backward"} and len(groups["relu"]) == 8
    written = sorted(tmp_path.glob("b-*.png"))
    assert [p.name for p in written] == sorted(f"b-{g}.png" for g in groups)
    for path in written:
        assert f"wrote {path}" in result.stderr  # bench logs on stderr, its table on stdout
        _check_png(path, (800, 150))


# training without matplotlib -----------------------------------------------------------------
BLOCK_MATPLOTLIB = """
import sys
class _NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoMatplotlib())
sys.argv[0] = "gpucnn"
from gpucnn.cli import main
main()
"""


def test_training_without_matplotlib_goes_on_and_says_once(tmp_path):
    out = tmp_path / "run"
    done = _gpucnn("train", "--config", "digits", "--epochs", "2", "--device", "cpu", "--out", str(out),
                   code=BLOCK_MATPLOTLIB)
    assert done.returncode == 0, done.stderr
    notes = [line for line in (done.stdout + done.stderr).splitlines() if "curves.png" in line]
    assert notes == [f'note: not drawing {out / "curves.png"} (plots need matplotlib: pip install "gpucnn[plot]")']
    assert "done: 2 epochs" in done.stdout
    assert (out / "best.npz").is_file() and not (out / "curves.png").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
