"""Pictures of training and benchmarks (matplotlib, extra ``gpucnn[plot]``; Agg, no display).

``save_curves(run_dir)``: loss, accuracy and learning rate of one run against epoch (from
its metrics.jsonl) -> ``run_dir/curves.png``. ``compare_runs(run_dirs, output)``: several
runs on shared axes. ``confusion_figure(confusion, classes, output)``: a confusion matrix
with the numbers written. ``bench_figures(records, prefix, device)``: one bar chart per op
group of ``gpucnn bench`` kernel records, gpucnn against its peers.

Figures are drawn on ``matplotlib.figure.Figure`` objects (not pyplot), so nothing global
changes and no GUI backend is touched; every PNG is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from gpucnn.atomic import atomic_path
from gpucnn.errors import GpucnnError

MAX_WIDTH_PX = 2000
DPI = 100
# (metrics.jsonl prefix, legend label, line style): train solid, val dashed, test dotted-dashed.
SPLITS = (("train", "train", "-"), ("val", "val", "--"), ("test", "test", "-."))
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


class PlotError(GpucnnError):
    """A figure cannot be made: matplotlib missing, no metrics to plot, a bad path."""


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError('plots need matplotlib: pip install "gpucnn[plot]"') from None
    return Figure, FigureCanvasAgg


def _new_figure(width_in: float, height_in: float):
    Figure, Canvas = _figure_class()
    fig = Figure(figsize=(min(width_in, MAX_WIDTH_PX / DPI), height_in), dpi=DPI)
    Canvas(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise PlotError(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


# Training curves ---------------------------------------------------------------------------
def read_metrics(run_dir) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` in epoch order (lines that are not JSON objects are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"run {run_dir}: no metrics.jsonl (expected the --out folder of gpucnn train)")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), (int, float)):
            records.append(record)
    if not records:
        raise PlotError(f"run {run_dir}: metrics.jsonl has no epoch records yet")
    return sorted(records, key=lambda r: r["epoch"])


def _series(records: list[dict], key: str, scale: float = 1.0) -> tuple[list, list] | None:
    """(epochs, values) where ``key`` has a finite number; None when it never does."""
    points = [(r["epoch"], scale * r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return (list(zip(*points)) if points else None)


def _curve_axes(fig):
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(1, 3)
    titles = ("loss", "accuracy (%)", "learning rate")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("cross-entropy")
    axes[1].set_ylabel("% correct")
    axes[2].set_ylabel("lr (end of epoch)")
    return axes


def _draw_run(axes, records: list[dict], color=None, label: str | None = None) -> None:
    """Loss and accuracy of every split present, and the lr, of one run on the three axes."""
    for split, split_label, style in SPLITS:
        name = split_label if label is None else f"{label} {split_label}"
        line_color = color or SPLIT_COLORS[split]
        marker = "o" if len(records) < 30 else None
        for ax, key, scale in ((axes[0], f"{split}_loss", 1.0), (axes[1], f"{split}_acc", 100.0)):
            series = _series(records, key, scale)
            if series is not None:
                ax.plot(*series, linestyle=style, color=line_color, marker=marker, markersize=3, label=name)
    lr = _series(records, "lr")
    if lr is not None:
        axes[2].plot(*lr, color=color or "tab:purple", marker="o" if len(records) < 30 else None, markersize=3,
                     label=label)


def _best_line(records: list[dict]) -> str:
    """'N epochs, best <split> accuracy X% (epoch e)' on the split best.npz is chosen by.

    Like the Trainer: validation accuracy when the run has a validation split, else
    training accuracy; the test accuracy of that epoch is added, since picking the epoch of
    the best test accuracy would report a number no checkpoint was chosen for.
    """
    for split in ("val", "train"):
        best = _series(records, f"{split}_acc", 100.0)
        if best is not None:
            break
    else:
        return f"{len(records)} epochs"
    i = int(np.argmax(best[1]))
    epoch = best[0][i]
    line = f"{len(records)} epochs, best {split} accuracy {best[1][i]:.2f}% (epoch {epoch})"
    test = [100.0 * r["test_acc"] for r in records if r["epoch"] == epoch
            and isinstance(r.get("test_acc"), (int, float)) and math.isfinite(r["test_acc"])]
    return line + (f", test {test[0]:.2f}%" if test else "")


def save_curves(run_dir, path=None) -> Path:
    """Loss, accuracy (train/val/test when logged) and lr against epoch -> ``path`` (default run_dir/curves.png)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    fig = _new_figure(15, 4.6)
    axes = _curve_axes(fig)
    _draw_run(axes, records)
    for ax in axes[:2]:
        if ax.lines:
            ax.legend(loc="best", fontsize=9)
    fig.suptitle(f"{run_dir.resolve().name}: {_best_line(records)}", fontsize=12)
    fig.tight_layout()
    return _save(fig, run_dir / "curves.png" if path is None else path)


def compare_runs(run_dirs, output) -> Path:
    """Curves of several runs on shared axes: one colour per run, line style per split."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise PlotError("compare_runs: give at least one run folder")
    runs = [(d, read_metrics(d)) for d in run_dirs]
    fig = _new_figure(16, 5.2)
    axes = _curve_axes(fig)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    names = _run_names(run_dirs)
    for (d, records), color, name in zip(runs, colors, names):
        _draw_run(axes, records, color=color, label=name)
    from matplotlib.lines import Line2D

    run_handles = [Line2D([], [], color=c, label=n) for c, n in zip(colors, names)]
    split_handles = [Line2D([], [], color="0.3", linestyle=s, label=label) for _, label, s in SPLITS
                     if any(_series(r, f"{label}_loss") for _, r in runs)]
    # One legend below the axes: inside them ("best" place or not) it covered curves.
    handles = run_handles + split_handles
    ncol = min(len(handles), 6)
    rows = math.ceil(len(handles) / ncol)
    fig.set_figheight(fig.get_figheight() + 0.25 * rows)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    # One line per run: side by side, three long run names ran off the figure's edges.
    fig.suptitle("\n".join(f"{n}: {_best_line(r)}" for n, (_, r) in zip(names, runs))
                 if len(runs) <= 3 else f"{len(runs)} runs", fontsize=11)
    fig.tight_layout(rect=(0, (0.12 + 0.25 * rows) / fig.get_figheight(), 1, 1))
    return _save(fig, output)


def _run_names(run_dirs: list[Path]) -> list[str]:
    """Folder names, made unique with their parent's name when two are the same."""
    names = [d.resolve().name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in run_dirs]
    return names


class EpochCurves:
    """Trainer hook: rewrite ``out_dir/curves.png`` after each epoch (``hook()``).

    A figure that cannot be made (no matplotlib, a full disk, anything) is said once in one
    line through ``echo`` and not tried again: a picture never stops a training run.
    """

    def __init__(self, out_dir, echo: Callable[[str], None] = print) -> None:
        self.out_dir = Path(out_dir)
        self.echo = echo
        self.disabled = False

    def __call__(self) -> Path | None:
        if self.disabled:
            return None
        try:
            return save_curves(self.out_dir)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self.disabled = True
            reason = str(exc) if isinstance(exc, GpucnnError) else f"{type(exc).__name__}: {exc}"
            self.echo(f"note: not drawing {self.out_dir / 'curves.png'} ({reason})")
            return None


# Confusion matrix --------------------------------------------------------------------------
def confusion_figure(confusion, classes, output, normalize: bool = False, title: str | None = None) -> Path:
    """(K, K) counts (rows = true class) as a heat map with class names and the numbers written.

    ``normalize``: show each row as percent of that class's images.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    k = len(classes)
    if counts.shape != (k, k):
        raise PlotError(f"confusion_figure: confusion must be ({k}, {k}) for {k} classes, got {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    values = np.divide(100.0 * counts, totals, out=np.zeros_like(counts), where=totals > 0) if normalize else counts
    side = float(np.clip(1.0 + 0.55 * k, 5.0, MAX_WIDTH_PX / DPI - 1.5))
    fig = _new_figure(side + 1.5, side)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class" if normalize else "images")
    rotate = max(len(str(c)) for c in classes) * k > 40  # long names would overlap side by side
    ax.set_xticks(range(k), labels=[str(c) for c in classes], rotation=45 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.set_yticks(range(k), labels=[str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 40:  # numbers in the cells stop being legible beyond that
        font = 10 if k <= 12 else max(5, int(120 / k))
        high = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.1f}" if normalize else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=font,
                        color="white" if values[i, j] > 0.55 * high else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} images, accuracy {100 * accuracy:.2f}%)"
                 + (", rows in %" if normalize else ""))
    fig.tight_layout()
    return _save(fig, output)


# Benchmarks --------------------------------------------------------------------------------
GROUP_SPLIT_ABOVE = 50  # a family with more records than this gets one figure per op


def _op_base(op: str) -> str:
    """'relu_forward' -> 'relu': an op's forward and backward belong in one figure."""
    for tail in ("_forward", "_backward"):
        if op.endswith(tail):
            return op[: -len(tail)]
    return op


def bench_groups(records: list[dict]) -> dict[str, list[dict]]:
    """Kernel records by op family (conv, pool, act...); a large family is split by op
    (relu: forward and backward), and an op still too large by direction (conv2d_forward...).

    Splitting by direction alone cut the act family of two batch sizes into 14 figures of 4 bars.
    """
    families: dict[str, list[dict]] = {}
    for r in records:
        families.setdefault(r.get("family") or r["op"], []).append(r)
    groups: dict[str, list[dict]] = {}
    for family, members in families.items():
        if len(members) <= GROUP_SPLIT_ABOVE:
            groups[family] = members
            continue
        by_base: dict[str, list[dict]] = {}
        for r in members:
            by_base.setdefault(_op_base(r["op"]), []).append(r)
        for base, ops in by_base.items():
            if len(ops) <= GROUP_SPLIT_ABOVE:
                names = {r["op"] for r in ops}
                groups[names.pop() if len(names) == 1 else base] = ops
            else:
                for r in ops:
                    groups.setdefault(r["op"], []).append(r)
    return groups


def _record_label(r: dict) -> str:
    op = r["op"] + (f"[{r['variant']}]" if r.get("variant") else "")
    where = f"{r['set']}/{r['layer']}" if r.get("layer") else r.get("set", "")
    shape = r.get("shape", "").split(":", 1)[-1]
    return f"{where} {op}\n{shape}"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def bench_figures(records: list[dict], output_prefix, device_name: str) -> list[Path]:
    """One horizontal bar chart per op group -> ``{output_prefix}-{group}.png``; returns the paths.

    Bars: median ms per call (log scale) of gpucnn and each peer, side by side for every
    shape; on each peer's bar the ratio ours/peer (> 1: gpucnn is slower).
    """
    records = [r for r in records if r.get("ours", {}).get("ms") is not None]
    if not records:
        raise PlotError("bench_figures: no kernel results with timings to plot")
    peers: list[str] = []
    for r in records:
        peers += [p for p in r.get("peers", {}) if p not in peers]
    series = ["gpucnn", *peers]
    colors = {name: f"C{i}" for i, name in enumerate(series)}
    paths = []
    for group, members in bench_groups(records).items():
        path = Path(f"{output_prefix}-{_safe_name(group)}.png")
        paths.append(_bench_group_figure(group, members, series, colors, path, device_name))
    return paths


_BENCH_FONT = 7  # points: tick labels and the notes on the bars


def _ratio_text(ratio: float) -> str:
    """'0.44x', '12.3x', '0.0021x': three significant digits, so a tiny ratio is not '0.00x'."""
    return f"{ratio:.3g}x"


def _bench_group_figure(group, members, series, colors, path: Path, device_name: str) -> Path:
    n = len(members)
    bar = 0.8 / len(series)
    has_peers = len(series) > 1
    fig = _new_figure(14, 1.9 + n * (0.16 * len(series) + 0.22))
    width_px, height = fig.get_figwidth() * DPI, fig.get_figheight()
    renderer = fig.canvas.get_renderer()
    ax = fig.subplots()
    ax.set_xscale("log")
    values, notes_px = [], 0.0
    for s, name in enumerate(series):
        ys, widths, notes = [], [], []
        for i, r in enumerate(members):
            if name == "gpucnn":
                ms, ratio = r["ours"]["ms"], None
            else:
                entry = r.get("peers", {}).get(name) or {}
                ms, ratio = entry.get("ms"), entry.get("ratio")
            if ms is None or not ms > 0:
                continue
            ys.append(i + (s - (len(series) - 1) / 2) * bar)
            widths.append(ms)
            notes.append((f"{ms:.3g} ms" + (f"  ours/{name} {_ratio_text(ratio)}" if ratio is not None else ""),
                          "firebrick" if ratio is not None and ratio > 1 else "black"))
        if not ys:
            continue
        ax.barh(ys, widths, height=bar * 0.92, color=colors[name], label=name)  # one call per series: fast
        values += widths
        for y, ms, (text, color) in zip(ys, widths, notes):
            note = ax.text(ms * 1.05, y, text, va="center", fontsize=_BENCH_FONT, color=color)
            # Text extents need no full draw (tight_layout would re-render every label).
            notes_px = max(notes_px, note.get_window_extent(renderer).width)
    ax.set_yticks(range(n), labels=[_record_label(r) for r in members], fontsize=_BENCH_FONT)
    # Left margin from the widest tick label: a fixed one clipped long layer/op/shape labels.
    labels_px = max(t.get_window_extent(renderer).width for t in ax.get_yticklabels())
    left, right = min(0.5, max(0.06, (labels_px + 14) / width_px)), 0.98
    ax.set_ylim(n - 0.5, -0.5)  # first record on top
    # On a log axis a note of t pixels after the longest bar needs the right end R decades past it,
    # R = f * (L + R) with f = t / axes width and L the decades left of it: R = f * L / (1 - f).
    low, high = math.log10(min(values) / 1.5), math.log10(max(values) * 1.05)
    f = min(0.6, (1.06 * notes_px + 8) / ((right - left) * width_px))
    span = max(high - low, 0.3)  # one value, or all alike: still a readable stretch of axis
    ax.set_xlim(10 ** low, 10 ** (high + f * span / (1 - f)))
    ax.set_xlabel("median time per call (ms, log scale)"
                  + ("; ours/peer > 1 (red): gpucnn slower" if has_peers else ""))
    ax.grid(True, axis="x", which="both", alpha=0.25)
    ax.set_title(f"gpucnn bench: {group} ({n} case{'s' if n != 1 else ''}) on {device_name}", loc="left")
    # The legend above the axes, right of the title: inside them it covered bars or notes.
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(series), fontsize=8, frameon=False,
              borderaxespad=0.2)
    # Fixed margins instead of tight_layout, which re-renders every label of a tall figure.
    fig.subplots_adjust(left=left, right=right, top=1 - 0.55 / height, bottom=0.65 / height)
    return _save(fig, path)


# The `gpucnn plot` command -----------------------------------------------------------------
def plot_command(run_dirs, output=None, echo: Callable[[str], None] = print) -> Path:
    """Body of ``gpucnn plot RUN_DIR... [--output FILE.png]``; returns the path written.

    One run: its curves (default RUN_DIR/curves.png). Several: compared on shared axes
    (default ./runs.png, as the CLI help says).
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise PlotError("plot: give at least one run folder (the --out of gpucnn train)")
    if len(run_dirs) == 1:
        path = save_curves(run_dirs[0], output)
    else:
        path = compare_runs(run_dirs, output if output is not None else Path(os.getcwd()) / "runs.png")
    echo(f"wrote {path}")
    return path
