"""The emulated backend's launcher: kernels/*.cu compiled for the CPU and run on NumPy arrays.

Each source file is compiled by the host C++ compiler (``$CXX``, default ``g++``) with
``cuda_emulation.h`` (dim3, threadIdx/blockIdx/blockDim/gridDim, ``__shared__`` as a
per-block ``static``, ``__syncthreads`` as a fiber barrier, warp shuffles/votes and
``__syncwarp`` as a rendezvous of the warp's lanes, math intrinsics, atomicAdd; it defines
``GPUCNN_EMULATED``, which kernels/tc.cuh uses to replace its inline PTX for mma, ldmatrix
and cp.async by exact CPU models) into one shared library, plus one generated wrapper per
kernel::

    extern "C" int emu_<name>(const unsigned* grid, const unsigned* block, <params>)

that runs the kernel over every block and thread: plain nested loops for kernels without
barriers or warp collectives (fast), one fiber per thread for kernels with them (blocks
one at a time, deterministic, one OS thread; on x86-64 a syscall-free context switch,
elsewhere ucontext). Misuse that would hang or be undefined on a GPU (a barrier or warp
collective some lanes never reach, lanes that disagree on a collective's mask, a lane
that exits while its warp waits for it) raises RuntimeError naming the kernel, warp and
lanes. Libraries are cached in ``$GPUCNN_CACHE_DIR/emulator/<hash>/`` (default
``~/.cache/gpucnn``), the hash covering the sources, header, wrappers, compiler version
and flags; a build goes to a temporary name and is renamed into place. Compile errors
raise KernelCompileError naming the .cu file and line.

Not emulated (kernels must not use them): dynamic (extern) shared memory, cooperative
groups, textures, streams, ``__activemask`` and the ``__match``/``__reduce`` warp functions.

``EmulatedLauncher(source_overrides={"pool.cu": text})`` compiles modified sources
instead of the shipped ones (used by the tests to prove a broken kernel is caught);
``kernel_folder=`` points it at another folder of *.cu/*.cuh (test kernels);
``cxx_flags=("-DGPUCNN_EMU_UCONTEXT",)`` adds compiler flags (here: force the portable
ucontext fiber switch).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from gpucnn.cuda import sources as source_files
from gpucnn.errors import BackendUnavailable, KernelCompileError

HEADER = Path(__file__).with_name("cuda_emulation.h")
CXX_FLAGS = ("-std=c++20", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-w")

_CTYPES = {np.float32: ctypes.c_float, np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32}
_lock = threading.Lock()
_libraries: dict[Path, ctypes.CDLL] = {}


def cache_root() -> Path:
    """``$GPUCNN_CACHE_DIR`` or ``~/.cache/gpucnn``."""
    root = os.environ.get("GPUCNN_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "gpucnn"


def compiler() -> str:
    """The host C++ compiler to use, or BackendUnavailable when there is none."""
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise BackendUnavailable(f"emulated backend unavailable: C++ compiler {name!r} not found (set CXX)")
    return path


def _compiler_version(path: str) -> str:
    result = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else path


def wrapper_source(signatures) -> str:
    """The generated C++ that exports ``emu_<name>`` for every kernel of one file."""
    lines = []
    for sig in signatures:
        params = "".join(", " + p.decl for p in sig.params)
        names = ", ".join(p.name for p in sig.params)
        lines.append(
            f'extern "C" __attribute__((visibility("default"))) int emu_{sig.name}('
            f"const unsigned int* grid_, const unsigned int* block_{params}) {{\n"
            f"    return gpucnn_emu::launch(grid_, block_, {str(sig.uses_barriers).lower()}, "
            f"[&]() {{ {sig.name}({names}); }});\n}}\n"
        )
    return "\n".join(lines)


def translation_unit(file: str, text: str, signatures, display_path: str) -> str:
    """The C++ translation unit for one kernel file: header, source (with #line), wrappers."""
    return (
        f'#include "{HEADER.as_posix()}"\n'
        f'#line 1 "{display_path}"\n'
        f"{text}\n"
        f'#line 1 "<emulator wrappers for {file}>"\n'
        f"{wrapper_source(signatures)}"
    )


def _compile_error(file: str, log: str) -> KernelCompileError:
    pattern = re.compile(rf"^(?:.*/)?{re.escape(file)}:(\d+):(?:\d+:)?\s*(?:fatal )?error:\s*(.*)$", re.M)
    match = pattern.search(log)
    if match:
        return KernelCompileError(f"{file}:{match.group(1)}: {match.group(2)} (emulated build)")
    first = next((line for line in log.splitlines() if "error" in line), log.strip()[:300])
    return KernelCompileError(f"{file}: emulated build failed: {first}")


class EmulatedLauncher:
    """Runs kernels/*.cu on the CPU; ``launch(name, grid, block, args)`` like CudaLauncher.

    Arrays are NumPy arrays (C-contiguous, dtype matching the kernel's pointer type);
    scalars must be np.int32 / np.float32 / np.uint32 exactly as on the GPU.
    ``launches`` counts the kernels run through ``launch``, as CudaLauncher's does.
    """

    array_types = (np.ndarray,)
    multiprocessor_count = 2  # what launch heuristics (split-K) see; keeps emulated grids small
    reduction_threads = 64  # block size of the reduction kernels (any power of two works)

    def __init__(
        self,
        source_overrides: dict[str, str] | None = None,
        kernel_folder: Path | None = None,
        cxx_flags: tuple[str, ...] = (),
    ):
        self.kernel_folder = Path(kernel_folder) if kernel_folder else source_files.kernel_dir()
        self.cxx_flags = (*CXX_FLAGS, *cxx_flags)
        self.sources = source_files.read_sources(self.kernel_folder)
        self.headers = source_files.read_headers(self.kernel_folder)
        for file, text in (source_overrides or {}).items():
            if file not in self.sources:
                raise ValueError(f"source override for unknown kernel file {file!r}")
            self.sources[file] = text
        self.overridden = set(source_overrides or ())
        self.index = source_files.kernel_index(self.sources, self.headers)
        self._functions: dict[str, object] = {}
        self._cxx = compiler()
        self.launches = 0

    @property
    def kernel_names(self) -> list[str]:
        return sorted(self.index)

    def _library(self, file: str) -> ctypes.CDLL:
        text = self.sources[file]
        signatures = [s for s in self.index.values() if s.file == file]
        display = (self.kernel_folder / file).as_posix() if file not in self.overridden else f"{file}"
        unit = translation_unit(file, text, signatures, display)
        digest = hashlib.sha256()
        for part in (unit, HEADER.read_text(), *sorted(self.headers.items()), _compiler_version(self._cxx), *self.cxx_flags):
            digest.update(str(part).encode())
            digest.update(b"\0")
        folder = cache_root() / "emulator" / digest.hexdigest()[:24]
        target = folder / (Path(file).stem + ".so")
        with _lock:
            if target in _libraries:
                return _libraries[target]
            if not target.exists():
                self._build(file, unit, folder, target)
            library = ctypes.CDLL(str(target))
            library.gpucnn_emu_last_error.restype = ctypes.c_char_p
            _libraries[target] = library
            return library

    def _build(self, file: str, unit: str, folder: Path, target: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            cpp = Path(scratch) / (Path(file).stem + ".cpp")
            cpp.write_text(unit)
            built = Path(scratch) / "out.so"
            command = [self._cxx, *self.cxx_flags, f"-I{self.kernel_folder}", str(cpp), "-o", str(built)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise _compile_error(file, result.stderr)
            os.replace(built, target)

    def function(self, name: str):
        """The ctypes function for kernel ``name`` (compiling its file on first use)."""
        if name not in self._functions:
            if name not in self.index:
                raise KeyError(f"no kernel named {name!r} in kernels/*.cu")
            sig = self.index[name]
            fn = getattr(self._library(sig.file), "emu_" + name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [
                ctypes.c_void_p if p.pointer else _CTYPES[p.dtype] for p in sig.params
            ]
            self._functions[name] = fn
        return self._functions[name]

    def compile_all(self) -> None:
        """Build every kernel file now (otherwise each is built on its first launch)."""
        for file in self.sources:
            self._library(file)

    def launch(self, name: str, grid, block, args) -> None:
        """Run kernel ``name`` over ``grid`` x ``block`` (int or up to 3-tuple each)."""
        fn = self.function(name)
        sig = self.index[name]
        source_files.check_args(sig, tuple(args), self.array_types)
        dims = (ctypes.c_uint32 * 3)(*_dim3(grid)), (ctypes.c_uint32 * 3)(*_dim3(block))
        values = [a.ctypes.data if p.pointer else a for p, a in zip(sig.params, args)]
        if fn(dims[0], dims[1], *values) != 0:
            library = self._library(sig.file)
            raise RuntimeError(f"emulated kernel {name}: {library.gpucnn_emu_last_error().decode()}")
        self.launches += 1

    def synchronize(self) -> None:
        """Kernels run synchronously here."""


def _dim3(value) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        return (int(value), 1, 1)
    dims = tuple(int(v) for v in value) + (1, 1, 1)
    return dims[:3]
