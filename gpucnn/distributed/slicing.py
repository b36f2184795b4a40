"""Which samples of a global batch each rank takes, and the weight of its gradient.

A global batch of ``n`` samples is cut into ``size`` contiguous slices whose lengths differ
by at most one (the first ``n % size`` ranks take one more), in the batch's own order, so the
concatenation of the slices of ranks 0..size-1 is exactly the single-process batch.
Each rank's gradient is that of its slice's MEAN loss; the global batch's mean loss is
``sum_r (n_r / n) * mean_r``, so a rank scales its gradient by ``n_r / n`` before the sum
all-reduce (``slice_weight``). This is exact for uneven slices and the smaller last batch.
"""

from __future__ import annotations

import math


def check_rank(rank: int, size: int) -> None:
    """ValueError unless 0 <= rank < size (both ints, size >= 1)."""
    for what, value in (("rank", rank), ("world size", size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"distributed: {what} must be an int, got {value!r}")
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"distributed: rank must be in [0, {size}) for world size {size}, got {rank}")


def slice_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """(start, stop) of ``rank``'s slice of a batch of ``n`` samples, as offsets into the batch."""
    check_rank(rank, size)
    base, extra = divmod(int(n), size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_slice(part: slice, rank: int, size: int) -> slice:
    """The sub-slice of ``part`` (a global batch's slice of the epoch order) that ``rank`` takes."""
    start, stop = slice_bounds(part.stop - part.start, rank, size)
    return slice(part.start + start, part.start + stop)


def global_batch_size(num_samples: int, batch_size: int, step: int) -> int:
    """Samples in global batch ``step`` of an epoch of ``num_samples`` (the last one may be smaller)."""
    return max(0, min(batch_size, num_samples - step * batch_size))


def slice_weight(num_samples: int, batch_size: int, step: int, rank: int, size: int) -> tuple[float, int, int]:
    """(weight n_r / n, n_r, offset of the slice in the batch) of ``rank`` at ``step``."""
    n = global_batch_size(num_samples, batch_size, step)
    start, stop = slice_bounds(n, rank, size)
    return ((stop - start) / n if n else 0.0), stop - start, start


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)
