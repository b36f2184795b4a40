"""kill -9 at many instants of a real ``gpucnn train`` never costs a completed epoch.

Each chain runs ``python -m gpucnn train --config digits`` (3 epochs of 6 steps) in a
subprocess and SIGKILLs it, continues it the way a user would (``--resume DIR/last.npz``
when that exists, else the same command again into the same --out), kills that process
too, and so on (a job preempted again and again): at planted points inside and between the
writes of last.npz, best.npz and metrics.jsonl (tests/kill_driver.py), and at seeded random
instants. After every kill the files there are whole; after the last step the run ends
exactly as an uninterrupted one: every epoch's metrics row once and in order with the same
numbers, a loadable last.npz with bit-identical weights (numpy backend), no temporary files.
One process per step keeps the whole file near 30 s of CPU.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn.checkpoint import load_checkpoint

EPOCHS = 3
TRAIN = ["--config", "digits", "--device", "cpu", "--epochs", str(EPOCHS), "--batch-size", "256",
         "--set", "data.val_fraction=0.1", "--set", "training.curves=false"]
DRIVER = Path(__file__).with_name("kill_driver.py")
ROOT = Path(__file__).resolve().parent.parent
# Figures that differ between runs by nature; everything else in a metrics row must match.
TIMING = ("time", "seconds", "images_per_s")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GPUCNN_BACKEND", None)
    return env


def _gpucnn(args, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpucnn", "train", *args, "--out", str(out)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its metrics rows, final weights and wall time."""
    out = tmp_path_factory.mktemp("reference")
    start = time.monotonic()
    result = _gpucnn(TRAIN, out)
    assert result.returncode == 0, result.stderr
    last = load_checkpoint(out / "last.npz")
    return {"rows": _rows(out), "model": last.model_state, "seconds": time.monotonic() - start}


def _check_after_kill(out: Path) -> None:
    """What a kill -9 may leave: the files that exist are whole (atomic writes)."""
    if (out / "last.npz").exists():
        ckpt = load_checkpoint(out / "last.npz")  # raises on a torn file
        assert 1 <= ckpt.progress.epoch <= EPOCHS
    if (out / "best.npz").exists():
        load_checkpoint(out / "best.npz")
    epochs = [r["epoch"] for r in _rows(out)]  # every line parses: never a half row
    assert epochs == list(range(1, len(epochs) + 1))


def _command(out: Path, driver_point: str | None = None) -> list[str]:
    """The way a user continues: --resume DIR/last.npz when it exists, else the first command again."""
    if (out / "last.npz").exists():
        args = ["train", "--resume", str(out / "last.npz"), "--out", str(out)]
    else:  # killed before the first checkpoint: allowed, since no run file is there
        assert not [name for name in ("metrics.jsonl", "best.npz") if (out / name).exists()]
        args = ["train", *TRAIN, "--out", str(out)]
    if driver_point is None:
        return [sys.executable, "-m", "gpucnn", *args]
    return [sys.executable, str(DRIVER), driver_point, *args[1:]]


def _finish_and_compare(out: Path, reference: dict) -> None:
    result = subprocess.run(_command(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for row, expected in zip(rows, reference["rows"]):
        assert {k: v for k, v in row.items() if k not in TIMING} == \
               {k: v for k, v in expected.items() if k not in TIMING}
    last = load_checkpoint(out / "last.npz")
    assert last.progress.epoch == EPOCHS and last.progress.step_in_epoch == 0
    assert [r["epoch"] for r in last.history] == list(range(1, EPOCHS + 1))
    assert last.model_state.keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert np.array_equal(last.model_state[key], value), key
    assert _temp_files(out) == []


# Each step: WHEN:FILE:NTH for tests/kill_driver.py, counted within that step's process. Every
# digits epoch here improves the validation accuracy, so best.npz follows each last.npz, and
# metrics.jsonl comes last; a resumed process first rewrites metrics.jsonl from the checkpoint.
CHAINS = {
    "checkpoint-writes": [
        ("during:last.npz:1", "the first checkpoint torn: nothing to resume, so the same command again"),
        ("after:last.npz:1", "epoch 1: last.npz in place, best.npz and metrics.jsonl not yet"),
        ("during:best.npz:1", "epoch 2: last.npz new, best.npz half written"),
        ("before:last.npz:1", "epoch 3: last.npz complete in its temp file, not renamed"),
    ],
    "metrics-writes": [
        ("after:best.npz:1", "epoch 1: both checkpoints in place, metrics.jsonl not yet"),
        ("during:metrics.jsonl:1", "the resumed process rewriting metrics.jsonl from the checkpoint"),
        ("before:metrics.jsonl:2", "epoch 2: checkpoints new, its metrics row not yet in place"),
        ("during:last.npz:1", "epoch 3: last.npz half written"),
    ],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_kill_at_planted_write_points_loses_nothing(tmp_path, reference, chain):
    out = tmp_path / "run"
    for point, what in CHAINS[chain]:
        killed = subprocess.run(_command(out, point), cwd=ROOT, env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert killed.returncode == -signal.SIGKILL, f"{point} ({what}) was not reached: {killed.stderr}"
        _check_after_kill(out)
    _finish_and_compare(out, reference)


def _expected_seconds(out: Path, reference: dict) -> float:
    """About how long the next process on ``out`` runs: startup (counted as one epoch) plus the
    epochs left, scaled from the uninterrupted run, so that a random kill lands inside it."""
    done = load_checkpoint(out / "last.npz").progress.epoch if (out / "last.npz").exists() else 0
    return reference["seconds"] * (1 + EPOCHS - done) / (1 + EPOCHS)


def test_kill_at_random_instants_loses_nothing(tmp_path, reference):
    """SIGKILL from outside at seeded random times spread over startup, epochs and writes."""
    out = tmp_path / "run"
    rng = random.Random(13)
    kills = 0
    for _ in range(5):  # until three kills have landed
        proc = subprocess.Popen(_command(out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(rng.uniform(0.2, 0.8) * _expected_seconds(out, reference))
            proc.send_signal(signal.SIGKILL)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        kills += code == -signal.SIGKILL
        _check_after_kill(out)
        if code == 0 or kills == 3:  # finished before the kill came, or enough kills
            break
    assert kills >= 2
    _finish_and_compare(out, reference)
