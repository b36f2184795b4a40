"""Benchmark honesty: peer math modes and cudnn.benchmark, the torch.compile peer's skip
reason, epochs timed several times, launches/syncs per step, and what ``auto`` picked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn.bench import counters, report, torch_peers, train_bench
from gpucnn.bench.command import bench
from gpucnn.bench.timing import Clock

torch = torch_peers.load_torch()
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@needs_torch
def test_peer_modes_record_math_mode_and_turn_cudnn_benchmark_on():
    fp32 = torch_peers.PeerMode("torch-fp32", "cuda", False)
    assert fp32.math_mode == "fp32"
    assert torch_peers.PeerMode("t", "cuda", True).math_mode == "tf32"
    assert torch_peers.PeerMode("t", "cuda", None).math_mode == "default"
    assert torch_peers.PeerMode("t", "cuda", False, bf16=True).math_mode == "bf16-autocast+channels-last"
    assert torch_peers.PeerMode("torch-cpu", "cpu", None).math_mode == "fp32"
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with fp32.active(torch):  # the flags are plain settings: they can be read without a GPU
            assert torch.backends.cudnn.benchmark is True
            assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.allow_tf32 is True
        info = fp32.describe(torch)
        assert info["math_mode"] == "fp32" and info["cudnn_benchmark"] is True and info["compile"] is False
        assert info["cudnn_allow_tf32"] is False and info["matmul_allow_tf32"] is False
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


class _Backend:
    def __init__(self, on_device, precision=None):
        self.on_device = on_device
        if precision:
            self.precision = precision


@needs_torch
def test_gpu_peer_modes_follow_the_precision_and_add_a_compile_peer(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    names = lambda b: [(m.name, m.math_mode, m.compile) for m in torch_peers.peer_modes(b, torch)]  # noqa: E731
    assert names(_Backend(True)) == [("torch-fp32", "fp32", False), ("torch-default", "default", False),
                                     ("torch-compile-fp32", "fp32", True)]
    assert names(_Backend(True, "tf32")) == [("torch-tf32", "tf32", False), ("torch-compile-tf32", "tf32", True)]
    assert names(_Backend(True, "bf16")) == [("torch-bf16", "bf16-autocast+channels-last", False),
                                             ("torch-compile-bf16", "bf16-autocast+channels-last", True)]
    assert torch_peers.skipped_peer_modes(_Backend(True), torch) == []


@needs_torch
def test_cpu_has_no_compile_peer_and_says_why():
    assert [m.name for m in torch_peers.peer_modes(_Backend(False), torch)] == ["torch-cpu"]
    skipped = torch_peers.skipped_peer_modes(_Backend(False), torch)
    assert [s["name"] for s in skipped] == ["torch-compile"] and "GPU only" in skipped[0]["reason"]


class _ScriptedClock(Clock):
    """perf_counter replaced by a script of sample lengths (ms)."""

    def __init__(self, samples):
        self.samples = list(samples)

    def sample(self, fn, inner):
        for _ in range(inner):
            fn()
        return self.samples.pop(0)


def test_epochs_are_timed_several_times_min_and_median():
    settings = train_bench.TrainSettings(["lenet5"], [4], images=12, repeats=2, warmup=0, epochs=3)
    calls = []
    # probe, 2 step samples, then 3 epochs of 3 steps each: 4000, 1000, 2500 ms
    clock = _ScriptedClock([1.0, 1.0, 1.0, 4000.0, 1000.0, 2500.0])
    figures = train_bench._time_training(lambda: calls.append(1), clock, 4, settings)
    assert figures["epochs"] == {"repeats": 3, "min_s": 1.0, "median_s": 2.5, "samples_s": [4.0, 1.0, 2.5]}
    assert figures["epoch"] == {"images": 12, "steps": 3, "seconds": 2.5}
    assert figures["images_per_s"] == pytest.approx(12 / 2.5)
    assert len(calls) == 1 + 2 + 9


def _conv(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    return x, w, rng.standard_normal(4).astype(np.float32)


def test_count_step_counts_launches_library_calls_and_syncs(emulated_backend):
    b = emulated_backend
    ops = b.ops
    x, w, bias = _conv(np.random.default_rng(0))
    counts = counters.count_step(b, lambda: ops.conv2d_forward(x, w, bias, (1, 1), (1, 1)))
    assert (counts["kernel_launches"], counts["library_calls"], counts["host_syncs"]) == (1, 0, 0)  # direct
    ops.set_variant("conv2d_forward", "im2col_gemm")
    try:
        def step():
            y = ops.conv2d_forward(x, w, bias, (1, 1), (1, 1))
            b.to_host(y)
            b.synchronize()

        counts = counters.count_step(b, step)
    finally:
        ops.set_variant("conv2d_forward", "auto")
    # im2col + add_channel_bias kernels, one xp.matmul, the to_host and the synchronize
    assert (counts["kernel_launches"], counts["library_calls"], counts["host_syncs"]) == (2, 1, 2)
    assert counts["library_by_name"] == {"matmul": 1}
    assert "synchronize" not in vars(b) and "to_host" not in vars(b) and ops.xp is np  # all restored


def test_count_step_is_none_on_numpy(numpy_backend):
    assert counters.count_step(numpy_backend, lambda: None) is None
    assert counters.peak_step_bytes(numpy_backend, lambda: None) is None


def test_emulated_bench_train_and_auto_pick(tmp_path):
    out = tmp_path / "b.json"
    result = CliRunner().invoke(bench, [
        "--device", "emulated", "--shape", "conv:N=2,C=2,H=5,W=5,O=3,K=3,S=1,P=1", "--ops", "conv2d_forward",
        "--all-variants", "--train", "--train-models", "lenet5", "--train-batch", "2", "--train-images", "4",
        "--repeats", "1", "--warmup", "0", "--sgemm-size", "16", "--no-peers", "--json", str(out), "-q"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    auto = [r for r in data["kernels"] if r["variant"] == "auto"]
    assert len(auto) == 1 and auto[0]["picked"] == "direct"  # the fixed rule: 3 output channels < 32
    assert all(r["picked"] is None for r in data["kernels"] if r["variant"] != "auto")
    assert data["autotune"] == []  # the emulator does not measure
    ours = data["train"][0]
    assert ours["math_mode"] == "fp32" and ours["peak_bytes"] is None
    assert ours["epochs"]["repeats"] == 3 and len(ours["epochs"]["samples_s"]) == 3
    assert ours["epochs"]["min_s"] <= ours["epoch"]["seconds"]
    assert ours["counts"]["kernel_launches"] > 0 and ours["counts"]["host_syncs"] == 0
    assert ours["counts"]["library_calls"] == ours["counts"]["library_by_name"].get("matmul", 0) > 0  # dense
    assert "[auto->direct]" in result.output and "launches" in result.output
    assert report.TRAIN_NOTE.split(";")[0] in report.render_markdown(data)
