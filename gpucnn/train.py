"""The training loop: epochs of SGD steps, evaluation, metrics, checkpoints, clean stops.

``Trainer(run, out_dir).fit()`` trains a ``Run`` (``gpucnn.build.build_run``: model, optimizer,
loss, schedule, loaders, and the checkpoint it resumes from) and writes into ``out_dir``:
  config.toml    the resolved config
  metrics.jsonl  one JSON object per epoch (epoch, train_loss, train_acc, test_loss, test_acc,
                 lr, seconds, images_per_s, ...)
  last.npz       after every epoch, and on an interrupt (mid-epoch, resumable exactly)
  best.npz       whenever the test accuracy improves

Determinism: initial weights come from ``training.seed``; the shuffle/augmentation of epoch e
from (seed, e) (``BatchLoader.set_epoch``); the dropout seed of step k of epoch e from
(seed, e, k, layer index). A run interrupted and resumed on the numpy backend therefore ends
with exactly the parameters of an uninterrupted run.

Losses and accuracies stay on the device (``RunningMetrics``) and are read every
``training.log_every`` steps and at the end of an epoch; a non-finite loss seen at such a
read stops the run with ``TrainingError`` and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gpucnn.build import Run
from gpucnn.checkpoint import Progress, save_checkpoint
from gpucnn.config import write_config
from gpucnn.errors import TrainingError
from gpucnn.metrics import MetricsLog, RunningMetrics


def dropout_seed(seed: int, epoch: int, step: int, layer_index: int) -> int:
    """The uint32 seed of one randomized layer (Dropout) at one step: a hash of (seed, epoch, step, layer)."""
    return int(np.random.SeedSequence([seed, epoch, step, layer_index]).generate_state(1, np.uint32)[0])


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CuPy's OutOfMemoryError and kin), found by class name."""
    return any("OutOfMemory" in cls.__name__ for cls in type(exc).__mro__)


def _single_process(run: Run):
    """The DataParallel of a world of one: every hook is the single-process behaviour."""
    from gpucnn.distributed import DataParallel, single_world

    return DataParallel(single_world(), run.model, run.train_loader.backend, run.train_loader.num_samples,
                        run.train_loader.batch_size)


@dataclass
class FitResult:
    status: str  # "completed" or "interrupted"
    epochs_done: int
    best_test_acc: float
    last_record: dict | None


class _StopFlag:
    """SIGINT sets a flag the loop checks between steps (a second Ctrl-C interrupts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """Train a ``Run`` (from ``gpucnn.build.build_run``) on its backend, writing into ``out_dir``.

    ``echo``: where lines go (default print to stdout). ``progress_bar``: tqdm bar (default:
    when stdout is a terminal), else plain lines every ``log_every`` steps.
    ``on_step(trainer)``: called after every step (tests use it to stop a run mid-epoch).
    """

    def __init__(
        self,
        run: Run,
        out_dir: str | Path,
        echo: Callable[[str], None] = print,
        progress_bar: bool | None = None,
        on_step: Callable[["Trainer"], None] | None = None,
    ) -> None:
        if run.train_loader is None:
            raise ValueError("Trainer: the run was built with train=False (no training loader)")
        self.run = run
        self.config = run.config
        self.dataset = run.dataset
        self.model, self.optimizer, self.loss_fn = run.model, run.optimizer, run.loss_fn
        self.train_loader, self.test_loader, self.schedule = run.train_loader, run.test_loader, run.schedule
        self.mean, self.std = run.mean, run.std
        self.backend = run.train_loader.backend
        self.out_dir = Path(out_dir)
        self.echo = echo
        self.progress_bar = sys.stdout.isatty() if progress_bar is None else progress_bar
        self.on_step = on_step
        self.seed = self.config["training"]["seed"]
        self.epochs = self.config["training"]["epochs"]
        self.batch_size = self.config["data"]["batch_size"]
        self.progress = run.checkpoint.progress if run.checkpoint is not None else Progress()
        self._stop = _StopFlag()
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.parallel = run.parallel if run.parallel is not None else _single_process(run)
        if not self.parallel.is_writer:  # rank 0 alone prints and writes
            self.echo, self.progress_bar = (lambda line: None), False

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop after the current step, saving a resumable last.npz (what Ctrl-C does)."""
        self._stop.requested = True

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.npz"

    # ------------------------------------------------------------------ the loop

    def fit(self) -> FitResult:
        if self.parallel.is_writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.out_dir / "config.toml", self.config)
        self.metrics_log.load_before(self.progress.epoch + 1)
        last_record = None
        undo_sigterm = self.parallel.install_sigterm(self.request_stop)
        # Overflow on the numpy backend shows up as a non-finite loss, reported by _check_finite.
        with self._stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while self.progress.epoch < self.epochs:
                record = self._run_epoch(self.progress.epoch)
                if record is None:
                    undo_sigterm()
                    return FitResult("interrupted", self.progress.epoch, self.progress.best_test_acc, last_record)
                last_record = record
                self._stop.requested = self.parallel.agree_stop(self._stop.requested)
                if self._stop.requested and self.progress.epoch < self.epochs:
                    undo_sigterm()
                    self.echo(f"interrupted: saved {self.last_path} (end of epoch {self.progress.epoch}); "
                              f"continue with: gpucnn train --resume {self.last_path}")
                    return FitResult("interrupted", self.progress.epoch, self.progress.best_test_acc, last_record)
        undo_sigterm()
        return FitResult("completed", self.progress.epoch, self.progress.best_test_acc, last_record)

    def _run_epoch(self, epoch: int) -> dict | None:
        """Train one epoch (resuming mid-epoch if progress says so); None when interrupted."""
        progress = self.progress
        log_every = self.config["training"]["log_every"]
        steps = len(self.train_loader)
        skip = progress.step_in_epoch
        running = self.parallel.running_metrics(self.backend, progress.partial_sums if skip else None)
        self.train_loader.set_epoch(epoch)
        bar = self._open_bar(epoch, steps, skip)
        lr = self.schedule(max(progress.global_step - 1, 0))  # the lr of the last step taken
        start = time.perf_counter()
        timed_images = 0
        try:
            for step, (x, y) in enumerate(self.train_loader):
                if step < skip:
                    continue
                lr = self.schedule(progress.global_step)
                self._train_step(epoch, step, x, y, lr, running)
                timed_images += self.parallel.global_batch(int(y.shape[0]))
                progress.global_step += 1
                progress.step_in_epoch = step + 1
                if bar is not None:
                    bar.update(1)
                if (step + 1) % log_every == 0 and step + 1 < steps:
                    self._report_progress(running, epoch, step, steps, lr, timed_images, start, bar)
                if self.on_step is not None:
                    self.on_step(self)
                self._stop.requested = self.parallel.agree_stop(self._stop.requested)
                if self._stop.requested and step + 1 < steps:
                    self._check_finite(running, epoch, step, lr)
                    progress.partial_sums = running.sums()
                    self._save(self.last_path)
                    self._close_bar(bar)
                    self.echo(f"interrupted: saved {self.last_path} (epoch {epoch + 1}, step {step + 1}/{steps}); "
                              f"continue with: gpucnn train --resume {self.last_path}")
                    return None
        finally:
            self._close_bar(bar)
        self.backend.synchronize()
        seconds = time.perf_counter() - start
        self._check_finite(running, epoch, steps - 1, lr)
        train_loss, train_acc = running.read()
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                  "test_loss": None, "test_acc": None, "lr": lr, "seconds": seconds,
                  "images_per_s": timed_images / seconds if seconds > 0 else None,
                  "steps": progress.global_step}
        evaluate = (epoch + 1) % self.config["training"]["eval_every"] == 0 or epoch + 1 == self.epochs
        if evaluate:
            result = self._guard_oom(lambda: self.parallel.evaluate(self.model, self.loss_fn, self.test_loader,
                                                                    self.dataset.num_classes),
                                     self.config["data"]["eval_batch_size"], "--set data.eval_batch_size=")
            record["test_loss"], record["test_acc"] = result.loss, result.accuracy
        progress.epoch = epoch + 1
        progress.step_in_epoch = 0
        progress.partial_sums = np.zeros(3)
        improved = evaluate and record["test_acc"] > progress.best_test_acc
        if improved:
            progress.best_test_acc = record["test_acc"]
        self._save(self.last_path)
        if improved:
            self._save(self.best_path)
        if self.parallel.is_writer:
            self.metrics_log.append(record)
        self.echo(self._summary_line(record))
        return record

    def _train_step(self, epoch: int, step: int, x, y, lr: float, running: RunningMetrics) -> None:
        def work():
            self.optimizer.lr = lr
            if self.parallel.begin_step(step, int(y.shape[0])) == 0.0:  # this rank's slice is empty
                self.parallel.skip_step()
                self.optimizer.step()
                return
            self.model.set_step_seeds(lambda index: self.parallel.step_seed(dropout_seed(self.seed, epoch, step, index)))
            logits = self.model.forward(x, training=True)
            loss = self.loss_fn.forward(logits, y)
            self.parallel.backward(self.loss_fn.backward())  # all-reduced over the ranks, if several
            self.optimizer.step()
            running.update(loss, logits, y)

        self._guard_oom(work, self.batch_size, "--batch-size ")

    def _guard_oom(self, work, batch_size: int, option: str):
        try:
            return work()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            smaller = max(batch_size // 2, 1)
            raise TrainingError(
                f"the {self.backend.device_name} ran out of memory at batch size {batch_size} "
                f"({type(exc).__name__}); try a smaller one, e.g. {option}{smaller}"
            ) from None

    def _check_finite(self, running: RunningMetrics, epoch: int, step: int, lr: float) -> None:
        loss, _ = running.read()
        if math.isfinite(loss):
            return
        if self.last_path.is_file():
            kept = f"the last good checkpoint is {self.last_path} (epoch {self._saved_epoch()})"
        else:
            kept = "no checkpoint was written before it"
        raise TrainingError(
            f"training diverged: the loss became {loss} in epoch {epoch + 1} by step {step + 1} (lr {lr:g}); "
            f"stopped, {kept}. Try a smaller learning rate than optimizer.lr = {self.config['optimizer']['lr']:g}"
        )

    def _saved_epoch(self) -> int:
        try:
            with np.load(self.last_path, allow_pickle=False) as data:
                return int(data["progress/epoch"])
        except Exception:
            return -1

    def _save(self, path: Path) -> None:
        if not self.parallel.before_save(self.model):  # collective; rank 0 writes
            return
        save_checkpoint(path, self.model, self.optimizer, self.config, self.progress, self.mean, self.std)

    # ------------------------------------------------------------------ output

    def _open_bar(self, epoch: int, steps: int, skip: int):
        if not self.progress_bar:
            return None
        from tqdm import tqdm

        return tqdm(total=steps, initial=skip, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                    file=sys.stdout, leave=False, dynamic_ncols=True)

    @staticmethod
    def _close_bar(bar) -> None:
        if bar is not None and not getattr(bar, "disable", False):
            bar.close()

    def _report_progress(self, running, epoch, step, steps, lr, images, start, bar) -> None:
        self._check_finite(running, epoch, step, lr)
        loss, acc = running.read()
        elapsed = time.perf_counter() - start
        speed = images / elapsed if elapsed > 0 else float("nan")
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * acc:.2f}%", img_s=f"{speed:,.0f}")
        else:
            self.echo(f"epoch {epoch + 1}/{self.epochs}  step {step + 1}/{steps}  loss {loss:.4f}  "
                      f"acc {100 * acc:.2f}%  {speed:,.0f} img/s  lr {lr:.4g}")

    def _summary_line(self, r: dict) -> str:
        test = (f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%" if r["test_acc"] is not None
                else "test -")
        speed = f"{r['images_per_s']:,.0f} img/s" if r["images_per_s"] else "- img/s"
        return (f"epoch {r['epoch']}/{self.epochs}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
                f"{test}  {r['seconds']:.1f}s ({speed})  lr {r['lr']:.4g}")
