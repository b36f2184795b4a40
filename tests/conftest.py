"""Shared fixtures: run a test under a given backend; skip GPU tests with a reason."""

import pytest

from gpucnn import backend as backend_module


@pytest.fixture(autouse=True)
def _numpy_backend_by_default():
    """Every test starts on the numpy backend; on a GPU machine ``auto`` would pick cuda.

    Tests that want another backend request ``emulated_backend``/``cuda_backend`` (which
    nest inside this one) or pass ``--device`` to the CLI.
    """
    with backend_module.use_backend("numpy"):
        yield


@pytest.fixture
def numpy_backend():
    with backend_module.use_backend("numpy") as b:
        yield b


@pytest.fixture
def emulated_backend():
    with backend_module.use_backend("emulated") as b:
        yield b


@pytest.fixture
def cuda_backend():
    reason = backend_module.cuda_unavailable_reason()
    if reason:
        pytest.skip(f"no GPU: {reason}")
    with backend_module.use_backend("cuda") as b:
        yield b


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def kb(request):
    """A kernel backend: emulated (always) and cuda (GPU machines); kernels vs the NumPy reference."""
    if request.param == "cuda":
        reason = backend_module.cuda_unavailable_reason()
        if reason:
            pytest.skip(f"no GPU: {reason}")
    with backend_module.use_backend(request.param) as b:
        yield b


def pytest_collection_modifyitems(config, items):
    reason = backend_module.cuda_unavailable_reason()
    if reason is None:
        return
    skip_gpu = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
