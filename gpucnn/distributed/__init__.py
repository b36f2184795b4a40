"""Data-parallel training over many processes: MPI launches ranks and reduces on CPUs, NCCL on GPUs.

``detect_world()`` -> ``World`` (rank, size, local rank); ``build_run(..., world=world)`` binds
the rank's GPU, shards the loaders and returns a run whose ``parallel`` (``DataParallel``) the
Trainer drives; ``make_communicator`` builds MPI/NCCL communicators; ``GradientBuckets``
packs and all-reduces gradients; ``launch`` starts ranks through the mpiexec of the ``mpi``
extra (``gpucnn train --nproc N``). See docs/scaling.md for what to expect from N ranks.
"""

from gpucnn.distributed.comm import LocalComm, MPIComm, NCCLComm, make_communicator
from gpucnn.distributed.parallel import DataParallel, distribute_run, offset_seed
from gpucnn.distributed.slicing import global_batch_size, shard_slice, slice_bounds, slice_weight
from gpucnn.distributed.world import DistributedError, World, bind_device, detect_world, single_world

__all__ = [
    "DataParallel", "DistributedError", "LocalComm", "MPIComm", "NCCLComm", "World", "bind_device",
    "detect_world", "distribute_run", "global_batch_size", "make_communicator", "offset_seed", "shard_slice",
    "single_world", "slice_bounds", "slice_weight",
]
