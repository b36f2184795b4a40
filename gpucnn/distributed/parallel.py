"""Data-parallel training: what the Trainer asks of the world at each step, epoch and save.

``distribute_run(run, world)`` (called by ``build_run(..., world=...)``) gives the loaders
their rank's slice of every batch, installs the synchronized batch-norm statistics when
``model.sync_batchnorm`` is set, and returns the ``DataParallel`` the Trainer uses. A world
of one gets an inactive ``DataParallel`` whose every method is exactly the single-process
behaviour (no communicator, no MPI import), unless ``force=True`` (tests on one GPU).

Per step: ``begin_step(step, local_batch)`` -> the slice weight n_r / n; ``step_seed``;
``backward`` (layer-by-layer backward with bucketed all-reduce of weight x gradient) or
``skip_step`` for an empty slice; ``agree_stop`` (any rank's Ctrl-C/SIGTERM stops all at the
same step). Per epoch: ``running_metrics`` (sums reduced when read), ``evaluate`` (test set
sharded, sums reduced), ``before_save`` (average per-rank layer state such as BatchNorm
running statistics; True on the rank that writes).
"""

from __future__ import annotations

import signal
import threading

import numpy as np

from gpucnn.distributed.slicing import global_batch_size, slice_weight
from gpucnn.distributed.world import DistributedError, World, single_world


def offset_seed(seed: int, offset: int) -> int:
    """The uint32 seed of a slice that starts ``offset`` samples into its batch (offset 0: ``seed``)."""
    if offset == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(offset)]).generate_state(1, np.uint32)[0])


class DataParallel:
    """The Trainer's view of the world (see the module doc)."""

    def __init__(self, world: World, model, backend, num_samples: int, batch_size: int,
                 sync_batchnorm: bool = False, bucket_bytes: int | None = None, force: bool = False,
                 timeout: float | None = None) -> None:
        self.world, self.model, self.backend = world, model, backend
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.active = world.size > 1 or force
        self.sync_batchnorm = bool(sync_batchnorm) and self.active
        self.weight, self.offset, self._step = 1.0, 0, 0
        self.host = self.grads_comm = self.buckets = None
        self._bn_syncs = []
        if not self.active:
            return
        from gpucnn.distributed.buckets import DEFAULT_BUCKET_BYTES, GradientBuckets
        from gpucnn.distributed.comm import make_communicator

        self._check_batches()
        self.host, self.grads_comm = make_communicator(world, backend, timeout)
        self.buckets = GradientBuckets(model, self.grads_comm, bucket_bytes or DEFAULT_BUCKET_BYTES)
        if self.sync_batchnorm:
            from gpucnn.distributed.sync_bn import SyncBatchNormStats

            for layer in model.layers:
                if hasattr(layer, "stats_sync"):
                    layer.stats_sync = SyncBatchNormStats(self.grads_comm, backend.xp)
                    self._bn_syncs.append(layer.stats_sync)

    def _check_batches(self) -> None:
        size = self.world.size
        if self.batch_size < size:
            raise DistributedError(f"data.batch_size is the global batch and must be at least the number of "
                                   f"ranks: got {self.batch_size} for {size} ranks")
        last = self.num_samples % self.batch_size
        if self.sync_batchnorm and 0 < last < size:
            raise DistributedError(
                f"model.sync_batchnorm: the last batch of the epoch has {last} samples, fewer than the {size} ranks; "
                f"choose a data.batch_size that leaves at least {size} (or none) of the {self.num_samples} samples")

    # ------------------------------------------------------------------ per step

    @property
    def is_writer(self) -> bool:
        return self.world.is_root

    def begin_step(self, step: int, local_batch: int) -> float:
        """The weight n_r / n of this rank's slice of global batch ``step`` (1.0 when inactive)."""
        if not self.active:
            return 1.0
        self._step = int(step)
        self.weight, n_r, self.offset = slice_weight(self.num_samples, self.batch_size, step,
                                                     self.world.rank, self.world.size)
        if n_r != int(local_batch):
            raise DistributedError(f"rank {self.world.rank}: step {step} has {local_batch} samples, but its slice "
                                   f"of the global batch is {n_r}; the loader is not sharded for this world")
        for sync in self._bn_syncs:
            sync.weight = self.weight
        return self.weight

    def global_batch(self, local_batch: int) -> int:
        """Samples in the global batch of the last ``begin_step`` (``local_batch`` when inactive)."""
        if not self.active:
            return int(local_batch)
        return global_batch_size(self.num_samples, self.batch_size, self._step)

    def step_seed(self, seed: int) -> int:
        """A randomized layer's seed for this rank's slice (world-size independent only at offset 0)."""
        return offset_seed(seed, self.offset) if self.active else int(seed)

    def backward(self, dlogits) -> None:
        """Backward through the model, then every gradient is the global batch's (all ranks equal)."""
        if not self.active:
            self.model.backward(dlogits, input_grad=False)  # nothing uses d(loss)/d(images)
            return
        self.buckets.backward(dlogits, self.weight, input_grad=False)

    def skip_step(self) -> None:
        """A rank whose slice is empty joins the gradient all-reduce with zeros."""
        if self.active:
            self.buckets.reduce(0.0)

    def agree_stop(self, requested: bool) -> bool:
        """True on every rank when any rank asked to stop (one tiny host all-reduce per step)."""
        if not self.active or self.world.size == 1:
            return requested
        flag = np.array([1 if requested else 0], dtype=np.int64)
        return bool(self.host.allreduce(flag, "max", "the stop check")[0])

    # ------------------------------------------------------------------ per epoch

    def running_metrics(self, backend, start):
        """RunningMetrics whose ``sums()`` are the world's (rank 0 carries a resumed run's sums)."""
        from gpucnn.metrics import RunningMetrics

        if not self.active:
            return RunningMetrics(backend, start)
        host = self.host

        class ReducedRunningMetrics(RunningMetrics):
            def sums(self):
                return host.allreduce(super().sums(), "sum", "the loss/accuracy sums")

        return ReducedRunningMetrics(backend, start if self.world.is_root else None)

    def evaluate(self, model, loss_fn, loader, num_classes: int):
        """EvalResult over the whole test set: each rank evaluates its slice of every batch."""
        from gpucnn.evaluate import EvalResult, evaluate_model

        if not self.active:
            return evaluate_model(model, loss_fn, loader, num_classes)
        self.sync_state(model)
        xp = self.backend.xp
        loss_sum, samples = 0.0, 0
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        from gpucnn.metrics import confusion_matrix

        for x, y in loader:
            if y.shape[0] == 0:
                continue
            logits = model.forward(x, training=False)
            loss_sum += float(loss_fn.forward(logits, y)) * int(y.shape[0])
            confusion += self.backend.to_host(confusion_matrix(y, xp.argmax(logits, axis=1), num_classes, xp))
            samples += int(y.shape[0])
        totals = self.host.allreduce(np.array([loss_sum, samples], dtype=np.float64), "sum", "evaluation sums")
        confusion = self.host.allreduce(confusion, "sum", "the confusion matrix")
        return EvalResult(float(totals[0]) / totals[1], float(np.trace(confusion)) / totals[1], confusion)

    def sync_state(self, model) -> None:
        """Average per-rank layer state (BatchNorm running statistics without sync) over the ranks."""
        if not self.active or self.world.size == 1 or self.sync_batchnorm:
            return  # with sync_batchnorm every rank already holds the same statistics
        for layer in model.layers:
            state = layer.state()
            if not state:
                continue
            averaged = {}
            for name, value in state.items():
                host = np.array(layer.backend.to_host(value), dtype=np.float64)
                total = self.host.allreduce(host, "sum", f"the average of {layer.name}.{name}")
                averaged[name] = (total / self.world.size).astype(np.dtype(value.dtype))
            layer.load_state(averaged)

    def before_save(self, model) -> bool:
        """Collective: make the saved state every rank's; True on the rank that writes the file."""
        self.sync_state(model)
        return self.is_writer


def distribute_run(run, world: World | None = None, force: bool = False, **options) -> DataParallel:
    """Shard ``run``'s loaders for ``world``, install sync batch norm if configured; the DataParallel."""
    world = world or single_world()
    config = run.config
    loader = run.train_loader
    num_samples = loader.num_samples if loader is not None else 0
    batch_size = loader.batch_size if loader is not None else config["data"]["batch_size"]
    parallel = DataParallel(world, run.model, run.test_loader.backend, num_samples, batch_size,
                            sync_batchnorm=bool(config["model"].get("sync_batchnorm", False)), force=force, **options)
    if world.size > 1:
        for each in (run.train_loader, run.val_loader, run.test_loader):
            if each is not None:
                each.set_shard(world.rank, world.size)
    return parallel
