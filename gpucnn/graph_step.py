"""The training step in the form a CUDA graph can capture (``training.cuda_graph``).

``CapturableStep`` runs forward, loss, backward, the optimizer update and the loss/accuracy
sums reading only fixed arrays: static batch buffers ``x`` (B, C, H, W) and ``y`` (B,),
the per-step scalars in device memory (``StepScalars``: the lr of each lr scale, one seed
per dropout layer), and the params, optimizer buffers, BatchNorm running statistics and
``RunningMetrics`` sums, all updated in place. Its ops run in ``ops.capturable`` mode (no
cuBLAS). ``run`` feeds a batch and goes through a ``StepGraph``: a graph launch on the cuda
backend, the same body eagerly elsewhere. The Trainer and ``bench --train`` both use it.
"""

from __future__ import annotations

from typing import Callable

from gpucnn.cuda.graph import StepGraph
from gpucnn.cuda.step_scalars import StepScalars
from gpucnn.metrics import RunningMetrics


def _address(array) -> int:
    """The data address of a backend array (CuPy: device pointer, NumPy: host pointer)."""
    data = array.data
    return int(data.ptr) if hasattr(data, "ptr") else int(array.ctypes.data)


def persistent_signature(model, optimizer) -> tuple:
    """Trainable param keys and the addresses of the arrays a captured step keeps using:
    params, optimizer buffers, layer state (BatchNorm running statistics). A step built
    before the signature changed (a freeze, state loaded into new arrays) must be rebuilt."""
    trainable = tuple(f"{path}.{name}" for path, layer, name in model.parameters() if layer.is_trainable(name))
    arrays = [layer.params[name] for _, layer, name in model.parameters()]
    arrays += [a for store in optimizer.buffers.values() for _, a in sorted(store.items())]
    arrays += [a for _, layer in model.named_layers() for _, a in sorted(layer.state().items())]
    return trainable, tuple(_address(a) for a in arrays)


class CapturableStep:
    """The training step at one batch size as a ``StepGraph`` over fixed arrays.

    ``x``, ``y``: a batch whose shapes and dtypes the static buffers take; ``sums``: the
    RunningMetrics the step accumulates into; ``backward(dlogits)``: how the gradient goes
    back (default ``model.backward(d, input_grad=False)``; the Trainer passes its
    data-parallel hook). ``signature``: ``persistent_signature`` after the first step.
    """

    def __init__(self, model, loss_fn, optimizer, backend, x, y, sums: RunningMetrics, setting: str = "auto",
                 backward: Callable | None = None) -> None:
        self.model, self.loss_fn, self.optimizer, self.backend = model, loss_fn, optimizer, backend
        self.backward = backward if backward is not None else (lambda d: model.backward(d, input_grad=False))
        xp = backend.xp
        self.x = xp.empty(x.shape, dtype=x.dtype)
        self.y = xp.empty(y.shape, dtype=y.dtype)
        self.sums = sums
        paths = [path for path, layer in model.named_layers() if layer.takes_step_seed]
        self.scalars = StepScalars(backend, optimizer.lr_scales(), paths)
        self.graph = StepGraph(self._body, backend, setting=setting)
        self.signature = None

    def _body(self) -> None:
        """forward, loss, backward, optimizer step, metrics: what the graph captures."""
        ops = self.backend.ops
        was = ops.capturable
        ops.capturable = True  # no cuBLAS: gpucnn's own GEMM kernels
        self.optimizer.bind_device_lr(self.scalars.lr)
        try:
            self.model.set_step_seeds(self.scalars.seed)
            logits = self.model.forward(self.x, training=True)
            loss = self.loss_fn.forward(logits, self.y)
            self.backward(self.loss_fn.backward())
            self.optimizer.step()
            self.sums.accumulate(loss, logits, self.y)
        finally:
            self.optimizer.bind_device_lr(None)
            ops.capturable = was

    def run(self, x, y, lr: float, seeds: dict) -> None:
        """One step on batch (x, y) with base rate ``lr`` and ``seeds`` (layer path -> uint32)."""
        def feed():
            self.x[...] = x
            self.y[...] = y
            self.scalars.write(lr, seeds)

        self.graph.step(feed)
        if self.signature is None:  # the first step: the probe decided the mode
            self.signature = persistent_signature(self.model, self.optimizer)

    @property
    def eager_reason(self) -> str | None:
        """Why this step runs eagerly on a device (the probe's blockers or a failed capture), else None."""
        if self.graph.mode == "eager" and self.graph.blockers and self.backend.on_device:
            return "; ".join(self.graph.blockers)
        return None
