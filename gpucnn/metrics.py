"""Running loss/accuracy sums kept on the device, confusion matrices, and the metrics log.

``RunningMetrics`` adds each batch's loss and correct count to device scalars, in place (so a
CUDA graph that captured the addition keeps adding into the same arrays), and a training
step never waits for the GPU; ``read()`` copies them to the host (one sync) when the caller
wants numbers (every ``log_every`` steps and at the end of an epoch).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

import numpy as np

from gpucnn.atomic import write_text_atomic


class RunningMetrics:
    """Sums of loss * batch, correct predictions and samples, accumulated on ``backend``."""

    def __init__(self, backend, start: np.ndarray | None = None) -> None:
        self.backend = backend
        xp = backend.xp
        start = np.zeros(3) if start is None else np.asarray(start, dtype=np.float64)
        self._loss = xp.asarray(start[0], dtype=xp.float64)
        self._correct = xp.asarray(int(start[1]), dtype=xp.int64)
        self.samples = int(start[2])

    def update(self, loss, logits, labels) -> None:
        """Add a batch: ``loss`` a 0-d mean loss, ``logits`` (B, K), ``labels`` (B,) ints (device arrays)."""
        self.accumulate(loss, logits, labels)
        self.count(int(labels.shape[0]))

    def accumulate(self, loss, logits, labels) -> None:
        """The device half of ``update``: add loss * B and the correct count into the sums, in place.

        In place (the sums keep their addresses) and without a host read, so a CUDA graph can
        capture it; its temporaries (the argmax, the comparison) end with the call."""
        xp = self.backend.xp
        self._loss += loss.astype(xp.float64) * int(labels.shape[0])
        self._correct += (xp.argmax(logits, axis=1) == labels).sum()

    def count(self, batch: int) -> None:
        """The host half of ``update``: ``batch`` more samples seen."""
        self.samples += int(batch)

    def adopt(self, other: "RunningMetrics") -> None:
        """Accumulate from now on into ``other``'s device sums, which take this one's current values
        (a captured step keeps writing the same arrays while each epoch has its own metrics)."""
        other._loss[...] = self._loss
        other._correct[...] = self._correct
        self._loss, self._correct = other._loss, other._correct

    def sums(self) -> np.ndarray:
        """(3,) float64 host copy: loss sum, correct count, samples (synchronizes)."""
        return np.array([float(self._loss), float(self._correct), float(self.samples)])

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far; nan when no sample was seen (synchronizes)."""
        loss_sum, correct, samples = self.sums()
        if samples == 0:
            return math.nan, math.nan
        return loss_sum / samples, correct / samples


def confusion_matrix(y_true, y_pred, num_classes: int, xp=np):
    """(K, K) int64 counts, rows = true class, columns = predicted class (on ``xp``'s device)."""
    flat = y_true.astype(xp.int64) * num_classes + y_pred.astype(xp.int64)
    return xp.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_table(confusion: np.ndarray, classes: list[str]) -> str:
    """A text table: class, test images, correct, accuracy; then the overall line."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    correct = np.diag(confusion)
    width = max(len("class"), *(len(c) for c in classes), len("overall"))
    lines = [f"{'class':<{width}}  {'images':>7}  {'correct':>7}  {'accuracy':>8}"]
    lines.append("-" * len(lines[0]))
    for name, n, c in zip(classes, totals, correct):
        acc = f"{100.0 * c / n:7.2f}%" if n else "     n/a"
        lines.append(f"{name:<{width}}  {n:>7d}  {c:>7d}  {acc:>8}")
    lines.append("-" * len(lines[0]))
    n, c = int(totals.sum()), int(correct.sum())
    lines.append(f"{'overall':<{width}}  {n:>7d}  {c:>7d}  {100.0 * c / max(n, 1):7.2f}%")
    return "\n".join(lines)


def utc_timestamp(now: datetime.datetime | None = None) -> str:
    """Wall-clock time as ISO-8601 UTC to the second, e.g. ``2026-12-02T05:12:33Z``."""
    now = datetime.datetime.now(datetime.timezone.utc) if now is None else now.astimezone(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


class MetricsLog:
    """``metrics.jsonl``: one JSON object per epoch, rewritten atomically after each epoch.

    ``append`` stamps each new record with ``"time"`` (``utc_timestamp()``, when it was
    logged) beside its ``"seconds"`` (the epoch's duration); records kept from a resumed
    run keep their own times.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict] = []

    def load_before(self, epoch: int) -> None:
        """Keep the records of epochs < ``epoch`` from an existing file (when resuming)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] < epoch:
                kept.append(record)
        self.records = kept

    def append(self, record: dict) -> None:
        """Add ``record`` (stamped in place with ``"time"`` unless it has one) and rewrite the file."""
        self.add(record)
        self.write()

    def add(self, record: dict) -> None:
        """Add ``record`` (stamped with ``"time"`` unless it has one) without writing the file yet."""
        record.setdefault("time", utc_timestamp())
        self.records.append(record)

    def replace(self, records: list[dict]) -> None:
        """Make ``records`` the whole log (a resumed run's history, from its checkpoint); ``write`` saves it."""
        self.records = [dict(r) for r in records]

    def write(self) -> None:
        write_text_atomic(self.path, jsonl_text(self.records))


def jsonl_text(records: list[dict]) -> str:
    """One strict-JSON line per record."""
    return "".join(json.dumps(_jsonable(r), allow_nan=True) + "\n" for r in records)


def _jsonable(record: dict) -> dict:
    """Non-finite floats become null so every line is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
