"""Figures (curves, run comparison, confusion matrix, bench bars) and the metrics.jsonl timestamp."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn.metrics import MetricsLog, utc_timestamp
from gpucnn.plots import (
    MAX_WIDTH_PX, EpochCurves, PlotError, bench_figures, bench_groups, compare_runs, confusion_figure, plot_command,
    read_metrics, save_curves,
)

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _run(folder: Path, epochs: int = 6, val: bool = False, seed: int = 0) -> Path:
    """A run folder whose metrics.jsonl looks like the Trainer's (test evaluated every other epoch)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    log = MetricsLog(folder / "metrics.jsonl")
    for e in range(1, epochs + 1):
        record = {"epoch": e, "train_loss": 2.0 / e + 0.05 * rng.random(), "train_acc": 1 - 0.6 / e,
                  "test_loss": 2.2 / e if e % 2 == 0 else None, "test_acc": 1 - 0.7 / e if e % 2 == 0 else None,
                  "lr": 0.1 * (1 - e / (epochs + 1)), "seconds": 1.0}
        if val:
            record.update(val_loss=2.1 / e, val_acc=1 - 0.65 / e)
        log.append(record)
    (folder / "metrics.jsonl").write_text((folder / "metrics.jsonl").read_text() + "not json\n")
    return folder


def _check_png(path: Path, min_size=(300, 200)) -> np.ndarray:
    """Open the PNG, check its size bounds and that it shows something (pixel variance)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert min_size[0] <= w <= MAX_WIDTH_PX and min_size[1] <= h
    assert pixels.std() > 10, f"{path} looks blank"
    assert (pixels < 128).mean() > 0.005  # some dark ink: lines, text, bars
    return pixels


def test_save_curves_writes_curves_png(tmp_path):
    run = _run(tmp_path / "run-a", val=True)
    path = save_curves(run)
    assert path == run / "curves.png"
    _check_png(path, (1000, 300))
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temp file left


def test_curves_show_what_was_logged(tmp_path):
    """A run with val columns draws more ink than the same run without them (the val lines)."""
    plain, with_val = _run(tmp_path / "p"), _run(tmp_path / "v", val=True)
    ink = [(_check_png(save_curves(r, tmp_path / f"{r.name}.png")) < 200).sum() for r in (plain, with_val)]
    assert ink[1] > ink[0] * 1.05


def test_read_metrics_skips_bad_lines_and_sorts(tmp_path):
    records = read_metrics(_run(tmp_path / "r", epochs=3))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    with pytest.raises(PlotError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "empty")


def test_compare_runs(tmp_path):
    runs = [_run(tmp_path / "a" / "run", seed=1), _run(tmp_path / "b" / "run", val=True, epochs=9, seed=2)]
    out = compare_runs(runs, tmp_path / "cmp.png")
    _check_png(out, (1000, 300))
    lines: list[str] = []
    assert plot_command(runs, tmp_path / "cmd.png", echo=lines.append) == tmp_path / "cmd.png"
    assert lines == [f"wrote {tmp_path / 'cmd.png'}"]
    assert plot_command(runs[:1], None, echo=lines.append) == runs[0] / "curves.png"


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_figure(tmp_path, normalize):
    confusion = np.array([[50, 3, 0], [4, 40, 6], [0, 1, 60]])
    path = confusion_figure(confusion, ["cat", "dog", "emu"], tmp_path / "c.png", normalize=normalize)
    pixels = _check_png(path, (400, 300))
    assert pixels.shape[1] <= MAX_WIDTH_PX
    with pytest.raises(PlotError, match=r"\(2, 2\) for 2 classes"):
        confusion_figure(confusion, ["a", "b"], tmp_path / "bad.png")


def test_confusion_figure_with_many_classes_stays_within_bounds(tmp_path):
    k = 100
    confusion = np.random.default_rng(0).integers(0, 50, (k, k)) + np.eye(k, dtype=int) * 500
    _check_png(confusion_figure(confusion, [f"class{i}" for i in range(k)], tmp_path / "big.png"))


def _bench_records():
    path = sorted(RESULTS.glob("*-kernels.json"))[0]
    data = json.loads(path.read_text())
    return data["kernels"], data["device"]["name"]


def test_bench_figures_one_per_group(tmp_path):
    records, device = _bench_records()
    groups = bench_groups(records)
    assert sum(len(g) for g in groups.values()) == len(records)
    assert max(len(g) for g in groups.values()) <= 50  # large families were split by op
    # Drawing every record takes long on a shared CPU; the LeNet batch-128 cases cover each group.
    some = [r for r in records if r["set"] == "lenet" and r["params"].get("N") == 128]
    paths = bench_figures(some, tmp_path / "bench", device)
    assert len(paths) == len(bench_groups(some)) and len(set(paths)) == len(paths)
    for path in paths:
        _check_png(path, (800, 200))


def test_missing_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    run = _run(tmp_path / "r")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError, match=r'pip install "gpucnn\[plot\]"'):
        save_curves(run)
    assert not (run / "curves.png").exists()


def test_epoch_hook_draws_and_without_matplotlib_says_so_once(tmp_path, monkeypatch):
    run = _run(tmp_path / "r", epochs=2)
    lines: list[str] = []
    hook = EpochCurves(run, echo=lines.append)
    assert hook() == run / "curves.png" and lines == []
    (run / "curves.png").unlink()
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    hook = EpochCurves(run, echo=lines.append)
    assert hook() is None and hook() is None
    assert len(lines) == 1 and 'pip install "gpucnn[plot]"' in lines[0]
    assert not (run / "curves.png").exists()


def test_unwritable_output_is_a_clear_error(tmp_path):
    with pytest.raises(PlotError, match="does not exist"):
        save_curves(_run(tmp_path / "r"), tmp_path / "no" / "such" / "c.png")


# metrics.jsonl time stamps ------------------------------------------------------------------
def test_metrics_rows_carry_an_iso_timestamp(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    log.append({"epoch": 1, "seconds": 1.5})
    log.append({"epoch": 2, "seconds": 1.0, "time": "2026-01-01T00:00:00Z"})  # an existing stamp is kept
    after = datetime.datetime.now(datetime.timezone.utc)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    stamp = datetime.datetime.strptime(rows[0]["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert before <= stamp <= after and rows[0]["seconds"] == 1.5
    assert rows[1]["time"] == "2026-01-01T00:00:00Z"
    resumed = MetricsLog(tmp_path / "metrics.jsonl")
    resumed.load_before(2)
    assert resumed.records == rows[:1]  # a resumed run keeps the first row's own time


def test_utc_timestamp_converts_offsets():
    tz = datetime.timezone(datetime.timedelta(hours=2))
    assert utc_timestamp(datetime.datetime(2026, 12, 2, 7, 12, 33, tzinfo=tz)) == "2026-12-02T05:12:33Z"
