"""Per kernel and architecture: what ptxas allocated, what the machine code holds, and the
theoretical occupancy that follows. No GPU needed: NVRTC compiles to a cubin, ``cuobjdump
-sass`` (or ``nvdisasm``) disassembles it. Behind ``gpucnn info --kernels``.

One row (dict) per (kernel, arch)::

    kernel, file, arch, threads (per block; from __launch_bounds__/.maxntid, else
    DEFAULT_THREADS and threads_assumed=True), registers (per thread), spill_stores,
    spill_loads, stack (bytes), smem (static shared bytes per block), barriers,
    hmma, ldsm, ldgsts, shfl, bar (instruction counts: tensor-core MMAs, ldmatrix, cp.async,
    warp shuffles, block barriers; None without a disassembler), instructions,
    blocks_per_sm, occupancy (resident warps / max warps per SM, 0..1), limiter

Occupancy uses the per-SM limits of the CUDA occupancy calculator (CUDA C++ Programming
Guide, "Compute Capabilities" table) with the largest shared-memory carveout:

    arch   warps/SM  blocks/SM  registers/SM  reg unit  shared/SM  shared/block  reserved/block
    sm_80  64        32         65536         256/warp  164 KiB    163 KiB       1 KiB
    sm_90  64        32         65536         256/warp  228 KiB    227 KiB       1 KiB

Registers are allocated per warp in units of 256 (regs/thread * 32 rounded up); shared
memory per block is the static size plus the 1 KiB the runtime reserves, rounded up to
128 bytes. Dynamic shared memory (none of kernels/ uses it) is not counted.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from gpucnn.cuda import nvrtc_check
from gpucnn.cuda import sources as source_files

ARCHS = ("sm_80", "sm_90")
DEFAULT_THREADS = 256  # what most launchers in gpucnn.ops use when a kernel has no launch bounds
COUNTED = {"HMMA": "hmma", "LDSM": "ldsm", "LDGSTS": "ldgsts", "SHFL": "shfl", "BAR": "bar"}


@dataclass(frozen=True)
class SmLimits:
    """Per-SM resource limits of one architecture (see the module docstring)."""

    max_warps: int
    max_blocks: int
    registers: int
    register_unit: int  # registers, allocated per warp
    max_registers_per_thread: int
    shared: int  # bytes per SM with the largest carveout
    shared_per_block: int
    shared_reserved: int  # bytes the runtime reserves per block
    shared_unit: int


LIMITS = {
    "sm_80": SmLimits(64, 32, 65536, 256, 255, 164 * 1024, 163 * 1024, 1024, 128),
    "sm_90": SmLimits(64, 32, 65536, 256, 255, 228 * 1024, 227 * 1024, 1024, 128),
}

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((?:[^()]|\([^()]*\))*\)([^{]*)\{", re.S)
_MAXNTID = re.compile(r"\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)")
_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)")
_FUNCTION = re.compile(r"^\s*(?:Function\s*:\s*(\w+)|\.text\.(\w+):)\s*$")


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """``--ptxas-options=-v`` output -> kernel name -> registers, spills, stack, smem, barriers."""
    found: dict[str, dict] = {}
    name = None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            name = entry.group(1)
            found[name] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0, "barriers": 0}
            continue
        if name is None:
            continue
        spills = _SPILLS.search(line)
        if spills:
            found[name].update(stack=int(spills.group(1)), spill_stores=int(spills.group(2)),
                               spill_loads=int(spills.group(3)))
        used = _USED.search(line)
        if used:
            found[name].update(registers=int(used.group(1)), barriers=int(used.group(2) or 0),
                               smem=int(used.group(3) or 0))
    return found


def parse_launch_bounds(ptx: str) -> dict[str, int]:
    """PTX text -> kernel name -> threads per block for kernels with ``.maxntid``."""
    bounds = {}
    for match in _PTX_ENTRY.finditer(ptx):
        ntid = _MAXNTID.search(match.group(2))
        if ntid:
            bounds[match.group(1)] = int(ntid.group(1)) * int(ntid.group(2)) * int(ntid.group(3))
    return bounds


def parse_sass(text: str) -> dict[str, dict]:
    """``cuobjdump -sass`` or ``nvdisasm`` output -> kernel name -> instruction counts."""
    counts: dict[str, dict] = {}
    name = None
    for line in text.splitlines():
        function = _FUNCTION.match(line)
        if function:
            name = function.group(1) or function.group(2)
            counts.setdefault(name, {**{key: 0 for key in COUNTED.values()}, "instructions": 0})
            continue
        instruction = _SASS_LINE.search(line)
        if name is None or not instruction:
            continue
        counts[name]["instructions"] += 1
        key = COUNTED.get(instruction.group(1))
        if key:
            counts[name][key] += 1
    return counts


def find_disassembler() -> list[str] | None:
    """The command that prints SASS of a cubin given as the last argument, or None.

    Looks for cuobjdump then nvdisasm: the PyPI wheels (nvidia-cuda-cuobjdump,
    nvidia-cuda-nvdisasm), $CUDA_HOME/bin, PATH, /usr/local/cuda*/bin.
    """
    for tool, args in (("cuobjdump", ["-sass"]), ("nvdisasm", [])):
        places = []
        for entry in sys.path:
            places += sorted(glob.glob(os.path.join(entry, "nvidia", "cu*", "bin", tool)), reverse=True)
            places += glob.glob(os.path.join(entry, "nvidia", "cuda_" + tool, "bin", tool))
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if os.environ.get(var):
                places.append(os.path.join(os.environ[var], "bin", tool))
        places += [p for p in (shutil.which(tool),) if p]
        places += sorted(glob.glob(f"/usr/local/cuda*/bin/{tool}"), reverse=True)
        for place in places:
            if os.path.isfile(place) and os.access(place, os.X_OK):
                return [place, *args]
    return None


def disassemble(cubin: bytes, command: list[str]) -> str:
    """SASS text of ``cubin`` from ``command`` (see find_disassembler)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        result = subprocess.run([*command, path], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{os.path.basename(command[0])} failed: {result.stderr.strip()[:300]}")
    return result.stdout


def occupancy(arch: str, threads: int, registers: int, smem: int) -> tuple[int, float, str]:
    """(blocks per SM, resident warps / max warps, the limiting resource) on ``arch``."""
    if arch not in LIMITS:
        raise ValueError(f"occupancy: no SM limits for {arch!r}; expected one of {', '.join(LIMITS)}")
    if threads < 1 or threads > 1024:
        raise ValueError(f"occupancy: threads per block must be 1..1024, got {threads}")
    lim = LIMITS[arch]
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // lim.register_unit) * lim.register_unit
    shared = -(-(smem + lim.shared_reserved) // lim.shared_unit) * lim.shared_unit
    limits = {
        "warps": lim.max_warps // warps,
        "blocks": lim.max_blocks,
        "registers": (lim.registers // per_warp) // warps,
        "shared memory": lim.shared // shared if smem <= lim.shared_per_block else 0,
    }
    limiter = min(limits, key=lambda k: (limits[k], k != "warps"))
    blocks = limits[limiter]
    return blocks, blocks * warps / lim.max_warps, limiter


def file_report(file: str, text: str, arch: str, disassembler: list[str] | None) -> list[dict]:
    """Rows for every kernel of one source file on one architecture."""
    result = nvrtc_check.compile_source(text, file, arch, options=nvrtc_check.PTXAS_VERBOSE)
    if not result.ok:
        first = next((line for line in result.log.splitlines() if "error" in line), result.log[:200])
        raise RuntimeError(f"{file} ({arch}): NVRTC failed: {first}")
    resources = parse_ptxas_log(result.log)
    bounds = parse_launch_bounds(result.ptx or "")
    sass = parse_sass(disassemble(result.cubin, disassembler)) if disassembler and result.cubin else {}
    rows = []
    for name, res in resources.items():
        threads = bounds.get(name, DEFAULT_THREADS)
        blocks, occ, limiter = occupancy(arch, threads, res["registers"], res["smem"])
        counts = sass.get(name, {**{key: None for key in COUNTED.values()}, "instructions": None})
        rows.append({"kernel": name, "file": file, "arch": arch, "threads": threads,
                     "threads_assumed": name not in bounds, **res, **counts,
                     "blocks_per_sm": blocks, "occupancy": occ, "limiter": limiter})
    return rows


def kernel_report(archs=ARCHS, files=None, sources: dict[str, str] | None = None) -> list[dict]:
    """One row per (kernel, arch) for kernels/*.cu (or ``files`` of it, or the given ``sources``
    name -> text, compiled against the shipped headers), sorted by file, kernel, arch."""
    sources = sources if sources is not None else source_files.read_sources()
    if files is not None:
        unknown = sorted(set(files) - set(sources))
        if unknown:
            raise ValueError(f"kernel_report: unknown kernel file(s) {', '.join(unknown)}; have {', '.join(sources)}")
        sources = {f: sources[f] for f in files}
    disassembler = find_disassembler()
    rows = [row for file, text in sources.items() for arch in archs
            for row in file_report(file, text, arch, disassembler)]
    return sorted(rows, key=lambda r: (r["file"], r["kernel"], r["arch"]))


def format_kernel_table(rows: list[dict]) -> str:
    """A fixed-width text table of kernel_report rows ('-' where SASS was not available)."""
    header = ("kernel", "arch", "thr", "regs", "spill st/ld", "smem", *COUNTED, "occupancy")
    table = [header]
    for r in rows:
        dash = lambda v: "-" if v is None else str(v)  # noqa: E731
        table.append((
            r["kernel"], r["arch"], f"{r['threads']}{'*' if r['threads_assumed'] else ''}", str(r["registers"]),
            f"{r['spill_stores']}/{r['spill_loads']}", str(r["smem"]), *(dash(r[key]) for key in COUNTED.values()),
            f"{r['occupancy']:.0%} ({r['blocks_per_sm']} blk, {r['limiter']})",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r["threads_assumed"] for r in rows):
        lines.append(f"* no __launch_bounds__: occupancy computed for {DEFAULT_THREADS} threads per block")
    return "\n".join(lines)
