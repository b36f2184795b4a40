"""Every kernels/*.cu compiles with NVRTC (the compiler CuPy uses on the GPU) - no GPU needed."""

from __future__ import annotations

import pytest

from gpucnn.cuda import nvrtc_check, sources

FILES = sorted(sources.read_sources())
ARCHS = ("compute_80", "compute_90")


@pytest.fixture(scope="module")
def nvrtc():
    lib = nvrtc_check.load_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUCNN_NVRTC)")
    return lib


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", FILES)
def test_kernel_file_compiles(nvrtc, file, arch):
    result = nvrtc_check.compile_source(sources.read_sources()[file], file, arch)
    assert result.ok, result.log
    assert "warning" not in result.log, result.log


def test_check_all_covers_every_file_and_arch(nvrtc):
    results = nvrtc_check.check_all(("compute_90",))
    assert sorted(r.file for r in results) == FILES
    assert all(r.ok for r in results)
    assert nvrtc_check.nvrtc_version()[0] >= 11


def test_a_broken_kernel_fails_with_file_and_line(nvrtc):
    text = 'extern "C" __global__ void k(float* y)\n{\n    y[0] = undefined_name;\n}\n'
    result = nvrtc_check.compile_source(text, "broken.cu", "compute_90")
    assert not result.ok
    assert "broken.cu(3)" in result.log and "undefined_name" in result.log


def test_host_only_macros_are_not_used(nvrtc):
    """NVRTC has no <math.h>: INFINITY/NAN would compile on the host emulator only."""
    text = 'extern "C" __global__ void k(float* y)\n{\n    y[0] = INFINITY;\n}\n'
    assert not nvrtc_check.compile_source(text, "inf.cu", "compute_80").ok
