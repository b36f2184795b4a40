"""The CUDA kernel sources (kernels/*.cu) and what every launcher needs to know about them.

Where the sources are: an installed wheel ships them as the package ``gpucnn.kernels``;
an editable install maps that package to ``<repo>/kernels``; a plain checkout on
PYTHONPATH has them at ``<repo>/kernels`` next to the ``gpucnn`` package.

Each ``extern "C" __global__ void name(params)`` signature is parsed into a
``KernelSignature`` so launchers can check arguments before a launch (CuPy would pass a
Python int as a 64-bit value and the kernel would read garbage; the emulator needs ctypes
types) and so the emulator can generate one C++ wrapper per kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCE_SUFFIXES = (".cu",)
HEADER_SUFFIXES = (".cuh",)

_SIGNATURE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)",
    re.S,
)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)

# Parameter base types the kernels may use -> (numpy dtype of the array or scalar).
_BASE_TYPES = {
    "float": np.float32,
    "int": np.int32,
    "unsigned int": np.uint32,
    "unsigned": np.uint32,
}


@dataclass(frozen=True)
class KernelParam:
    """One kernel parameter: its declaration text, name, numpy dtype and pointer-ness."""

    decl: str
    name: str
    dtype: type
    pointer: bool


@dataclass(frozen=True)
class KernelSignature:
    """A parsed ``extern "C" __global__`` kernel: name, params, file, whether it syncs.

    ``uses_barriers``: the kernel reaches __syncthreads or a warp collective (shuffle, vote,
    __syncwarp, tc.cuh's mma/ldmatrix), so the emulator runs its threads as fibers.
    """

    name: str
    params: tuple[KernelParam, ...]
    file: str
    uses_barriers: bool


def kernel_dir() -> Path:
    """The folder that holds the *.cu sources (source checkout or installed package).

    The checkout next to the imported ``gpucnn`` comes first: an editable install of
    another checkout maps ``gpucnn.kernels`` to *its* kernels/, which must not shadow ours.
    """
    import gpucnn

    candidates = [Path(gpucnn.__file__).resolve().parent.parent / "kernels"]
    try:
        import gpucnn.kernels as package

        candidates += [Path(p) for p in getattr(package, "__path__", [])]
    except ImportError:
        pass
    for folder in candidates:
        if any(folder.glob("*.cu")):
            return folder
    raise FileNotFoundError(
        "gpucnn kernel sources (*.cu) not found; looked in " + ", ".join(str(c) for c in candidates)
    )


def read_sources(folder: Path | None = None) -> dict[str, str]:
    """Every kernel source file name -> its text, sorted by name."""
    folder = folder or kernel_dir()
    return {p.name: p.read_text() for p in sorted(folder.glob("*.cu"))}


def read_headers(folder: Path | None = None) -> dict[str, str]:
    """Every shared header (*.cuh) name -> its text (sources #include them by name)."""
    folder = folder or kernel_dir()
    return {p.name: p.read_text() for p in sorted(folder.glob("*.cuh"))}


def strip_comments(text: str) -> str:
    """The source with comments and preprocessor lines (but #include) blanked out."""
    text = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return re.sub(r"^[ \t]*#(?!\s*include)[^\n]*", "", text, flags=re.M)


def _parse_param(decl: str, kernel: str, file: str) -> KernelParam:
    decl = " ".join(decl.split())
    match = re.fullmatch(r"(.*?)(\w+)", decl)
    if not match:
        raise ValueError(f"{file}: cannot parse parameter {decl!r} of kernel {kernel}")
    type_text, name = match.group(1), match.group(2)
    pointer = "*" in type_text
    words = [w for w in re.findall(r"[A-Za-z_]\w*", type_text) if w not in ("const", "__restrict__", "volatile")]
    base = " ".join(words)
    if base not in _BASE_TYPES:
        raise ValueError(f"{file}: kernel {kernel} parameter {name!r} has unsupported type {type_text.strip()!r}")
    return KernelParam(decl=decl, name=name, dtype=_BASE_TYPES[base], pointer=pointer)


def _body(text: str, start: int) -> str:
    """The brace-balanced body that starts at the first '{' at or after ``start``."""
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at : i + 1]
    raise ValueError("unbalanced braces")


_FUNCTION = re.compile(r"\b(\w+)\s*\([^;{}()]*\)\s*\{")

# Calls that make threads wait for each other: a block barrier or a warp collective.
_SYNC_CALL = re.compile(
    r"\b(?:__syncthreads|__syncwarp|__shfl(?:_up|_down|_xor)?_sync|__ballot_sync|__any_sync|__all_sync"
    r"|tc_mma_\w+|tc_ldmatrix_\w+)\s*\("
)


def _syncing_helpers(code: str) -> set[str]:
    """Names of functions in ``code`` that reach a barrier or warp collective, directly or not."""
    bodies = {}
    for match in _FUNCTION.finditer(code):
        if match.group(1) in ("if", "for", "while", "switch"):
            continue
        try:
            bodies[match.group(1)] = _body(code, match.end() - 1)
        except ValueError:
            continue
    syncing = {name for name, body in bodies.items() if _SYNC_CALL.search(body)}
    changed = True
    while changed:
        changed = False
        for name, body in bodies.items():
            if name not in syncing and any(re.search(rf"\b{s}\s*\(", body) for s in syncing):
                syncing.add(name)
                changed = True
    return syncing


def parse_kernels(text: str, file: str, headers: dict[str, str] | None = None) -> list[KernelSignature]:
    """Every ``extern "C" __global__`` kernel in one source file, in file order.

    A kernel "uses barriers" when its body calls __syncthreads or a warp collective, or a
    helper function (in the file or in an included header) that does.
    """
    code = strip_comments(text)
    included = "".join(
        strip_comments(headers[name]) + "\n"
        for name in re.findall(r'#include\s+"([^"]+)"', code)
        if headers and name in headers
    )
    syncing = _syncing_helpers(included + code)
    found = []
    for match in _SIGNATURE.finditer(code):
        name = match.group(1)
        params_text = match.group(2).strip()
        params = []
        if params_text and params_text != "void":
            params = tuple(_parse_param(p, name, file) for p in params_text.split(","))
        body = _body(code, match.end())
        uses = bool(_SYNC_CALL.search(body)) or any(re.search(rf"\b{s}\s*\(", body) for s in syncing)
        found.append(KernelSignature(name, tuple(params), file, uses))
    return found


@lru_cache(maxsize=8)
def _index_cached(items: tuple[tuple[str, str], ...], header_items: tuple[tuple[str, str], ...]):
    index: dict[str, KernelSignature] = {}
    headers = dict(header_items)
    for file, text in items:
        for sig in parse_kernels(text, file, headers):
            if sig.name in index:
                raise ValueError(f"kernel {sig.name} is defined in both {index[sig.name].file} and {file}")
            index[sig.name] = sig
    return index


def kernel_index(sources: dict[str, str], headers: dict[str, str] | None = None) -> dict[str, KernelSignature]:
    """Kernel name -> signature over all sources; a name defined twice is an error.

    ``headers`` (name -> text, default: the shipped *.cuh) let barrier detection see helpers.
    """
    if headers is None:
        headers = read_headers()
    return _index_cached(tuple(sorted(sources.items())), tuple(sorted(headers.items())))


def check_args(sig: KernelSignature, args: tuple, array_types: tuple) -> None:
    """Raise TypeError unless ``args`` match ``sig``: arrays of the right dtype for pointers
    (C-contiguous), numpy scalars of exactly the right type for values."""
    if len(args) != len(sig.params):
        raise TypeError(f"kernel {sig.name} takes {len(sig.params)} arguments, got {len(args)}")
    for param, arg in zip(sig.params, args):
        if param.pointer:
            if not isinstance(arg, array_types):
                raise TypeError(f"kernel {sig.name}: {param.name} must be an array, got {type(arg).__name__}")
            if arg.dtype != param.dtype:
                raise TypeError(
                    f"kernel {sig.name}: {param.name} must be {np.dtype(param.dtype).name}, got {arg.dtype}"
                )
            if not arg.flags.c_contiguous:
                raise TypeError(f"kernel {sig.name}: {param.name} must be C-contiguous")
        elif type(arg) is not param.dtype:
            raise TypeError(
                f"kernel {sig.name}: {param.name} must be np.{np.dtype(param.dtype).name}, got {type(arg).__name__}"
            )
