"""End-to-end `gpucnn train`: tiny CIFAR-format data, the offline digits set, NaN and OOM stops."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn.backend import use_backend
from gpucnn.build import build_model
from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import cli
from gpucnn.config import load_config, tomllib, validate_config
from gpucnn.data import load_dataset
from gpucnn.errors import TrainingError
from gpucnn.build import build_run
from gpucnn.train import Trainer

RECORD = 1 + 3 * 32 * 32
TINY_LENET = [
    "--set", "training.log_every=2", "--set", "data.eval_batch_size=64", "--set", "schedule.warmup_epochs=0",
]


def write_tiny_cifar(root: Path, per_file: int = 20, seed: int = 0) -> Path:
    """A cifar-10-batches-bin folder with ``per_file`` records per batch file.

    Each class has its own mean colour plus noise, so a network can beat chance quickly.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    colours = rng.integers(30, 226, size=(10, 3))
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, size=per_file).astype(np.uint8)
        pixels = colours[labels][:, :, None] + rng.integers(-30, 31, size=(per_file, 3, 1024))
        records = np.concatenate([labels[:, None], pixels.clip(0, 255).astype(np.uint8).reshape(per_file, -1)], 1)
        records.astype(np.uint8).tofile(folder / name)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    return folder


@pytest.fixture
def tiny_cifar(tmp_path):
    write_tiny_cifar(tmp_path / "data")
    return tmp_path / "data"


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cli_train_lenet_on_tiny_cifar_writes_everything(tmp_path, tiny_cifar):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(tiny_cifar), "--device", "cpu", "--epochs", "3",
                                      "--batch-size", "10", "--lr", "0.01", "--out", str(out), *TINY_LENET])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "config.toml", "curves.png", "last.npz",
                                                     "metrics.jsonl"]
    # the resolved config: the default LeNet-5 with the command-line values in it
    written = validate_config(tomllib.loads((out / "config.toml").read_text()))
    expected = validate_config(load_config("lenet5"))
    assert written["model"] == expected["model"]
    assert written["training"]["epochs"] == 3 and written["data"]["batch_size"] == 10
    assert written["optimizer"]["lr"] == 0.01 and written["data"]["data_dir"] == str(tiny_cifar)
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds",
                "images_per_s", "time"} <= set(r)
        assert np.isfinite(r["train_loss"]) and r["seconds"] > 0 and r["images_per_s"] > 0
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["val_acc"] <= 1
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert max(r["test_acc"] for r in records) > 0.3  # chance is 0.1 on 20 test images
    # every epoch prints one summary line; plain progress lines (not a terminal)
    assert result.output.count("train loss") == 3
    # data.val_fraction 0.1 holds out 10 of the 100 training images: 9 batches of 10
    assert "90 train / 10 validation / 20 test images" in result.output
    assert "step 2/9" in result.output
    for name in ("last.npz", "best.npz"):
        with np.load(out / name, allow_pickle=False) as f:
            assert "model/layers.0.W" in f.files and "optim/velocity.layers.0.W" in f.files
    last = load_checkpoint(out / "last.npz")
    best = load_checkpoint(out / "best.npz")
    assert last.progress.epoch == 3 and last.progress.global_step == 27
    # best.npz is chosen on validation accuracy, never on the test set
    best_epoch = max(records, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    assert best.progress.epoch == best_epoch
    assert best.progress.best_acc == pytest.approx(max(r["val_acc"] for r in records))
    assert last.config == written


def test_trainer_on_digits_beats_90_percent(tmp_path, numpy_backend):
    config = validate_config(load_config("digits"))
    config["training"]["epochs"] = 5
    lines = []
    trainer = Trainer(build_run(config, load_dataset("digits")), tmp_path, echo=lines.append, progress_bar=False)
    result = trainer.fit()
    assert result.status == "completed" and result.epochs_done == 5
    assert result.best_acc > 0.9 and trainer.monitor == "train_acc"  # no validation set given
    assert read_metrics(tmp_path)[-1]["train_acc"] > 0.95
    assert sum("train loss" in line for line in lines) == 5


def test_subprocess_train_digits(tmp_path):
    out = tmp_path / "digits"
    env = {**os.environ, "GPUCNN_BACKEND": "numpy"}
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--config", "digits", "--device", "cpu",
                           "--epochs", "4", "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    records = read_metrics(out)
    assert len(records) == 4 and max(r["test_acc"] for r in records) > 0.9
    assert "done: 4 epochs" in proc.stdout


def test_nan_loss_stops_with_a_clear_message_and_keeps_checkpoints(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    base = ["train", "--config", "digits", "--device", "cpu", "--out", str(out), "--set", "schedule.name=constant",
            "--set", "schedule.warmup_epochs=0"]
    result = runner.invoke(cli, [*base, "--set", "optimizer.lr=1e6"])
    assert result.exit_code == 1
    assert "training diverged: the loss became nan" in result.output or "the loss became inf" in result.output
    assert "no checkpoint was written before it" in result.output
    assert "Traceback" not in result.output
    assert not (out / "last.npz").exists()

    # one good epoch, then a resumed run that diverges: last.npz and best.npz stay as they were
    assert runner.invoke(cli, [*base, "--epochs", "1"]).exit_code == 0
    before = {n: (out / n).read_bytes() for n in ("last.npz", "best.npz")}
    result = runner.invoke(cli, ["train", "--resume", str(out / "last.npz"), "--epochs", "2",
                                 "--set", "optimizer.lr=1e6"])
    assert result.exit_code == 1
    assert f"the last good checkpoint is {out / 'last.npz'} (epoch 1)" in result.output
    assert {n: (out / n).read_bytes() for n in before} == before
    assert len(read_metrics(out)) == 1


def test_out_of_memory_names_the_batch_size(tmp_path, numpy_backend, monkeypatch):
    class OutOfMemoryError(MemoryError):
        pass

    config = validate_config(load_config("digits"))
    trainer = Trainer(build_run(config, load_dataset("digits")), tmp_path, echo=lambda s: None, progress_bar=False)

    def boom(*args, **kwargs):
        raise OutOfMemoryError("out of memory allocating 1,073,741,824 bytes")

    monkeypatch.setattr(trainer.model, "forward", boom)
    with pytest.raises(TrainingError, match=r"ran out of memory at batch size 32 .*--batch-size 16"):
        trainer.fit()


def test_data_errors_exit_1_without_traceback(tmp_path, tiny_cifar):
    runner = CliRunner()
    folder = tiny_cifar / "cifar-10-batches-bin"
    truncated = folder / "data_batch_3.bin"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    result = runner.invoke(cli, ["train", "--data-dir", str(tiny_cifar), "--device", "cpu", "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "data_batch_3.bin is corrupt" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1

    truncated.write_bytes(bytes([12]) + bytes(RECORD - 1))  # label 12 is not a CIFAR-10 class
    result = runner.invoke(cli, ["train", "--data-dir", str(tiny_cifar), "--device", "cpu"])
    assert result.exit_code == 1 and "label 12" in result.output


def test_corrupt_data_in_a_real_subprocess(tmp_path, tiny_cifar):
    (tiny_cifar / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\x00" * 1000)
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--data-dir", str(tiny_cifar), "--device", "cpu",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("gpucnn: error: CIFAR-10 file")
    assert "test_batch.bin is corrupt" in proc.stderr and "Traceback" not in proc.stderr


def test_progress_bar_mode_shows_a_bar_and_the_summary(tmp_path, numpy_backend, capsys):
    config = validate_config(load_config("digits"))
    config["training"]["epochs"] = 1
    Trainer(build_run(config, load_dataset("digits")), tmp_path, progress_bar=True).fit()
    out = capsys.readouterr().out
    assert "epoch 1/1:" in out and "/45 [" in out  # the tqdm bar...
    assert "loss=" in out and "acc=" in out and "img_s=" in out  # ...with its postfix, set every log_every steps
    assert "epoch 1/1  train loss" in out


def test_emulated_backend_trains_like_numpy(tmp_path, tiny_cifar):
    """The same run on the CUDA-emulation backend ends close to the numpy run (float32 rounding only)."""
    args = ["train", "--data-dir", str(tiny_cifar), "--epochs", "1", "--batch-size", "25", *TINY_LENET]
    runner = CliRunner()
    for device in ("cpu", "emulated"):
        result = runner.invoke(cli, [*args, "--device", device, "--out", str(tmp_path / device)])
        assert result.exit_code == 0, result.output
    a, b = (load_checkpoint(tmp_path / d / "last.npz").model_state for d in ("cpu", "emulated"))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-5, err_msg=key)
    # training moved the weights, so the agreement above is not that of two untouched models
    with use_backend("numpy"):
        initial = build_model(load_checkpoint(tmp_path / "cpu" / "last.npz").config, (3, 32, 32), 10).state_dict()
    assert np.abs(a["layers.0.W"] - initial["layers.0.W"]).max() > 1e-3


@pytest.mark.gpu
def test_cuda_training_on_digits(tmp_path, cuda_backend):
    config = validate_config(load_config("digits"))
    config["training"]["epochs"] = 3
    trainer = Trainer(build_run(config, load_dataset("digits")), tmp_path, echo=lambda s: None, progress_bar=False)
    result = trainer.fit()
    assert result.best_acc > 0.85
    assert load_checkpoint(tmp_path / "last.npz").progress.epoch == 3
