"""The cuda backend's launcher: kernels/*.cu compiled with cupy.RawModule and launched.

Each source file is compiled once per process (NVRTC through CuPy; CuPy also keeps an
on-disk cache), the first time one of its kernels is launched. A compile error raises
KernelCompileError naming the .cu file and line (the code is prefixed with a #line
directive so NVRTC reports the real file name).
"""

from __future__ import annotations

import re

import cupy

from gpucnn.cuda import sources as source_files
from gpucnn.errors import KernelCompileError

NVRTC_OPTIONS = ("-std=c++17",)
_modules: dict[tuple[str, str], "cupy.RawModule"] = {}


def _compile_error(file: str, log: str) -> KernelCompileError:
    match = re.search(rf"{re.escape(file)}\((\d+)\): (?:catastrophic )?error:?\s*(.*)", log)
    if match:
        return KernelCompileError(f"{file}:{match.group(1)}: {match.group(2).strip()} (NVRTC)")
    first = next((line for line in log.splitlines() if "error" in line), log.strip()[:300])
    return KernelCompileError(f"{file}: NVRTC compilation failed: {first}")


class CudaLauncher:
    """``launch(name, grid, block, args)`` on the current CuPy device.

    ``launches`` counts every kernel queued through ``launch`` (the benchmark reads it around
    one training step); CuPy's own elementwise kernels and cuBLAS calls do not pass here.
    """

    array_types = (cupy.ndarray,)
    reduction_threads = 256

    def __init__(self):
        self.kernel_folder = source_files.kernel_dir()
        self.sources = source_files.read_sources(self.kernel_folder)
        self.index = source_files.kernel_index(self.sources, source_files.read_headers(self.kernel_folder))
        self._functions: dict[str, object] = {}
        self.launches = 0
        device = cupy.cuda.Device()
        self.multiprocessor_count = int(device.attributes["MultiProcessorCount"])

    @property
    def kernel_names(self) -> list[str]:
        return sorted(self.index)

    def _module(self, file: str):
        text = self.sources[file]
        key = (file, text)
        if key not in _modules:
            code = f'#line 1 "{file}"\n{text}'
            options = (*NVRTC_OPTIONS, f"-I{self.kernel_folder}")
            module = cupy.RawModule(code=code, options=options)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as exc:
                raise _compile_error(file, str(exc)) from None
            _modules[key] = module
        return _modules[key]

    def function(self, name: str):
        """The cupy.RawKernel for ``name`` (compiling its file on first use)."""
        if name not in self._functions:
            if name not in self.index:
                raise KeyError(f"no kernel named {name!r} in kernels/*.cu")
            self._functions[name] = self._module(self.index[name].file).get_function(name)
        return self._functions[name]

    def compile_all(self) -> None:
        """Compile every kernel file now."""
        for file in self.sources:
            self._module(file)

    def launch(self, name: str, grid, block, args) -> None:
        """Queue kernel ``name`` on the current stream (asynchronous)."""
        fn = self.function(name)
        source_files.check_args(self.index[name], tuple(args), self.array_types)
        fn(_dim3(grid), _dim3(block), tuple(args))
        self.launches += 1

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()


def _dim3(value) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, 1, 1)
    return (tuple(int(v) for v in value) + (1, 1, 1))[:3]
