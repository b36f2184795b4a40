"""Interrupt and resume: bit-identical parameters on the numpy backend; Ctrl-C in a real process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import cli
from gpucnn.config import apply_overrides, load_config, validate_config
from gpucnn.backend import use_backend
from gpucnn.data import load_dataset
from gpucnn.build import build_run
from gpucnn.train import Trainer, dropout_seed

# digits with dropout, augmentation, Nesterov momentum, weight decay and a warm-up + cosine
# schedule, so every piece of state a resume must restore is in play
OVERRIDES = [
    "training.epochs=2",
    "data.augment.flip=true",
    "data.augment.crop_padding=2",
    "optimizer.nesterov=true",
    "schedule.warmup_epochs=0.5",
    "model.layers[8]={type = \"dropout\", p = 0.25}",
]


@pytest.fixture
def config():
    return validate_config(apply_overrides(load_config("digits"), OVERRIDES))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run_trainer(config, dataset, out, checkpoint=None, stop_at=None):
    def on_step(trainer):
        if stop_at is not None and trainer.progress.global_step == stop_at:
            trainer.request_stop()

    trainer = Trainer(build_run(config, dataset, checkpoint), out, echo=lambda s: None, progress_bar=False,
                      on_step=on_step)
    return trainer, trainer.fit()


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "time")} for r in records]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, digits):
    """The uninterrupted reference run (shared by the parametrized resume tests)."""
    config = validate_config(apply_overrides(load_config("digits"), OVERRIDES))
    out = tmp_path_factory.mktemp("full")
    with use_backend("numpy"):
        trainer, result = run_trainer(config, digits, out)
    assert result.status == "completed"
    return trainer, out


@pytest.mark.parametrize("stop_at", [30, 45])  # mid-epoch, and exactly at the end of epoch 1 (45 steps)
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, numpy_backend, config, digits, full_run, stop_at):
    assert config["model"]["layers"][8]["type"] == "dropout"
    full, full_out = full_run

    part, result = run_trainer(config, digits, tmp_path / "part", stop_at=stop_at)
    assert result.status == "interrupted"
    ckpt = load_checkpoint(tmp_path / "part" / "last.npz")
    assert ckpt.progress.global_step == stop_at
    assert (ckpt.progress.epoch, ckpt.progress.step_in_epoch) == divmod(stop_at, 45)

    resumed, result = run_trainer(ckpt.config, digits, tmp_path / "part", checkpoint=ckpt)
    assert result.status == "completed"
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    va, vb = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert va.keys() == vb.keys() and all(np.array_equal(va[k], vb[k]) for k in va)
    assert strip_timing(metrics(full_out)) == strip_timing(metrics(tmp_path / "part"))


def test_dropout_seed_is_a_function_of_seed_epoch_step_and_layer(tmp_path, numpy_backend, config, digits):
    seen = []
    trainer = Trainer(build_run(config, digits), tmp_path / "b", echo=lambda s: None, progress_bar=False,
                      on_step=lambda t: seen.append(t.model.layers[8].last_seed) or (
                          t.progress.global_step == 3 and t.request_stop()))
    trainer.fit()
    assert seen == [dropout_seed(0, 0, step, 8) for step in range(3)]
    assert len(set(seen)) == 3
    assert dropout_seed(0, 1, 0, 8) not in seen and dropout_seed(1, 0, 0, 8) not in seen
    assert all(0 <= s < 2**32 for s in seen)


def test_resume_through_the_cli_matches(tmp_path):
    runner = CliRunner()
    common = ["--config", "digits", "--device", "cpu", "--set", "schedule.name=step", "--set", "schedule.step_size=1"]
    assert runner.invoke(cli, ["train", *common, "--epochs", "2", "--out", str(tmp_path / "full")]).exit_code == 0
    assert runner.invoke(cli, ["train", *common, "--epochs", "1", "--out", str(tmp_path / "part")]).exit_code == 0
    result = runner.invoke(cli, ["train", "--resume", str(tmp_path / "part" / "last.npz"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output
    with np.load(tmp_path / "full" / "last.npz") as a, np.load(tmp_path / "part" / "last.npz") as b:
        keys = [k for k in a.files if k.startswith(("model/", "optim/"))]
        assert keys and all(np.array_equal(a[k], b[k]) for k in keys)
    assert [r["epoch"] for r in metrics(tmp_path / "part")] == [1, 2]


def test_resume_rejects_config_and_bad_checkpoint(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    result = runner.invoke(cli, ["train", "--resume", str(bad)])
    assert result.exit_code == 1 and "not a readable .npz file" in result.output
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    result = runner.invoke(cli, ["train", "--resume", str(tmp_path / "other.npz")])
    assert result.exit_code == 1 and "not a gpucnn training checkpoint" in result.output
    result = runner.invoke(cli, ["train", "--resume", str(bad), "--config", "digits"])
    assert result.exit_code == 2 and "drop --config" in result.output


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted: saved"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM: saved"),
                                             (signal.SIGHUP, 129, "stopped by SIGHUP: saved")])
def test_stop_signals_save_last_and_exit_128_plus_signal(tmp_path, sig, code, said):
    """Ctrl-C, and what schedulers send before preemption (SIGTERM) or a closed terminal (SIGHUP)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpucnn", "train", "--config", "digits", "--device", "cpu", "--epochs", "200",
           "--out", str(out), "--set", "schedule.name=constant", "--set", "schedule.warmup_epochs=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():  # training has started (an epoch finished)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert said in stdout and f"--resume {out / 'last.npz'}" in stdout
    ckpt = load_checkpoint(out / "last.npz")
    assert 1 <= ckpt.progress.epoch < 200
    steps_per_epoch = ckpt.history[0]["steps"]  # global steps at the end of epoch 1
    assert ckpt.progress.global_step == steps_per_epoch * ckpt.progress.epoch + ckpt.progress.step_in_epoch
    assert [r["epoch"] for r in ckpt.history] == list(range(1, ckpt.progress.epoch + 1))
    # the saved state resumes and finishes
    result = CliRunner().invoke(cli, ["train", "--resume", str(out / "last.npz"), "--epochs",
                                      str(ckpt.progress.epoch + 1)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "last.npz").progress.epoch == ckpt.progress.epoch + 1
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
