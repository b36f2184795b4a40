"""Presenting results: aligned terminal tables, the JSON file, a markdown summary, a plot.

The JSON (``SCHEMA``) holds every figure: ``{"schema", "timestamp", "command", "device",
"versions", "precision", "peak_tflops", "settings", "reference", "peer_modes", "peers_skipped",
"autotune", "kernels": [...], "train": [...]}``; ``peak_tflops`` is the GPU's dense peak in that
precision (``PEAK_TFLOPS``), null when the device is not in the table; ``peers_skipped`` lists
peers that did not run here with the reason, ``autotune`` the conv choices ``auto`` measured
(cuda), each kernel record's ``picked`` the variant ``auto`` ran;
every file is written to a temporary name first and moved into place (``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from gpucnn.atomic import atomic_open
from gpucnn.errors import GpucnnError

SCHEMA = "gpucnn-bench/1"


# Dense (no sparsity) peak TFLOP/s by precision from NVIDIA's data sheets: fp32 on the CUDA
# cores, tf32/bf16 on the tensor cores. Matched against the device name in this order (the
# most specific spelling first); a device not listed has no peak in the report.
PEAK_TFLOPS = (
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),  # SXM
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The GPU's dense peak TFLOP/s in ``precision`` (fp32/tf32/bf16), or None when unknown."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in str(device_name).lower():
            return peaks.get(precision)
    return None


class BenchOutputError(GpucnnError):
    """A result file cannot be written (bad path, missing matplotlib...)."""


# Formatting helpers -------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if 0 < abs(value) < 10 ** (-digits + 1):
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """Columns padded to their widest cell; ``right`` columns are right-aligned."""
    right = right if right is not None else set(range(1, len(headers)))
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def peer_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for record in records:
        for name in record["peers"]:
            if name not in names:
                names.append(name)
    return names


def kernel_rows(records: list[dict], backend_name: str,
                peak: float | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the kernel table (ms = median per call, spread = IQR); with the GPU's
    ``peak`` TFLOP/s, a %peak column for the FLOP-counted ops."""
    peers = peer_names(records)
    headers = ["layer", "op", "shape", f"ours ({backend_name}) ms", "IQR", "rate", "%ref"]
    if peak:
        headers.append("%peak")
    for name in peers:
        headers += [f"{name} ms", "ours/peer"]
    rows = []
    for r in records:
        variant = f"auto->{r['picked']}" if r.get("picked") else r["variant"]
        op = r["op"] + (f"[{variant}]" if variant else "")
        t = r["ours"]["timing"]
        frac = r["ours"]["frac_ref"]
        row = [f"{r['set']}/{r['layer']}" if r["layer"] else r["set"], op, r["shape"].split(":", 1)[1],
               _fmt(r["ours"]["ms"]), _fmt(t["q3_ms"] - t["q1_ms"]),
               f"{_fmt(r['ours']['rate'], 1)} {r['metric']}", "-" if frac is None else f"{100 * frac:.1f}%"]
        if peak:
            flops = r["metric"] == "GFLOP/s" and r["ours"]["rate"] is not None
            row.append(f"{100 * r['ours']['rate'] / (1000 * peak):.1f}%" if flops else "-")
        for name in peers:
            entry = r["peers"].get(name)
            if entry is None or entry["ms"] is None:
                row += ["err" if entry and entry.get("error") else "-", "-"]
            else:
                row += [_fmt(entry["ms"]), _ratio(entry["ratio"])]
        rows.append(row)
    return headers, rows


TRAIN_NOTE = ("epoch s: median of the timed epochs (min s: the fastest); launches: raw kernels + cuBLAS-bound "
              "xp calls in one step of ours (CuPy elementwise operators not counted); syncs: host syncs in it; "
              "peak MiB: device memory in use at the peak of one step (CuPy pool / torch max_memory_allocated).")


def train_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Training table: epoch s = median (min beside it), launches/syncs per step, peak MiB per step."""
    headers = ["model", "batch", "impl", "math", "step ms", "IQR", "images/s", "epoch s", "min s", "epoch images",
               "launches", "syncs", "peak MiB", "ours/peer"]
    rows = []
    for r in records:
        t = r["step"]["timing"]
        counts, epochs, peak = r.get("counts"), r.get("epochs") or {}, r.get("peak_bytes")
        rows.append([r["model"], str(r["batch"]), r["impl"], r.get("math_mode") or "-", _fmt(r["step"]["ms"]),
                     _fmt(t["q3_ms"] - t["q1_ms"]), _fmt(r["images_per_s"], 1), _fmt(r["epoch"]["seconds"]),
                     _fmt(epochs.get("min_s")) if epochs else "-", str(r["epoch"]["images"]),
                     str(counts["kernel_launches"] + counts["library_calls"]) if counts else "-",
                     str(counts["host_syncs"]) if counts else "-",
                     _fmt(peak / 2**20, 1) if peak is not None else "-", _ratio(r.get("ratio"))])
    return headers, rows


def references_line(reference: dict) -> str:
    s, c = reference["sgemm"], reference["copy"]
    return (f"reference (same run): SGEMM {s['size']}^3 {_fmt(s['gflops'], 1)} GFLOP/s, "
            f"copy {_fmt(c['gbps'], 1)} GB/s; %ref = ours / SGEMM (GFLOP/s ops) or / copy (GB/s ops)")


def precision_line(result: dict) -> str:
    """Our precision, and the GPU's peak in it when known."""
    precision = result.get("precision", "fp32")
    peak = result.get("peak_tflops")
    where = f"; {result['device']['name']} peak {_fmt(peak, 1)} TFLOP/s in {precision} (dense)" if peak else ""
    return f"precision: {precision}{where}"


def render_text(result: dict) -> str:
    """The whole terminal report."""
    device = result["device"]
    lines = [f"gpucnn bench on {device['name']} (backend {device['backend']}), {result['timestamp']}",
             precision_line(result)]
    if result.get("reference"):
        lines.append(references_line(result["reference"]))
    if result.get("kernels"):
        headers, rows = kernel_rows(result["kernels"], device["backend"], result.get("peak_tflops"))
        lines += ["", format_table(headers, rows, right=set(range(3, len(headers))))]
        lines.append("ms: median per call over the repeats; ours/peer > 1 means ours is slower.")
    if result.get("train"):
        headers, rows = train_rows(result["train"])
        lines += ["", "training (synthetic CIFAR-10 data on the device):",
                  format_table(headers, rows, right=set(range(1, len(headers))) - {2, 3}), TRAIN_NOTE]
    return "\n".join(lines)


# Files --------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and os.replace."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise BenchOutputError(f"cannot write {target}: folder {folder} does not exist")
    with atomic_open(target, "wb") as handle:
        handle.write(data)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_json(result: dict, path) -> None:
    atomic_write(path, (json.dumps(_json_safe(result), indent=2) + "\n").encode())


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(result: dict) -> str:
    """A summary for benchmarks/results/: device, versions, command, tables."""
    device, versions = result["device"], result["versions"]
    lines = [f"# gpucnn bench: {device['name']}", "",
             f"- backend: `{device['backend']}`; recorded {result['timestamp']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             f"- command: `{result['command']}`", f"- {precision_line(result)}"]
    for mode in result.get("peer_modes", []):
        flags = ", ".join(f"{k}={v}" for k, v in mode.items() if k not in ("name",))
        lines.append(f"- peer `{mode['name']}`: {flags}")
    if result.get("reference"):
        lines.append(f"- {references_line(result['reference'])}")
    if result.get("kernels"):
        headers, rows = kernel_rows(result["kernels"], device["backend"], result.get("peak_tflops"))
        lines += ["", "## Kernels", "", "Median ms per call; IQR = interquartile range; ours/peer > 1: ours slower.",
                  "", _md_table(headers, rows)]
    if result.get("train"):
        headers, rows = train_rows(result["train"])
        lines += ["", "## Training steps", "", _md_table(headers, rows), "", TRAIN_NOTE]
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path) -> None:
    atomic_write(path, render_markdown(result).encode())
