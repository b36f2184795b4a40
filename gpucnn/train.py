"""The training loop: epochs of SGD steps, evaluation, metrics, checkpoints, clean stops.

``Trainer(run, out_dir).fit()`` trains a ``Run`` (``gpucnn.build.build_run``: model, optimizer,
loss, schedule, loaders, and the checkpoint it resumes from) and writes into ``out_dir``:
  config.toml    the resolved config
  metrics.jsonl  one JSON object per epoch (epoch, train_loss, train_acc, test_loss, test_acc,
                 lr, seconds, images_per_s, precision (the backend's GEMM precision), ...)
  last.npz       after every epoch, and on an interrupt (mid-epoch, resumable exactly)
  best.npz       whenever the test accuracy improves

Determinism: initial weights come from ``training.seed``; the shuffle/augmentation of epoch e
from (seed, e) (``BatchLoader.set_epoch``); the dropout seed of step k of epoch e from
(seed, e, k, layer index). A run interrupted and resumed on the numpy backend therefore ends
with exactly the parameters of an uninterrupted run.

CUDA graphs (``training.cuda_graph``, gpucnn.cuda.graph): with ``auto``/``on`` and nothing
blocking, each step runs as ``gpucnn.graph_step.CapturableStep``: the batch copied into static buffers, the
lr and dropout seeds written to device memory, then one graph launch on the cuda backend
(the same step eagerly on the emulated backend). The seeds and lrs are those of the eager
path, so a run is the same run either way (up to the GEMM kernels, see KernelOps).

Losses and accuracies stay on the device (``RunningMetrics``) and are read every
``training.log_every`` steps and at the end of an epoch; a non-finite loss seen at such a
read stops the run with ``TrainingError`` and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gpucnn.build import Run
from gpucnn.checkpoint import Progress, save_checkpoint
from gpucnn.config import write_config
from gpucnn.cuda.graph import step_blockers
from gpucnn.errors import ConfigError, TrainingError
from gpucnn.evaluate import evaluate_model
from gpucnn.graph_step import CapturableStep, persistent_signature
from gpucnn.metrics import MetricsLog, RunningMetrics
from gpucnn.optim import clip_grad_norm
from gpucnn.plots import EpochCurves
from gpucnn.rundir import checkpoint_epoch, prepare_out_dir
from gpucnn.tta import TTA_LEVELS


def dropout_seed(seed: int, epoch: int, step: int, layer_path: int | str) -> int:
    """The uint32 seed of one randomized layer (Dropout) at one step: a hash of (seed, epoch, step, layer).

    ``layer_path``: the top-level index, or a nested layer's path such as "3.body.1"."""
    where = [layer_path] if isinstance(layer_path, int) else [zlib.crc32(str(layer_path).encode()), 1 << 32]
    return int(np.random.SeedSequence([seed, epoch, step, *where]).generate_state(1, np.uint32)[0])


def is_out_of_memory(exc: BaseException) -> bool:
    """True for running out of memory: host (MemoryError, the numpy backend) or device (CuPy's
    OutOfMemoryError and kin, found by class name)."""
    return isinstance(exc, MemoryError) or any("OutOfMemory" in cls.__name__ for cls in type(exc).__mro__)


def _single_process(run: Run):
    """The DataParallel of a world of one: every hook is the single-process behaviour."""
    from gpucnn.distributed import DataParallel, single_world

    return DataParallel(single_world(), run.model, run.train_loader.backend, run.train_loader.num_samples,
                        run.train_loader.batch_size)


@dataclass
class FitResult:
    status: str  # "completed" or "interrupted"
    epochs_done: int
    best_acc: float  # of the metric best.npz is chosen on (Trainer.monitor); -1 before any
    last_record: dict | None
    signal: int | None = None  # what stopped an interrupted run (SIGINT, SIGTERM, SIGHUP), None for request_stop


# Ctrl-C, and what schedulers send before preemption or when the terminal goes away.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopFlag:
    """A stop signal sets a flag the loop checks between steps; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def describe(self) -> str:
        return "interrupted" if self.signal in (None, signal.SIGINT) else f"stopped by {signal.Signals(self.signal).name}"


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
        self.monitor = "val_acc" if run.val_loader is not None else "train_acc"
        self.clip_norm = self.config["training"]["clip_grad_norm"]
        self._curves = EpochCurves(self.out_dir, self.echo) if self.config["training"]["curves"] else None
        stopping = self.config["training"]["early_stopping"]
        if stopping["patience"] and stopping["metric"].startswith("val_") and run.val_loader is None:
            raise ConfigError("training.early_stopping.metric: val_* needs a validation set, but data.val_fraction "
                              "is 0 and the dataset ships none; set data.val_fraction > 0 or use a train_* metric")
        steps = len(self.train_loader)
        if self.progress.step_in_epoch >= steps:
            where = f"checkpoint {run.checkpoint.path}" if getattr(run.checkpoint, "path", None) else "the checkpoint"
            raise TrainingError(
                f"{where} stopped at step {self.progress.step_in_epoch} of an epoch, but an epoch of this run "
                f"has {steps} steps (data.batch_size = {self.batch_size}); resume with the batch size it was "
                f"saved with"
            )
        self._stop = _StopFlag()
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.parallel = run.parallel if run.parallel is not None else _single_process(run)
        if not self.parallel.is_writer:  # rank 0 alone prints and writes
            self.echo, self.progress_bar = (lambda line: None), False
        self._said: set[str] = set()
        self.cuda_graph = self._cuda_graph_mode()  # None: eager steps; "auto"/"on": CapturableStep
        self._steps: dict[int, CapturableStep] = {}  # by batch size
        self._sums: RunningMetrics | None = None  # what the capturable steps accumulate into
        self._adopted: RunningMetrics | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop after the current step, saving a resumable last.npz (what Ctrl-C does)."""
        self._stop.requested = True

    @property
    def captured_steps(self) -> list[CapturableStep]:
        """The capturable steps built so far, one per batch size (empty for eager steps)."""
        return list(self._steps.values())

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.npz"

    # ------------------------------------------------------------------ the loop

    def fit(self) -> FitResult:
        if self.parallel.is_writer:
            prepare_out_dir(self.out_dir)
            write_config(self.out_dir / "config.toml", self.config)
        self._restore_metrics()
        last_record = None
        # Overflow on the numpy backend shows up as a non-finite loss, reported by _check_finite.
        with self._stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while self.progress.epoch < self.epochs:
                record = self._run_epoch(self.progress.epoch)
                if record is None:
                    return self._interrupted(last_record)
                last_record = record
                self._stop.requested = self.parallel.agree_stop(self._stop.requested)
                if self.progress.epoch < self.epochs and self.should_stop_early():
                    rule = self.config["training"]["early_stopping"]
                    self.echo(f"early stopping: {rule['metric']} has not improved for {rule['patience']} epochs")
                    break
                if self._stop.requested and self.progress.epoch < self.epochs:
                    self.echo(f"{self._stop.describe()}: saved {self.last_path} (end of epoch {self.progress.epoch}); "
                              f"continue with: gpucnn train --resume {self.last_path}")
                    return self._interrupted(last_record)
        return FitResult("completed", self.progress.epoch, self.progress.best_acc, last_record)

    def _interrupted(self, last_record) -> FitResult:
        return FitResult("interrupted", self.progress.epoch, self.progress.best_acc, last_record,
                         self._stop.signal)

    def _restore_metrics(self) -> None:
        """metrics.jsonl := the completed epochs' rows. A checkpoint carries them (a kill between
        writing it and metrics.jsonl loses none); one written before it did keeps the file's rows."""
        checkpoint = self.run.checkpoint
        if checkpoint is not None and checkpoint.history:
            self.metrics_log.replace([r for r in checkpoint.history if r.get("epoch", 0) <= self.progress.epoch])
            if self.parallel.is_writer:
                self.metrics_log.write()
        else:
            self.metrics_log.load_before(self.progress.epoch + 1)

    def _run_epoch(self, epoch: int) -> dict | None:
        """Train one epoch (resuming mid-epoch if progress says so); None when interrupted."""
        progress = self.progress
        log_every = self.config["training"]["log_every"]
        steps = len(self.train_loader)
        skip = progress.step_in_epoch
        running = self.parallel.running_metrics(self.backend, progress.partial_sums if skip else None)
        self.train_loader.set_epoch(epoch)
        self.model.set_epoch(epoch)  # e.g. whitening_conv2d.bias_epochs freezes its bias from then on
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
                if self.run.lookahead is not None:  # outside the step (its CUDA graph): every k-th step
                    self.run.lookahead.after_step(progress.global_step)
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
                    self.echo(f"{self._stop.describe()}: saved {self.last_path} (epoch {epoch + 1}, step {step + 1}/{steps}); "
                              f"continue with: gpucnn train --resume {self.last_path}")
                    return None
        finally:
            self._close_bar(bar)
        self.backend.synchronize()
        seconds = time.perf_counter() - start
        self._check_finite(running, epoch, steps - 1, lr)
        train_loss, train_acc = running.read()
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                  "val_loss": None, "val_acc": None, "test_loss": None, "test_acc": None, "lr": lr,
                  "seconds": seconds, "images_per_s": timed_images / seconds if seconds > 0 else None,
                  "steps": progress.global_step, "precision": self.backend.precision}
        evaluate = (epoch + 1) % self.config["training"]["eval_every"] == 0 or epoch + 1 == self.epochs
        if evaluate:
            averaged = self.run.ema.averaged() if self.run.ema is not None else contextlib.nullcontext()
            with averaged:  # with training.ema, the averaged weights are the ones evaluated
                self._evaluate_splits(record)
        progress.epoch = epoch + 1
        progress.step_in_epoch = 0
        progress.partial_sums = np.zeros(3)
        # best.npz is chosen on validation accuracy (training accuracy without a validation set);
        # the test set is reported, never used to choose.
        chosen = record[self.monitor]
        improved = chosen is not None and chosen > progress.best_acc
        if improved:
            progress.best_acc = chosen
        # Checkpoints first, carrying this row; then metrics.jsonl. A kill between the writes
        # loses nothing: resuming from last.npz rewrites the rows from its copy.
        self.metrics_log.add(record)
        self._save(self.last_path)
        if improved:
            self._save(self.best_path)
        if self.parallel.is_writer:
            self.metrics_log.write()
            if self._curves is not None:
                self._curves()
        self.echo(self._summary_line(record))
        return record

    def should_stop_early(self) -> bool:
        """training.early_stopping: True when its metric has not improved for ``patience`` epochs."""
        rule = self.config["training"]["early_stopping"]
        if not rule["patience"]:
            return False
        metric, sign = rule["metric"], (-1.0 if rule["metric"].endswith("_loss") else 1.0)
        values = [(r["epoch"], r.get(metric)) for r in self.metrics_log.records if r.get(metric) is not None]
        if not values:
            return False
        best_epoch = max(values, key=lambda item: (sign * item[1], -item[0]))[0]
        return values[-1][0] - best_epoch >= rule["patience"]

    def _evaluate_splits(self, record: dict) -> None:
        """Fill ``record``'s val_* (when there is a validation set) and test_* loss and accuracy."""
        for split, loader in (("val", self.run.val_loader), ("test", self.test_loader)):
            if loader is not None:
                result = self._guard_oom(lambda: self.parallel.evaluate(self.model, self.loss_fn, loader,
                                                                        self.dataset.num_classes),
                                         self.config["data"]["eval_batch_size"], "--set data.eval_batch_size=")
                record[f"{split}_loss"], record[f"{split}_acc"] = result.loss, result.accuracy
        level = TTA_LEVELS[self.config["training"]["tta"]]
        if level and record["epoch"] == self.epochs and not self.parallel.active:
            result = self._guard_oom(lambda: evaluate_model(self.model, self.loss_fn, self.test_loader,
                                                            self.dataset.num_classes, tta=level),
                                     self.config["data"]["eval_batch_size"], "--set data.eval_batch_size=")
            record["test_loss_tta"], record["test_acc_tta"] = result.loss, result.accuracy

    def _cuda_graph_mode(self) -> str | None:
        """training.cuda_graph resolved for this run: the StepGraph setting ("auto"/"on"), or
        None for the eager step (off, the numpy backend, or something that blocks a graph)."""
        setting = self.config["training"]["cuda_graph"]
        if setting == "off" or not self.backend.kernels:
            return None  # numpy + on was refused by build_run (check_cuda_graph_setting)
        parallel = self.parallel
        blockers = step_blockers(optimizer=type(self.optimizer).__name__, device_lr=self.optimizer.device_lr,
                                 ema=self.run.ema is not None, clip_norm=self.clip_norm,
                                 world_size=parallel.world.size if parallel.active else 1)
        if parallel.active and parallel.world.size == 1:
            blockers.append("data parallel forced on one rank (NCCL all-reduce each step)")
        if not blockers:
            return setting
        if setting == "on":
            raise ConfigError(f"training.cuda_graph = 'on': the step cannot be captured: {'; '.join(blockers)}")
        if self.backend.on_device:
            self._say_once(f"training.cuda_graph = auto: eager steps ({'; '.join(blockers)})")
        return None

    def _say_once(self, line: str) -> None:
        """Echo ``line`` the first time only (why cuda_graph = auto runs eagerly)."""
        if line not in self._said:
            self._said.add(line)
            self.echo(line)

    def _capturable_step(self, x, y) -> CapturableStep:
        """The step for this batch size, rebuilt when the trainable set or a persistent array changed."""
        batch = int(y.shape[0])
        built = self._steps.get(batch)
        if built is not None and built.signature != persistent_signature(self.model, self.optimizer):
            self._steps.clear()  # every size's graph captured the old arrays
            built = None
        if built is None:
            if self._sums is None:
                self._sums = RunningMetrics(self.backend)
            built = self._steps[batch] = CapturableStep(self.model, self.loss_fn, self.optimizer, self.backend, x, y,
                                                        self._sums, self.cuda_graph, backward=self.parallel.backward)
        return built

    def _train_step(self, epoch: int, step: int, x, y, lr: float, running: RunningMetrics) -> None:
        def seed_of(path):
            return self.parallel.step_seed(dropout_seed(self.seed, epoch, step, path))

        def work():
            self.optimizer.lr = lr
            if self.parallel.begin_step(step, int(y.shape[0])) == 0.0:  # this rank's slice is empty
                self.parallel.skip_step()
                self.optimizer.step()
                return
            self.model.set_step_seeds(seed_of)
            logits = self.model.forward(x, training=True)
            loss = self.loss_fn.forward(logits, y)
            self.parallel.backward(self.loss_fn.backward())  # all-reduced over the ranks, if several
            if self.clip_norm:  # of the whole (all-reduced) gradient
                clip_grad_norm(self.model, self.clip_norm)
            self.optimizer.step()
            if self.run.ema is not None:
                self.run.ema.update()
            running.update(loss, logits, y)

        def graph_work():
            self.optimizer.lr = lr  # the host value: schedules, checkpoints, logs
            captured = self._capturable_step(x, y)
            if running is not self._adopted:  # a new epoch's sums: the step keeps writing the same arrays
                running.adopt(self._sums)
                self._adopted = running
            captured.run(x, y, lr, {path: seed_of(path) for path in captured.scalars.seed_paths})
            if captured.eager_reason:  # the probe found cuBLAS calls, or capturing failed
                self._say_once(f"training.cuda_graph = auto: eager steps ({captured.eager_reason})")
            running.count(int(y.shape[0]))

        self._guard_oom(work if self.cuda_graph is None else graph_work, self.batch_size, "--batch-size ")

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
            kept = f"the last good checkpoint is {self.last_path} (epoch {checkpoint_epoch(self.last_path)})"
        else:
            kept = "no checkpoint was written before it"
        raise TrainingError(
            f"training diverged: the loss became {loss} in epoch {epoch + 1} by step {step + 1} (lr {lr:g}); "
            f"stopped, {kept}. Try a smaller learning rate than optimizer.lr = {self.config['optimizer']['lr']:g}"
        )

    def _save(self, path: Path) -> None:
        """Write a checkpoint (atomically: on failure the previous file at ``path`` is untouched)."""
        if not self.parallel.before_save(self.model):  # collective; rank 0 writes
            return
        try:
            save_checkpoint(path, self.model, self.optimizer, self.config, self.progress, self.mean, self.std,
                            classes=self.dataset.classes, input_shape=self.dataset.image_shape,
                            history=self.metrics_log.records, ema=self.run.ema, lookahead=self.run.lookahead)
        except OSError as exc:
            kept = "the previous checkpoint there is intact" if path.exists() else "no checkpoint was written"
            raise TrainingError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None

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
        def split(name: str) -> str:
            if r.get(f"{name}_acc") is None:
                return ""
            return f"{name} loss {r[f'{name}_loss']:.4f} acc {100 * r[f'{name}_acc']:.2f}%  "

        speed = f"{r['images_per_s']:,.0f} img/s" if r["images_per_s"] else "- img/s"
        tta = (f"test acc tta ({self.config['training']['tta']}) {100 * r['test_acc_tta']:.2f}%  "
               if r.get("test_acc_tta") is not None else "")
        return (f"epoch {r['epoch']}/{self.epochs}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
                f"{split('val')}{split('test')}{tta}{r['seconds']:.1f}s ({speed})  lr {r['lr']:.4g}")
