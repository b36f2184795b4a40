"""Datasets from the command line, on small generated local copies: `gpucnn train --dataset` for
mnist, fashion-mnist (1x28x28 into lenet5 unchanged), cifar100 into resnet20 (the head follows the
class count, fine and coarse), your own PNG folders; a config that pins a shape; `info --data`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn.build import fit_classifier
from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import cli
from gpucnn.config import load_config, tomllib, validate_config
from gpucnn.data.mnist import FASHION_MNIST
from gpucnn.data.split import validation_split
from test_data_cifar100 import COARSE, FINE, write_folder as write_cifar100
from test_data_mnist import write_idx_folder

Image = pytest.importorskip("PIL.Image")

QUICK = ["--device", "cpu", "--epochs", "1", "--batch-size", "8", "--set", "training.curves=false"]


def train(*args):
    result = CliRunner().invoke(cli, ["train", *args, *QUICK])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def no_kernel_check(monkeypatch):
    """`gpucnn info` compiles every kernel with NVRTC (~20 s); these tests read only its dataset lines."""
    monkeypatch.setattr("gpucnn.cli._kernel_check", lambda: "not checked (test)")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def written_layers(out):
    return tomllib.loads((out / "config.toml").read_text())["model"]["layers"]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_lenet5_trains_on_a_local_idx_copy(tmp_path, name):
    arrays = write_idx_folder(tmp_path / "data" / name, n_train=40, n_test=10, seed=5)
    out = tmp_path / "run"
    output = train("--config", "lenet5", "--dataset", name, "--data-dir", str(tmp_path / "data"), "--out", str(out))
    train_idx, val_idx = validation_split(arrays["train-labels-idx1-ubyte"], 0.1, 0)  # 10% of each class
    assert len(train_idx) + len(val_idx) == 40 and len(val_idx) > 0
    assert (f"data: {name}, {len(train_idx)} train / {len(val_idx)} validation / 10 test images (1, 28, 28), "
            f"{-(-len(train_idx) // 8)} batches of 8") in output
    assert "Input shape: (None, 1, 28, 28)" in output
    assert "0: Conv2D(1, 6, kernel_size=(5, 5)" in output and "(None, 16, 4, 4)" in output  # 28 -> 24 -> 12 -> 8 -> 4
    assert "7: Dense(256, 120)" in output  # 16 x 4 x 4 flattened: inferred, not lenet5's 400
    assert [r["epoch"] for r in rows(out)] == [1] and np.isfinite(rows(out)[0]["train_loss"])
    ckpt = load_checkpoint(out / "best.npz")
    assert ckpt.input_shape == (1, 28, 28) and ckpt.config["data"]["dataset"] == name
    assert ckpt.classes == (list(FASHION_MNIST.classes) if name == "fashion-mnist" else [str(d) for d in range(10)])
    assert written_layers(out) == validate_config(load_config("lenet5"))["model"]["layers"]  # unchanged


@pytest.mark.parametrize(("mode", "classes"), [("fine", FINE), ("coarse", COARSE)])
def test_resnet20_trains_on_a_local_cifar100_copy(tmp_path, mode, classes):
    write_cifar100(tmp_path / "data", n_train=50, n_test=10)
    out = tmp_path / "run"
    output = train("--config", "resnet20", "--dataset", "cifar100", "--data-dir", str(tmp_path / "data"),
                   "--out", str(out), "--set", f"data.label_mode={mode}")
    k = len(classes)
    assert f"note: model.layers[22].out_features: 10 -> {k}, one logit per class of the dataset" in output
    assert "Input shape: (None, 3, 32, 32)" in output and f"22: Dense(64, {k})" in output
    assert "data: cifar100, " in output and "(3, 32, 32), " in output
    assert [r["epoch"] for r in rows(out)] == [1] and np.isfinite(rows(out)[0]["train_loss"])
    assert written_layers(out)[22]["out_features"] == k  # what --resume and evaluate rebuild
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.classes == classes
    # the checkpoint evaluates as written, and resumes without --dataset
    assert CliRunner().invoke(cli, ["evaluate", str(out / "last.npz"), "--device", "cpu"]).exit_code == 0


def test_fit_classifier_changes_only_the_last_dense_layer():
    config = validate_config(load_config("cifar10-fast"))  # dense then scale: the head is not the last layer
    layers = config["model"]["layers"]
    assert [spec["type"] for spec in layers[-2:]] == ["dense", "scale"] and len(layers) == 27
    fitted, note = fit_classifier(config, 7)
    assert note == "model.layers[25].out_features: 10 -> 7, one logit per class of the dataset"
    changed = [i for i, (a, b) in enumerate(zip(config["model"]["layers"], fitted["model"]["layers"])) if a != b]
    assert changed == [25] and fitted["model"]["layers"][25]["out_features"] == 7
    assert config["model"]["layers"][25]["out_features"] == 10  # the given config is not modified
    assert fit_classifier(config, 10) == (config, None)


def test_folder_of_pngs_trains_and_is_listed_by_info(tmp_path, no_kernel_check):
    rng = np.random.default_rng(0)
    images = tmp_path / "pets"
    for split, count in (("train", 6), ("val", 2)):
        for c, name in enumerate(("cat", "dog", "fox")):
            (images / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 70 * c, 20, size=(20 + i, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(images / split / name / f"{i}.png")
    out, data = tmp_path / "run", tmp_path / "cache"
    output = train("--config", "lenet5", "--dataset", "folder", "--set", f'data.path="{images}"',
                   "--data-dir", str(data), "--out", str(out))
    # the shipped val/ is the validation set (no split of train); test falls back to val
    assert "note: model.layers[11].out_features: 10 -> 3, one logit per class of the dataset" in output
    assert "data: folder, 18 train / 6 validation / " in output and "(3, 32, 32)" in output
    assert load_checkpoint(out / "last.npz").classes == ["cat", "dog", "fox"]
    info = CliRunner().invoke(cli, ["info", "--data", "--data-dir", str(data)])
    assert info.exit_code == 0, info.output
    (line,) = [ln for ln in info.output.splitlines() if ln.startswith("dataset folder")]
    assert f"cached 24 images of {images.resolve()} at 32x32" in line


def test_info_data_lists_the_local_copies(tmp_path, no_kernel_check):
    write_idx_folder(tmp_path / "mnist", n_train=4, n_test=2)
    write_cifar100(tmp_path, n_train=3, n_test=2)
    (tmp_path / "fashion-mnist").mkdir()
    result = CliRunner().invoke(cli, ["info", "--data", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    listed = {ln.split()[1]: ln for ln in result.output.splitlines() if ln.startswith("dataset ")}
    assert set(listed) == {"cifar100", "mnist", "fashion-mnist", "digits"}
    assert listed["cifar100"].endswith(f"extracted    {tmp_path / 'cifar-100-binary'}")
    assert listed["mnist"].endswith(f"complete     {tmp_path / 'mnist'}")
    assert "incomplete (missing train-images-idx3-ubyte" in listed["fashion-mnist"]
    empty = CliRunner().invoke(cli, ["info", "--data", "--data-dir", str(tmp_path / "nothing")])
    assert [ln.split()[1] for ln in empty.output.splitlines() if ln.startswith("dataset ")] == ["digits"]


def test_a_config_that_pins_a_shape_names_the_layer(tmp_path):
    """A 13x13 kernel after conv5 + pool fits CIFAR's 14x14 maps but not MNIST's 12x12."""
    write_idx_folder(tmp_path / "data" / "mnist", n_train=20, n_test=5)
    wide = ["--set", 'model.layers[3]={type = "conv2d", out_channels = 16, kernel_size = 13}']
    result = CliRunner().invoke(cli, ["train", "--config", "lenet5", "--dataset", "mnist", "--data-dir",
                                      str(tmp_path / "data"), "--out", str(tmp_path / "run"), *QUICK, *wide])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "gpucnn: error: model.layers[3].kernel_size: got 13, but the conv2d input at this depth is 12x12; "
        "use a kernel of at most 12x12, more padding, or less downsampling before it")
    assert "Traceback" not in result.output
