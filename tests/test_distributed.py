"""gpucnn.distributed in one process: slicing and weights, sharded loaders, buckets, world detection."""

import sys
import threading
import time

import numpy as np
import pytest

from gpucnn import layers as L
from gpucnn.data import BatchLoader
from gpucnn.distributed import (DataParallel, DistributedError, LocalComm, World, detect_world, offset_seed,
                                shard_slice, single_world, slice_bounds, slice_weight)
from gpucnn.distributed.buckets import GradientBuckets
from gpucnn.distributed.comm import Watchdog
from gpucnn.distributed.launcher import find_mpiexec, launch
from gpucnn.distributed.world import launched_size
from gpucnn.losses import SoftmaxCrossEntropy
from gpucnn.model import Sequential


@pytest.mark.parametrize("n", [1, 2, 7, 8, 23])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_slices_tile_the_batch_in_order_and_differ_by_at_most_one(n, size):
    bounds = [slice_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_slice_weights_sum_to_one_and_give_the_global_mean():
    """sum_r (n_r/n) * mean_r equals the mean over the whole (smaller, last) batch."""
    values = np.random.default_rng(0).standard_normal(23)
    for step in range(4):  # batches of 7, 7, 7 and 2
        batch = values[step * 7:(step + 1) * 7]
        total = 0.0
        for rank in range(3):
            weight, n_r, offset = slice_weight(23, 7, step, rank, 3)
            assert n_r == slice_bounds(len(batch), rank, 3)[1] - offset
            if n_r:
                total += weight * batch[offset:offset + n_r].mean()
            else:
                assert weight == 0.0
        assert total == pytest.approx(batch.mean(), rel=1e-14)


def test_bad_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        slice_bounds(4, 2, 2)


def test_sharded_loader_serves_each_rank_its_slice_of_the_same_augmented_batches():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (11, 3, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 10, 11)
    from gpucnn.data import Augment

    def loader():
        return BatchLoader(x, y, 4, shuffle=True, seed=5, augment=Augment(flip=True, crop_padding=1))

    whole = list(loader())
    shards = []
    for rank in range(3):
        part = loader()
        part.set_shard(rank, 3)
        assert len(part) == len(whole)
        shards.append(list(part))
    for b, (xb, yb) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([s[b][0] for s in shards]), xb)
        np.testing.assert_array_equal(np.concatenate([s[b][1] for s in shards]), yb)
    assert shards[2][-1][0].shape[0] == 1 and shards[0][-1][0].shape[0] == 1  # the last batch has 3


def _tiny_model(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential([L.Conv2D(2, 3, 3, dtype=np.float64, rng=rng), L.ReLU(), L.Flatten(),
                       L.Dense(3 * 4 * 4, 5, dtype=np.float64, rng=rng)])


class RecordingComm(LocalComm):
    """A world of one that records what is reduced (the buffers a real comm would sum)."""

    def __init__(self):
        self.calls = []

    def iallreduce(self, array, op="sum", what="allreduce"):
        self.calls.append(what)
        return super().iallreduce(array, op, what)


@pytest.mark.parametrize("bucket_bytes", [8, 600, 1 << 20])
def test_buckets_return_weight_times_every_gradient(bucket_bytes):
    x = np.random.default_rng(2).standard_normal((4, 2, 6, 6))
    labels = np.array([0, 1, 2, 3])
    reference, model = _tiny_model(), _tiny_model()
    loss = SoftmaxCrossEntropy()
    loss.forward(reference.forward(x), labels)
    reference.backward(loss.backward(), input_grad=False)
    comm = RecordingComm()
    buckets = GradientBuckets(model, comm, bucket_bytes=bucket_bytes)
    loss.forward(model.forward(x), labels)
    buckets.backward(loss.backward(), weight=0.25)
    params = [(i, n) for i, _, n in model.parameters()]
    assert len(comm.calls) == len(buckets.buckets)
    expected = {8: len(params), 1 << 20: 1}.get(bucket_bytes)  # one param per bucket; all in one
    assert expected is None or len(buckets.buckets) == expected
    assert 1 < len(buckets.buckets) < len(params) or bucket_bytes != 600
    assert buckets.nbytes == 8 * sum(model.layers[i].params[n].size for i, n in params)
    for i, n in params:
        np.testing.assert_allclose(model.layers[i].grads[n], 0.25 * reference.layers[i].grads[n], rtol=1e-15)
    buckets.reduce(0.0)  # an empty slice adds exactly nothing, whatever its stale grads hold
    assert all(not model.layers[i].grads[n].any() for i, n in params)


def test_bucket_order_follows_backward():
    model = _tiny_model()
    buckets = GradientBuckets(model, LocalComm(), bucket_bytes=8)
    firsts = [b.first_layer for b in buckets.buckets]
    assert firsts == sorted(firsts, reverse=True) and firsts[0] == 3 and firsts[-1] == 0


def test_single_world_data_parallel_is_the_plain_step():
    dp = DataParallel(single_world(), _tiny_model(), _tiny_model().backend, 10, 4)
    assert not dp.active and dp.is_writer and dp.host is None
    assert dp.begin_step(2, 2) == 1.0 and dp.step_seed(123) == 123 and dp.agree_stop(True)


def test_forced_world_of_one_runs_the_distributed_step_exactly():
    """What a one-GPU machine can check: set-up, all-reduce of every gradient, the step itself."""
    x = np.random.default_rng(3).standard_normal((5, 2, 6, 6))
    labels = np.arange(5) % 5
    plain, forced = _tiny_model(), _tiny_model()
    loss = SoftmaxCrossEntropy()
    loss.forward(plain.forward(x), labels)
    plain.backward(loss.backward(), input_grad=False)
    dp = DataParallel(single_world(), forced, forced.backend, 5, 5, force=True)
    assert dp.active and isinstance(dp.grads_comm, LocalComm)
    assert dp.begin_step(0, 5) == 1.0
    loss.forward(forced.forward(x), labels)
    dp.backward(loss.backward())
    for i, _, n in plain.parameters():
        np.testing.assert_array_equal(forced.layers[i].grads[n], plain.layers[i].grads[n])


@pytest.mark.gpu
def test_forced_world_of_one_on_the_gpu_goes_through_nccl(cuda_backend):
    """The NCCL path on a one-GPU machine: communicator set-up from a unique id, the all-reduce of
    every gradient bucket on the training stream, and the step equal to the plain one."""
    from gpucnn.distributed.comm import NCCLComm

    def model(seed=0):
        rng = np.random.default_rng(seed)
        return Sequential([L.Conv2D(2, 3, 3, rng=rng), L.ReLU(), L.Flatten(), L.Dense(3 * 4 * 4, 5, rng=rng)])

    x = cuda_backend.asarray(np.random.default_rng(3).standard_normal((5, 2, 6, 6)).astype(np.float32))
    labels = cuda_backend.asarray(np.arange(5, dtype=np.int32) % 5)
    plain, forced = model(), model()
    loss = SoftmaxCrossEntropy()
    loss.forward(plain.forward(x), labels)
    plain.backward(loss.backward(), input_grad=False)
    dp = DataParallel(single_world(), forced, cuda_backend, 5, 5, force=True)
    assert dp.active and isinstance(dp.grads_comm, NCCLComm)
    assert dp.begin_step(0, 5) == 1.0
    loss.forward(forced.forward(x), labels)
    dp.backward(loss.backward())
    for i, _, n in plain.parameters():
        np.testing.assert_allclose(cuda_backend.to_host(forced.layers[i].grads[n]),
                                   cuda_backend.to_host(plain.layers[i].grads[n]), rtol=1e-6, atol=1e-7)


def test_batch_smaller_than_world_is_rejected():
    world = World(rank=0, size=4, comm=object())
    with pytest.raises(DistributedError, match="data.batch_size is the global batch.*got 3 for 4 ranks"):
        DataParallel(world, _tiny_model(), _tiny_model().backend, 10, 3)


def test_offset_seed_is_the_seed_at_offset_zero_and_differs_elsewhere():
    assert offset_seed(99, 0) == 99
    seeds = {offset_seed(99, k) for k in range(1, 50)}
    assert len(seeds) == 49 and 99 not in seeds and all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize("environ, size", [
    ({}, 1), ({"PMI_SIZE": "3", "PMI_RANK": "1"}, 3), ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),
    ({"SLURM_NTASKS": "4"}, 1), ({"SLURM_NTASKS": "4", "PMIX_RANK": "0"}, 4), ({"PMI_SIZE": "1"}, 1),
])
def test_launched_size_reads_the_launchers_variables(environ, size):
    assert launched_size(environ) == size


def test_detect_world_without_a_launcher_is_one_rank_without_mpi():
    world = detect_world({})
    assert (world.rank, world.size, world.comm) == (0, 1, None) and world.is_root


def test_watchdog_ends_a_wait_that_outlives_the_timeout(capsys):
    exits = []
    dog = Watchdog(rank=2, timeout=0.2, exit=exits.append)
    with dog.watch("the stop check"):
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.05)
    assert exits == [75]
    assert "rank 2: no answer from the other ranks for 0.2 s in the stop check" in capsys.readouterr().err
    quick = []
    dog2 = Watchdog(rank=0, timeout=0.5, exit=quick.append)
    with dog2.watch("fast"):
        pass
    time.sleep(0.7)
    assert quick == [] and threading.active_count() >= 1


def test_find_mpiexec_prefers_the_environment_then_the_wheel(monkeypatch, tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GPUCNN_MPIEXEC", str(fake))
    assert find_mpiexec() == str(fake)
    monkeypatch.setenv("GPUCNN_MPIEXEC", str(tmp_path / "missing"))
    with pytest.raises(DistributedError, match="GPUCNN_MPIEXEC=.*not an executable"):
        find_mpiexec()


def test_launch_reports_a_failed_rank(monkeypatch, tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GPUCNN_MPIEXEC", str(fake))
    lines = []
    assert launch(2, [sys.executable, "-c", "pass"], timeout=20, echo=lines.append) == 9
    assert "job of 2 ranks failed (status 9)" in lines[0]
    with pytest.raises(DistributedError, match="--nproc: expected a number of ranks >= 1"):
        launch(0, ["true"])
