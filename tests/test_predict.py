"""gpucnn.load / TrainedModel.predict / the predict command, and reading image files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn.build import build_model
from gpucnn.checkpoint import CheckpointError, Progress, load_checkpoint, save_checkpoint
from gpucnn.config import load_config, validate_config
from gpucnn.errors import ConfigError, DataError
from gpucnn.images import read_images, read_images_named
from gpucnn.predict import load, predict_command, softmax

PIL = pytest.importorskip("PIL.Image")

SHAPE = (3, 32, 32)
MEAN = np.array([0.2, 0.3, 0.4])
STD = np.array([0.5, 0.25, 0.2])


@pytest.fixture
def config():
    return validate_config(load_config("digits"))


def _randomize(model, seed=1):
    """Non-zero biases so a test would see a dropped bias."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for name, value in layer.params.items():
            layer.set_param(name, np.asarray(value) + 0.1 * rng.standard_normal(value.shape))


def _checkpoint(tmp_path, config, classes=None, input_shape=SHAPE, name="ckpt.npz"):
    model = build_model(config, SHAPE, 10, seed=3)
    _randomize(model)
    path = tmp_path / name
    save_checkpoint(path, model, None, config, Progress(epoch=2), MEAN, STD,
                    classes=classes, input_shape=input_shape)
    return path, model


def _reference_probs(model, images_uint8):
    x = (images_uint8.astype(np.float64) / 255 - MEAN.reshape(1, 3, 1, 1)) / STD.reshape(1, 3, 1, 1)
    logits = model.forward(x.astype(np.float32), training=False).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def test_predict_normalizes_batches_and_applies_softmax(tmp_path, config):
    names = [f"c{i}" for i in range(10)]
    path, model = _checkpoint(tmp_path, config, classes=names)
    images = np.random.default_rng(0).integers(0, 256, (7, *SHAPE), dtype=np.uint8)
    want_logits, want = _reference_probs(model, images)
    trained = load(path)
    assert trained.classes == names and trained.input_shape == SHAPE and trained.epoch == 2
    np.testing.assert_allclose(trained.predict_logits(images, batch_size=3), want_logits, rtol=1e-5, atol=1e-5)
    probs = trained.predict(images, batch_size=3)
    assert probs.dtype == np.float32 and probs.shape == (7, 10)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    # float images in [0, 1] are the same pixels as uint8 / 255; one image without N works too
    np.testing.assert_allclose(trained.predict(images.astype(np.float32) / 255), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trained.predict(images[4])[0], want[4], rtol=1e-5, atol=1e-6)


def test_top_k_orders_by_probability(tmp_path, config):
    path, model = _checkpoint(tmp_path, config, classes=list("abcdefghij"))
    images = np.random.default_rng(1).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    _, want = _reference_probs(model, images)
    top = gpucnn.load(path).top_k(images, 3)
    for row, pairs in zip(want, top):
        best = np.argsort(-row)[:3]
        assert [c for c, _ in pairs] == ["abcdefghij"[j] for j in best]
        np.testing.assert_allclose([p for _, p in pairs], row[best], rtol=1e-5)
    assert len(gpucnn.load(path).top_k(images, 50)[0]) == 10  # at most K


def test_predict_rejects_wrong_shapes_and_types(tmp_path, config):
    trained = load(_checkpoint(tmp_path, config)[0])
    with pytest.raises(ValueError, match=r"expected images \(N, 3, 32, 32\)"):
        trained.predict(np.zeros((2, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        trained.predict(np.zeros((2, *SHAPE), np.int32))
    with pytest.raises(ValueError, match="batch_size"):
        trained.predict(np.zeros((2, *SHAPE), np.uint8), batch_size=0)


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-7)


def test_a_trained_model_predicts_what_training_measured(tmp_path, config):
    """After a real (1 epoch) run, best.npz classifies the test images as the Trainer's evaluation did."""
    from gpucnn.data import load_dataset
    from gpucnn.build import build_run
    from gpucnn.train import Trainer

    config["training"]["epochs"] = 1
    dataset = load_dataset("digits")
    Trainer(build_run(config, dataset), tmp_path, echo=lambda s: None, progress_bar=False).fit()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    trained = load(tmp_path / "best.npz")
    pred = trained.predict(dataset.x_test, batch_size=100).argmax(axis=1)
    assert np.mean(pred == dataset.y_test) == pytest.approx(record["test_acc"], abs=1e-9)
    assert record["test_acc"] > 0.5  # a real model, not chance


def test_old_checkpoints_fall_back_to_the_dataset_classes(tmp_path, config):
    path, _ = _checkpoint(tmp_path, config, classes=None, input_shape=None)
    ckpt = load_checkpoint(path)
    assert ckpt.classes is None and ckpt.input_shape is None
    trained = load(path)
    assert trained.classes == [str(d) for d in range(10)] and trained.input_shape == SHAPE


def test_checkpoint_round_trips_classes_and_shape(tmp_path, config):
    path, _ = _checkpoint(tmp_path, config, classes=["zéro", *map(str, range(1, 10))])
    ckpt = load_checkpoint(path)
    assert ckpt.classes[0] == "zéro" and ckpt.input_shape == SHAPE
    with np.load(path, allow_pickle=False) as data:  # still readable without pickle
        assert data["data/classes"].shape == (10,)


def test_unknown_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "nope.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="nope.npz"):
        load(bad)


def test_emulated_backend_predicts_like_numpy(tmp_path, config, emulated_backend):
    """The same checkpoint on the emulated (CUDA kernel) backend gives the numpy probabilities."""
    from gpucnn import backend as backend_module

    with backend_module.use_backend("numpy"):
        path, model = _checkpoint(tmp_path, config)
        images = np.random.default_rng(2).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
        _, want = _reference_probs(model, images)
    trained = load(path)
    assert trained.backend.name == "emulated"
    np.testing.assert_allclose(trained.predict(images, batch_size=2), want, rtol=1e-4, atol=1e-5)
    # device= builds on the named backend without changing the current one
    assert load(path, device="numpy").backend.name == "numpy"
    assert backend_module.get_backend().name == "emulated"


def test_import_gpucnn_stays_light():
    code = ("import sys, gpucnn; heavy = [m for m in ('gpucnn.predict', 'gpucnn.build', 'onnx', 'matplotlib', "
            "'PIL') if m in sys.modules]; print(heavy); assert callable(gpucnn.load)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Image files --------------------------------------------------------------------------------
def _png(path, array, mode):
    PIL.fromarray(array, mode=mode).save(path)
    return path


def test_read_png_converts_channels_and_size(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gray = np.random.default_rng(1).integers(0, 256, (16, 24), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((32, 32), 128, np.uint8)])
    files = [_png(tmp_path / "rgb.png", rgb, "RGB"), _png(tmp_path / "gray.png", gray, "L"),
             _png(tmp_path / "rgba.png", rgba, "RGBA")]
    images, names = read_images_named(files, SHAPE)
    assert images.shape == (3, *SHAPE) and images.dtype == np.uint8
    assert names == [str(f) for f in files]
    np.testing.assert_array_equal(images[0], rgb.transpose(2, 0, 1))  # no resize, exact pixels
    np.testing.assert_array_equal(images[2], rgb.transpose(2, 0, 1))  # alpha dropped
    # grayscale repeated on 3 channels and resized bilinearly to 32x32
    want = np.asarray(PIL.fromarray(gray).resize((32, 32), PIL.Resampling.BILINEAR))
    for c in range(3):
        np.testing.assert_array_equal(images[1, c], want)
    one = read_images([files[0]], (1, 8, 8))
    assert one.shape == (1, 1, 8, 8)


def test_read_arrays_in_both_layouts(tmp_path):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", batch)
    np.save(tmp_path / "nhwc.npy", batch.transpose(0, 2, 3, 1))
    np.save(tmp_path / "one.npy", batch[1].transpose(1, 2, 0))
    np.savez(tmp_path / "many.npz", images=batch[:2], labels=np.arange(2))
    images, names = read_images_named([tmp_path / "nchw.npy", tmp_path / "nhwc.npy", tmp_path / "one.npy",
                                       tmp_path / "many.npz"], SHAPE)
    np.testing.assert_array_equal(images, np.concatenate([batch, batch, batch[1:2], batch[:2]]))
    assert names[3] == f"{tmp_path / 'nchw.npy'}[3]" and names[8] == str(tmp_path / "one.npy")
    floats = batch.astype(np.float32) / 255
    np.save(tmp_path / "f.npy", floats)
    mixed = read_images([tmp_path / "f.npy", tmp_path / "nchw.npy"], SHAPE)
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, np.concatenate([floats, floats]), atol=1e-7)


def test_bad_array_files_name_the_file_and_the_expected_shape(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"small\.npy.*\(2, 3, 28, 28\).*\(3, 32, 32\) or \(32, 32, 3\)"):
        read_images([tmp_path / "small.npy"], SHAPE)
    np.save(tmp_path / "range.npy", np.full(SHAPE, 255.0, np.float32))
    with pytest.raises(DataError, match=r"range\.npy.*\[0, 1\]"):
        read_images([tmp_path / "range.npy"], SHAPE)
    np.save(tmp_path / "ints.npy", np.zeros(SHAPE, np.int64))
    with pytest.raises(DataError, match="int64 pixels"):
        read_images([tmp_path / "ints.npy"], SHAPE)
    with pytest.raises(DataError, match="missing.png: no such file"):
        read_images([tmp_path / "missing.png"], SHAPE)
    (tmp_path / "fake.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="fake.png: not a readable image"):
        read_images([tmp_path / "fake.png"], SHAPE)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        read_images([tmp_path / "notes.txt"], SHAPE)


def test_missing_pillow_says_how_to_get_it(tmp_path, monkeypatch):
    path = _png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8), "RGB")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r'pip install "gpucnn\[images\]"'):
        read_images([path], SHAPE)


# The command body ----------------------------------------------------------------------------
def test_predict_command_table_and_json(tmp_path, config):
    path, model = _checkpoint(tmp_path, config, classes=[f"digit{i}" for i in range(10)])
    batch = np.random.default_rng(5).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    np.save(tmp_path / "two.npy", batch)
    _png(tmp_path / "x.png", batch[0].transpose(1, 2, 0), "RGB")
    _, want = _reference_probs(model, batch)
    lines: list[str] = []
    result = predict_command(path, [tmp_path / "two.npy", tmp_path / "x.png"], top_k=2, echo=lines.append)
    table = "\n".join(lines).splitlines()
    assert table[1].split() == ["file", "rank", "class", "probability"]
    best = int(np.argmax(want[0]))
    assert table[3].split()[1:] == ["1", f"digit{best}", f"{100 * want[0, best]:.2f}%"]
    assert len(table) == 3 + 3 * 2  # header, title, rule + 3 images x 2 ranks
    assert result[2]["top_k"][0]["class"] == f"digit{best}"  # the PNG holds the same pixels
    lines.clear()
    predict_command(path, [tmp_path / "two.npy"], top_k=1, as_json=True, echo=lines.append)
    data = json.loads(lines[0])
    assert [p["file"] for p in data["predictions"]] == [f"{tmp_path / 'two.npy'}[{i}]" for i in range(2)]
    assert data["predictions"][1]["top_k"][0]["probability"] == pytest.approx(want[1].max(), rel=1e-5)
    with pytest.raises(ConfigError, match="--top-k"):
        predict_command(path, [tmp_path / "two.npy"], top_k=0, echo=lines.append)
