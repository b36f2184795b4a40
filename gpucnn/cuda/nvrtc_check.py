"""Compile every kernels/*.cu with NVRTC through ctypes: no GPU, no CuPy, no driver needed.

The default targets are the real architectures sm_80 and sm_90: NVRTC then runs ptxas and
returns machine code (a cubin), so the inline PTX of kernels/tc.cuh is assembled and
checked. (For a virtual ``compute_*`` target NVRTC stops at PTX text, and a typo inside an
``asm("...")`` string compiles.) ``compile_source(..., options=PTXAS_VERBOSE)`` adds ptxas'
per-kernel resource report to the log (gpucnn.cuda.sass_report reads it). Results are
memoized per (source, headers, arch, options) for the life of the process.

libnvrtc comes from the PyPI package ``nvidia-cuda-nvrtc`` (the ``test`` extra), a CUDA
toolkit (``$CUDA_HOME``/``$CUDA_PATH``), the library path, or ``$GPUCNN_NVRTC`` (a path).
Used by the tests and by ``gpucnn info``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from gpucnn.cuda import sources as source_files

DEFAULT_ARCHS = ("sm_80", "sm_90")
OPTIONS = ("-std=c++17",)
PTXAS_VERBOSE = ("--ptxas-options=-v",)  # per-kernel registers, spills, smem in the log


@dataclass(frozen=True)
class CompileResult:
    """One file compiled for one architecture; ``cubin`` (sm_*) and ``ptx`` when it compiled."""

    file: str
    arch: str
    ok: bool
    log: str
    cubin: bytes | None = None
    ptx: str | None = None


def _candidates() -> list[str]:
    found = []
    if os.environ.get("GPUCNN_NVRTC"):
        found.append(os.environ["GPUCNN_NVRTC"])
    for entry in sys.path:
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*",
                        "nvidia/cu*/bin/nvrtc64_*.dll", "nvidia/cuda_nvrtc/bin/nvrtc64_*.dll"):
            found.extend(sorted(glob.glob(os.path.join(entry, pattern)), reverse=True))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.extend(sorted(glob.glob(os.path.join(os.environ[var], "lib64", "libnvrtc.so*")), reverse=True))
    name = ctypes.util.find_library("nvrtc")
    if name:
        found.append(name)
    found.extend(sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"), reverse=True))
    return [f for f in found if "builtins" not in os.path.basename(f) and "alt" not in os.path.basename(f)]


_library: ctypes.CDLL | None = None
# (source, file, arch, headers, options) -> result: ptxas on the tensor-core kernels takes
# seconds, and the compile test and the SASS report ask for the same compilation.
_results: dict[tuple, CompileResult] = {}


def load_nvrtc() -> ctypes.CDLL | None:
    """The NVRTC shared library, or None when none can be loaded."""
    global _library
    if _library is not None:
        return _library
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.nvrtcVersion  # noqa: B018 - probe the symbol
        except (OSError, AttributeError):
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        _library = lib
        return lib
    return None


def nvrtc_version() -> tuple[int, int] | None:
    """(major, minor) of the NVRTC found, or None."""
    lib = load_nvrtc()
    if lib is None:
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _output(lib, program, size_fn: str, get_fn: str) -> bytes | None:
    size_getter, getter = getattr(lib, size_fn, None), getattr(lib, get_fn, None)
    if size_getter is None or getter is None:
        return None
    size = ctypes.c_size_t()
    if size_getter(program, ctypes.byref(size)) != 0 or size.value == 0:
        return None
    buffer = ctypes.create_string_buffer(size.value)
    if getter(program, buffer) != 0:
        return None
    return buffer.raw


def compile_source(
    text: str, file: str, arch: str, include_dir: Path | None = None, options: tuple[str, ...] = ()
) -> CompileResult:
    """Compile one source with NVRTC for ``arch`` (sm_80, sm_90, or a virtual compute_*);
    never raises on a bad kernel. ``options`` are extra NVRTC options."""
    lib = load_nvrtc()
    if lib is None:
        raise RuntimeError("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUCNN_NVRTC)")
    include_dir = include_dir or source_files.kernel_dir()
    headers = source_files.read_headers(include_dir)
    key = (text, file, arch, tuple(sorted(headers.items())), tuple(options))
    if key not in _results:
        _results[key] = _compile(lib, text, file, arch, headers, tuple(options))
    return _results[key]


def _compile(lib, text: str, file: str, arch: str, headers: dict[str, str], options: tuple[str, ...]) -> CompileResult:
    program = ctypes.c_void_p()
    names = list(headers)
    header_texts = (ctypes.c_char_p * max(1, len(names)))(*[headers[n].encode() for n in names])
    header_names = (ctypes.c_char_p * max(1, len(names)))(*[n.encode() for n in names])
    status = lib.nvrtcCreateProgram(ctypes.byref(program), text.encode(), file.encode(), len(names),
                                    header_texts, header_names)
    if status != 0:
        return CompileResult(file, arch, False, lib.nvrtcGetErrorString(status).decode())
    try:
        options = [*OPTIONS, f"--gpu-architecture={arch}", *options]
        option_array = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(program, len(options), option_array)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        text_log = log.value.decode(errors="replace").strip()
        if status != 0:
            return CompileResult(file, arch, False, text_log)
        cubin = _output(lib, program, "nvrtcGetCUBINSize", "nvrtcGetCUBIN") if arch.startswith("sm_") else None
        ptx = _output(lib, program, "nvrtcGetPTXSize", "nvrtcGetPTX")
        return CompileResult(file, arch, True, text_log, cubin, ptx.rstrip(b"\0").decode() if ptx else None)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def check_all(archs=DEFAULT_ARCHS) -> list[CompileResult]:
    """Compile every kernels/*.cu for every arch; one result per (file, arch)."""
    folder = source_files.kernel_dir()
    return [
        compile_source(text, file, arch, folder)
        for file, text in source_files.read_sources(folder).items()
        for arch in archs
    ]
