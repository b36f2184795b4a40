"""Several CPU ranks under MPICH (mpiexec of the mpi extra) against single-process training.

Every rank is a real process; the references are computed here, in one process, without any
gpucnn.distributed code in their path (plain Sequential.backward).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distributed_worker import CORE, core_train, run_trainer, small_digits  # noqa: F401

pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py, mpich) is not installed")
from gpucnn.distributed.launcher import find_mpiexec  # noqa: E402

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def mpirun(nproc, *args, timeout=120, env=None):
    """Run the worker as ``nproc`` ranks; (returncode, stderr)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "GPUCNN_DIST_TIMEOUT": "20", **(env or {})}
    proc = subprocess.run([find_mpiexec(), "-n", str(nproc), sys.executable, str(WORKER), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def core_reference():
    return {f"{name}/{k}": v for name in CORE for k, v in core_train(name).items()}


@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_train_lenet5_and_sync_batchnorm_model_as_one_process(tmp_path, core_reference, nproc):
    rc, err = mpirun(nproc, "core", tmp_path)
    assert rc == 0, err
    ranks = [np.load(tmp_path / f"core-rank{r}.npz") for r in range(nproc)]
    assert set(ranks[0].files) == set(core_reference)
    for key, expected in core_reference.items():
        for r in range(1, nproc):  # the all-reduce hands every rank the same bits
            np.testing.assert_array_equal(ranks[r][key], ranks[0][key], err_msg=f"{key} rank {r}")
        # float64: equal up to the order of the sums (the BN-cancelled conv biases stay ~1e-17)
        np.testing.assert_allclose(ranks[0][key], expected, rtol=1e-10, atol=1e-13, err_msg=key)
    assert not np.allclose(core_reference["lenet5/layers.0.W"], core_train.__globals__["lenet5"]().state_dict()
                           ["layers.0.W"]), "the reference did not train"


def _params(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k.startswith("model/")}


def _close(a, b):
    assert set(a) == set(b)
    for key in a:  # float32: the slices' sums round differently from the whole batch's
        np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=2e-5, err_msg=key)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    trainer, result = run_trainer(out)
    assert result.status == "completed"
    return out


def test_two_ranks_run_the_trainer_as_one_process(tmp_path, single_run):
    rc, err = mpirun(2, "trainer", tmp_path)
    assert rc == 0, err
    _close(_params(tmp_path / "last.npz"), _params(single_run / "last.npz"))
    ours = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (single_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in ours] == [1, 2] and [r["steps"] for r in ours] == [r["steps"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["images_per_s"] * a["seconds"] == pytest.approx(96)  # counts the global batch, not a slice
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
    assert not (tmp_path / "trainer-rank1.npz").samefile(tmp_path / "trainer-rank0.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.npz", "config.toml", "curves.png", "last.npz", "metrics.jsonl", "trainer-rank0.npz", "trainer-rank1.npz"]


def test_a_two_rank_checkpoint_resumes_with_one_rank(tmp_path, single_run):
    rc, err = mpirun(2, "trainer", tmp_path / "part", "--stop-at", 7)  # mid-epoch 2 (5 steps an epoch)
    assert rc == 0 or rc == 3, err
    from gpucnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "part" / "last.npz")
    assert (ckpt.progress.epoch, ckpt.progress.step_in_epoch, ckpt.progress.global_step) == (1, 2, 7)
    _, result = run_trainer(tmp_path / "part", resume=tmp_path / "part" / "last.npz")
    assert result.status == "completed"
    _close(_params(tmp_path / "part" / "last.npz"), _params(single_run / "last.npz"))
    last = json.loads((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()[-1])
    reference = json.loads((single_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)  # partial sums carried over


def test_a_one_rank_checkpoint_resumes_with_three_ranks(tmp_path, single_run):
    _, result = run_trainer(tmp_path, stop_at=3)
    assert result.status == "interrupted"
    rc, err = mpirun(3, "trainer", tmp_path, "--resume", tmp_path / "last.npz")
    assert rc == 0, err
    _close(_params(tmp_path / "last.npz"), _params(single_run / "last.npz"))


def test_sync_batchnorm_ranks_match_one_process_through_the_trainer(tmp_path):
    _, result = run_trainer(tmp_path / "one", sync_bn=True)
    assert result.status == "completed"
    rc, err = mpirun(3, "trainer", tmp_path / "three", "--sync-bn")
    assert rc == 0, err
    one, three = _params(tmp_path / "one" / "last.npz"), _params(tmp_path / "three" / "last.npz")
    assert "model/layers.2.running_var" in one
    _close(three, one)


def test_a_killed_rank_ends_the_job_with_an_error_in_bounded_time(tmp_path):
    from gpucnn.distributed.launcher import launch

    lines = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUCNN_DIST_TIMEOUT": "20"}
    start = time.monotonic()
    rc = launch(2, [sys.executable, str(WORKER), "trainer", str(tmp_path), "--kill-rank", "1", "--kill-at", "2"],
                timeout=60, env=env, echo=lines.append)
    assert time.monotonic() - start < 60 and rc not in (0, 124)
    assert len(lines) == 1 and "the job of 2 ranks failed" in lines[0] and "a rank stopped or died" in lines[0]
    assert not (tmp_path / "trainer-rank0.npz").exists()  # rank 0 did not finish as if nothing happened


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_and_saves_once(tmp_path, single_run):
    rc, err = mpirun(2, "trainer", tmp_path, "--kill-rank", 1, "--kill-at", 4, "--kill-signal", "TERM")
    assert rc == 3, err  # both ranks returned "interrupted"
    from gpucnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "last.npz")
    assert (ckpt.progress.epoch, ckpt.progress.step_in_epoch) == (0, 4)
    rank0, rank1 = np.load(tmp_path / "trainer-rank0.npz"), np.load(tmp_path / "trainer-rank1.npz")
    for key in rank0.files:  # stopped after the same step
        np.testing.assert_array_equal(rank0[key], rank1[key])
    _, result = run_trainer(tmp_path, resume=tmp_path / "last.npz")
    _close(_params(tmp_path / "last.npz"), _params(single_run / "last.npz"))


def test_nproc_starts_the_ranks_itself(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "gpucnn", "train", "--config", "digits", "--nproc", "2", "--epochs", "1",
         "--batch-size", "256", "--device", "numpy", "--out", str(out), "--set", "training.log_every=100",
         "--set", "data.val_fraction=0"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "GPUCNN_DIST_TIMEOUT": "60"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("epoch 1/1  train loss") == 1  # rank 0 alone prints
    assert proc.stdout.count("device: ") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["steps"] == 6 and records[0]["test_acc"] > 0.3


def test_bench_allreduce_reports_every_shipped_model_beside_the_ring_bound():
    from gpucnn.config import shipped_config_names
    from gpucnn.distributed.bench import gradient_sizes, ring_seconds

    proc = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-m", "gpucnn", "bench", "--allreduce",
                           "--repeats", "2", "--link-gbps", "10"], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("all-reduce over 2 ranks") and sum("all-reduce over" in line for line in lines) == 1
    sizes = gradient_sizes()
    for name in shipped_config_names():
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{sizes[name] / 1e6:.3f} MB" in row and "busbw" in row
        bound_ms = float(row.split("ring bound")[1].split()[0])
        assert bound_ms == pytest.approx(1e3 * ring_seconds(sizes[name], 2, 10e9 / 8), abs=1e-3)
