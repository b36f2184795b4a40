"""Gradient buckets: the trainable gradients packed into a few flat buffers and all-reduced.

Params are taken in reverse layer order (the order backward produces their gradients) and
cut into buckets of about ``bucket_bytes`` (one dtype per bucket). ``GradientBuckets.backward``
runs the model's backward layer by layer and starts a bucket's all-reduce as soon as the
layers it holds are done, so on MPI the reduction of late layers runs while earlier layers
are still differentiated; on NCCL every all-reduce is queued on the training stream.
After the wait each layer's ``grads[name]`` is a view into its reduced bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BUCKET_BYTES = 4 << 20


@dataclass
class _Entry:
    layer: object
    name: str
    offset: int
    size: int
    shape: tuple


@dataclass
class Bucket:
    """Params of layers ``first_layer`` .. (later ones); ``buffer`` (size,) on the backend."""

    dtype: np.dtype
    entries: list = field(default_factory=list)
    size: int = 0
    first_layer: int = 0
    buffer: object = None


class GradientBuckets:
    """Buckets over ``model``'s trainable params, reduced over ``comm`` (see module doc)."""

    def __init__(self, model, comm, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"GradientBuckets: bucket_bytes must be an int >= 1, got {bucket_bytes!r}")
        self.model, self.comm = model, comm
        self.buckets: list[Bucket] = []
        open_by_dtype: dict[np.dtype, Bucket] = {}
        for index, layer, name in reversed(model.parameters()):
            if not layer.is_trainable(name):
                continue
            param = layer.params[name]
            dtype = np.dtype(param.dtype)
            bucket = open_by_dtype.get(dtype)
            if bucket is None or (bucket.size and (bucket.size + param.size) * dtype.itemsize > bucket_bytes):
                bucket = open_by_dtype[dtype] = Bucket(dtype)
                self.buckets.append(bucket)
            bucket.entries.append(_Entry(layer, name, bucket.size, int(param.size), tuple(param.shape)))
            bucket.size += int(param.size)
            bucket.first_layer = index
        xp = model.backend.xp
        for bucket in self.buckets:
            bucket.buffer = xp.zeros(bucket.size, dtype=bucket.dtype)

    @property
    def nbytes(self) -> int:
        """Gradient bytes all-reduced per step."""
        return sum(b.size * b.dtype.itemsize for b in self.buckets)

    def _pack(self, bucket: Bucket, weight: float) -> None:
        buf = bucket.buffer
        scale = bucket.dtype.type(weight)
        for e in bucket.entries:
            view = buf[e.offset:e.offset + e.size]
            view[...] = e.layer.grads[e.name].reshape(-1)
            if weight != 1.0:
                view *= scale

    def _start(self, bucket: Bucket, weight: float, number: int):
        if weight == 0.0:
            bucket.buffer.fill(0)  # an empty slice adds nothing (its stale grads may hold anything)
        else:
            self._pack(bucket, weight)
        return self.comm.iallreduce(bucket.buffer, "sum", f"all-reduce of gradient bucket {number}")

    def _finish(self, bucket: Bucket, handle) -> None:
        reduced = handle.wait()
        for e in bucket.entries:
            e.layer.grads[e.name] = reduced[e.offset:e.offset + e.size].reshape(e.shape)

    def backward(self, dlogits, weight: float, input_grad: bool = False) -> None:
        """Backward of ``model`` from ``dlogits`` and the all-reduce of ``weight`` x every gradient."""
        layers = self.model.layers
        pending = []
        todo = list(enumerate(self.buckets))
        d = dlogits
        for index in range(len(layers) - 1, -1, -1):
            d = layers[index].backward(d, input_grad=input_grad) if index == 0 else layers[index].backward(d)
            ready = [item for item in todo if item[1].first_layer >= index]
            for item in ready:
                todo.remove(item)
                pending.append((item[1], self._start(item[1], weight, item[0])))
        for bucket, handle in pending:
            self._finish(bucket, handle)

    def reduce(self, weight: float) -> None:
        """All-reduce ``weight`` x the gradients already in the layers (weight 0: add nothing)."""
        handles = [(b, self._start(b, weight, i)) for i, b in enumerate(self.buckets)]
        for bucket, handle in handles:
            self._finish(bucket, handle)
