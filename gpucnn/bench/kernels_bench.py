"""Per-op microbenchmarks: check each op against NumPy, then time it and its peers.

``run_kernel_bench(backend, settings)`` walks the shapes, and for every op of a shape's family
(filtered by ``settings.ops``): runs the correctness gate (``gate.check_op``), times our op
(each selected kernel variant), NumPy (on CPU backends other than numpy itself) and the
PyTorch peers on the same data, and returns one record per (shape, op, variant).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gpucnn.bench import torch_peers
from gpucnn.bench.cases import OpCase, build_case, output_arrays
from gpucnn.bench.gate import check_op, to_device
from gpucnn.bench.shapes import Shape
from gpucnn.bench.timing import Clock, Timing, clock_for_backend, measure
from gpucnn.errors import GpucnnError
from gpucnn.ops import ALL_OPS, OP_FAMILIES, numpy_ops


class BenchOptionError(GpucnnError):
    """An option names something this backend does not have (a kernel variant...)."""


@dataclass
class KernelBenchSettings:
    """What to run: shapes, op filter, repeats, peers, variants."""

    shapes: list[Shape]
    ops: list[str] | None = None  # fnmatch patterns; None: every op of each shape's family
    repeats: int = 20
    warmup: int = 3
    gate_batch: int = 8
    peers: bool = True
    variants: dict[str, str] = field(default_factory=dict)  # op -> variant, set before the run
    all_variants: bool = False  # time every variant of every op that has several
    seed: int = 0


def resolve_op_patterns(text: str | None) -> list[str] | None:
    """Split ``--ops`` (comma-separated names or globs like ``conv2d_*``); each must match an op."""
    if text is None or not text.strip():
        return None
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    for pattern in patterns:
        if not fnmatch.filter(ALL_OPS, pattern):
            raise ValueError(f"--ops: {pattern!r} matches no op; ops are: {', '.join(ALL_OPS)}")
    return patterns


def ops_for_shape(shape: Shape, patterns: list[str] | None) -> list[str]:
    ops = OP_FAMILIES[shape.family]
    if patterns is None:
        return list(ops)
    return [op for op in ops if any(fnmatch.fnmatchcase(op, p) for p in patterns)]


# Kernel variants (KernelOps only) ------------------------------------------------------------
def available_variants(ops) -> dict[str, tuple[str, ...]]:
    """``ops.variants`` (op -> variant names) or {} for backends without variants."""
    return dict(getattr(ops, "variants", None) or {})


def current_variant(ops, op: str) -> str | None:
    """The variant ``op`` runs now, or None when the backend has no variants for it."""
    if op not in available_variants(ops):
        return None
    return ops.variant(op)


def apply_variants(backend, requested: dict[str, str]) -> None:
    """Select the ``--variant op=name`` choices, validating them against ``ops.variants``."""
    if not requested:
        return
    table = available_variants(backend.ops)
    if not table:
        raise BenchOptionError(f"--variant: the {backend.name} backend has no kernel variants "
                         "(use --device cuda or emulated)")
    for op, name in requested.items():
        if op not in table:
            raise BenchOptionError(f"--variant {op}={name}: {op!r} has no variants; ops with variants: "
                             f"{', '.join(sorted(table))}")
        if name not in table[op]:
            raise BenchOptionError(f"--variant {op}={name}: unknown variant {name!r}; {op} has: {', '.join(table[op])}")
        backend.ops.set_variant(op, name)


def parse_variant_options(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["conv2d_forward=igemm", ...]`` -> {op: variant}; raise ValueError on bad syntax."""
    out: dict[str, str] = {}
    for text in values:
        op, eq, name = text.partition("=")
        if not eq or not op.strip() or not name.strip():
            raise ValueError(f"--variant {text!r}: expected OP=VARIANT, e.g. conv2d_forward=igemm")
        out[op.strip()] = name.strip()
    return out


# Measurement --------------------------------------------------------------------------------
def _rate(case: OpCase, ms: float, bytes_moved: int) -> tuple[str, float, float]:
    """(metric, work, rate): GFLOP/s for FLOP-counted ops, GB/s for the rest."""
    if case.flops:
        return "GFLOP/s", case.flops, case.flops / (ms * 1e6)
    return "GB/s", float(bytes_moved), bytes_moved / (ms * 1e6)


def _timing_entry(timing: Timing | None, case: OpCase, bytes_moved: int, ours_ms: float | None,
                  error: str | None = None) -> dict:
    if timing is None:
        return {"ms": None, "rate": None, "ratio": None, "timing": None, "error": error}
    _, _, rate = _rate(case, timing.median_ms, bytes_moved)
    ratio = ours_ms / timing.median_ms if ours_ms is not None and timing.median_ms > 0 else None
    return {"ms": timing.median_ms, "rate": rate, "ratio": ratio, "timing": timing.as_dict(), "error": None}


def _time_numpy(case: OpCase, settings: KernelBenchSettings) -> Timing:
    fn = getattr(numpy_ops, case.op)
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    return measure(lambda: fn(*args), Clock(), settings.repeats, settings.warmup)


def _time_torch(case: OpCase, mode, torch, settings: KernelBenchSettings) -> Timing | None:
    fn = torch_peers.make_peer(case, torch, mode.device, getattr(mode, "bf16", False))
    if fn is None:
        return None
    with mode.active(torch):
        return measure(fn, torch_peers.torch_clock(torch, mode.device), settings.repeats, settings.warmup)


def bench_one(
    backend, shape: Shape, op: str, settings: KernelBenchSettings, references: dict,
    torch=None, modes=(), log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Gate and time ``op`` on ``shape`` (each variant when asked), plus its peers: records."""
    table = available_variants(backend.ops)
    original = current_variant(backend.ops, op)
    if settings.all_variants and len(table.get(op, ())) > 1:
        variants: list[str | None] = list(table[op])
    else:
        variants = [original]
    case = build_case(op, shape, np.random.default_rng(settings.seed + 1))
    records: list[dict] = []
    peers: dict[str, dict] | None = None
    try:
        for variant in variants:
            if variant is not None and variant != current_variant(backend.ops, op):
                backend.ops.set_variant(op, variant)
            check = check_op(op, shape, backend, settings.gate_batch, settings.seed)
            dev_args = to_device(case.args, backend)
            fn = getattr(backend.ops, op)
            first = fn(*dev_args)  # on cuda, ``auto`` times the variants here (first use of the shape)
            picked = _auto_pick(backend.ops, op) if variant == "auto" else None
            bytes_moved = case.array_bytes() + sum(int(o.nbytes) for o in output_arrays(first, dev_args, case))
            del first
            timing = measure(lambda: fn(*dev_args), clock_for_backend(backend), settings.repeats, settings.warmup)
            del dev_args
            metric, work, rate = _rate(case, timing.median_ms, bytes_moved)
            ref = references["sgemm"]["gflops"] if metric == "GFLOP/s" else references["copy"]["gbps"]
            if peers is None:  # peers do not depend on our variant: time them once
                peers = _time_peers(backend, case, settings, torch, modes, bytes_moved)
            record = {
                "op": op, "set": shape.set_name, "layer": shape.name, "family": shape.family,
                "shape": shape.label, "params": dict(shape.params), "variant": variant, "picked": picked,
                "metric": metric, "work": work, "check": check.as_dict(),
                "ours": {"ms": timing.median_ms, "rate": rate, "frac_ref": rate / ref if ref else None,
                         "timing": timing.as_dict()},
                "peers": {name: {**entry, "ratio": (timing.median_ms / entry["ms"]) if entry["ms"] else None}
                          for name, entry in peers.items()},
            }
            records.append(record)
            log(_log_line(record))
    finally:
        if original is not None and current_variant(backend.ops, op) != original:
            backend.ops.set_variant(op, original)
    return records


def _auto_pick(ops, op: str) -> str | None:
    """The variant ``auto`` ran for ``op`` on its last call (measured on cuda, the rule elsewhere)."""
    tuner = getattr(ops, "autotune", None)
    return tuner.last_pick.get(op) if tuner is not None else None


def _time_peers(backend, case: OpCase, settings, torch, modes, bytes_moved: int) -> dict[str, dict]:
    peers: dict[str, dict] = {}
    if not settings.peers:
        return peers
    if backend.kernels and not backend.on_device:  # the emulator: NumPy is its natural peer
        peers["numpy"] = _timing_entry(_time_numpy(case, settings), case, bytes_moved, None)
    for mode in modes:
        if mode.compile:  # torch.compile is a training-step peer; a single aten op gains nothing
            continue
        try:
            timing = _time_torch(case, mode, torch, settings)
            if timing is not None:
                peers[mode.name] = _timing_entry(timing, case, bytes_moved, None)
        except Exception as exc:  # a peer failing is reported, never fatal
            peers[mode.name] = _timing_entry(None, case, bytes_moved, None, f"{type(exc).__name__}: {exc}"[:200])
    return peers


def _log_line(record: dict) -> str:
    variant = f"[{record['variant']}]" if record["variant"] else ""
    if record.get("picked"):
        variant = f"[auto->{record['picked']}]"
    peers = " ".join(f"{name}={entry['ms']:.3f}ms" for name, entry in record["peers"].items() if entry["ms"])
    return (f"  {record['op']}{variant} {record['shape']}: {record['ours']['ms']:.3f} ms "
            f"{record['ours']['rate']:.1f} {record['metric']} {peers}").rstrip()


def run_kernel_bench(backend, settings: KernelBenchSettings, references: dict, torch=None,
                     log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every (shape, op[, variant]) record of this run; raises BenchCheckError on a wrong kernel."""
    apply_variants(backend, settings.variants)
    modes = torch_peers.peer_modes(backend, torch) if settings.peers else []
    records: list[dict] = []
    for shape in settings.shapes:
        for op in ops_for_shape(shape, settings.ops):
            if not hasattr(backend.ops, op):
                log(f"  {op}: not implemented by the {backend.name} backend; skipped")
                continue
            records.extend(bench_one(backend, shape, op, settings, references, torch, modes, log))
    return records
