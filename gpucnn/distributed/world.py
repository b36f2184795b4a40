"""The world of one process: its rank, the number of ranks, and its rank on its machine.

``detect_world()`` asks MPI (mpi4py) when the process was started by a launcher that tells
it so (``mpiexec``/``mpirun`` of MPICH or Open MPI, ``srun`` with PMI/PMIx under SLURM, or
``gpucnn train --nproc``); otherwise it is a world of one and mpi4py is never imported.
``local_rank`` comes from the ranks that share this machine's memory
(``MPI_COMM_TYPE_SHARED``) and picks the GPU of a rank (``bind_device``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from gpucnn.errors import GpucnnError

# Environment variables by which launchers tell a process how many ranks there are.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


class DistributedError(GpucnnError):
    """A multi-process run cannot start or cannot go on (MPI missing, a rank died, a bad world)."""


@dataclass
class World:
    """rank in [0, size); local_rank/local_size on this machine; ``comm`` an mpi4py Intracomm or None."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    comm: Any = None

    @property
    def is_root(self) -> bool:
        """Rank 0: the only rank that prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}/{self.local_size})"


def single_world() -> World:
    return World()


def launched_size(environ=None) -> int:
    """The number of ranks a launcher announced in the environment (1 when none did)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.strip().isdigit() and int(value) > 1:
            # SLURM_NTASKS alone is set for every job step, MPI or not; it counts only with a PMI.
            if name == "SLURM_NTASKS" and not any(k in environ for k in ("PMI_RANK", "PMIX_RANK", "PMI_FD")):
                continue
            return int(value)
    return 1


def mpi_world(comm=None) -> World:
    """The world of ``comm`` (default MPI.COMM_WORLD); DistributedError when mpi4py is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(
            f"this process was started as one of several ranks, but mpi4py does not import ({exc}); "
            f"install the mpi extra: pip install 'gpucnn[mpi]'"
        ) from None
    comm = MPI.COMM_WORLD if comm is None else comm
    # Errors come back as Python exceptions (mpi4py's default on COMM_WORLD), which the
    # communicator turns into a DistributedError naming the collective.
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return World(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(), comm)
    finally:
        local.Free()


def detect_world(environ=None) -> World:
    """MPI's world when a launcher started several ranks, else a world of one (no MPI import)."""
    if launched_size(environ) > 1:
        return mpi_world()
    return single_world()


def bind_device(world: World, backend) -> int | None:
    """Make GPU ``local_rank % device_count`` current for a ``backend`` that lives on a device.

    Must run before any array of the run is allocated. Returns the device index, or None
    for host backends. Several ranks per GPU work (for tests) but share its memory and time.
    """
    if not backend.on_device:
        return None
    cuda = backend.xp.cuda
    count = cuda.runtime.getDeviceCount()
    if count < 1:
        raise DistributedError(f"rank {world.rank}: the cuda backend sees no GPU")
    index = world.local_rank % count
    cuda.Device(index).use()
    return index
