"""Backend choice: auto falls back to numpy (announced once), cuda never falls back silently."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import backend as backend_module
from gpucnn.errors import BackendUnavailable
from gpucnn.ops import ALL_OPS
from gpucnn.ops.kernel_ops import KernelOps

NO_GPU = backend_module.cuda_unavailable_reason()


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present: auto picks cuda")
def test_auto_without_gpu_picks_numpy_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(backend_module, "_announced", False)
    first = backend_module.create_backend("auto")
    second = backend_module.create_backend("auto")
    assert first.name == second.name == "numpy"
    err = capsys.readouterr().err
    assert err.count("gpucnn: using the numpy backend") == 1
    assert NO_GPU in err
    assert first.notes == [NO_GPU]


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_explicit_cuda_without_gpu_raises_with_the_cause():
    with pytest.raises(BackendUnavailable, match="cuda backend unavailable: .+") as info:
        backend_module.create_backend("cuda")
    assert NO_GPU in str(info.value)
    with pytest.raises(BackendUnavailable):
        backend_module.create_backend("GPU")


@pytest.mark.gpu
def test_auto_with_gpu_picks_cuda():
    b = backend_module.create_backend("auto")
    assert b.name == "cuda" and isinstance(b.ops, KernelOps)


def test_emulated_backend_is_kernel_ops_on_numpy():
    b = backend_module.create_backend("emulated")
    assert b.name == "emulated" and b.xp is np and isinstance(b.ops, KernelOps)
    assert all(callable(getattr(b.ops, op)) for op in ALL_OPS)


def test_emulated_rejects_float64_with_a_hint(emulated_backend):
    with pytest.raises(TypeError, match="numpy backend"):
        emulated_backend.check_dtype(np.float64, "Conv2D")
    with pytest.raises(TypeError, match="dense_forward.*float32.*float64.*numpy backend"):
        emulated_backend.ops.dense_forward(np.zeros((2, 3)), np.zeros((4, 3)), None)
    emulated_backend.check_dtype(np.float32, "Conv2D")


def test_variants_api(emulated_backend):
    ops = emulated_backend.ops
    assert set(ops.variants) == {"conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter",
                                 "conv2d_backward_bias"}
    for op, names in ops.variants.items():
        assert ops.variant(op) == names[0]
        for name in names:
            ops.set_variant(op, name)
            assert ops.variant(op) == name
    with pytest.raises(ValueError, match="unknown variant 'fft' for conv2d_forward"):
        ops.set_variant("conv2d_forward", "fft")
    with pytest.raises(ValueError, match="has no variants"):
        ops.set_variant("relu_forward", "direct")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backend_module.create_backend("tpu")
