"""Collectives: MPI for host arrays and control, NCCL (cupy.cuda.nccl) for device arrays.

``make_communicator(world, backend)`` is the one set-up path. It always builds the host
communicator (``MPIComm`` over the world's mpi4py comm, or ``LocalComm`` for a world of one
without MPI); for a backend whose arrays live on a GPU it then builds an ``NCCLComm`` whose
unique id rank 0 creates and ``broadcast_object`` hands to every rank over the host
communicator, so CI (CPU ranks) runs everything but the NCCL calls themselves.

Every communicator has ``allreduce(array, op="sum")`` (returns the reduced array, in place
when it can; every rank gets bit-identical results: MPICH's and NCCL's algorithms combine
the same partial sums on every rank), ``iallreduce`` (a handle with ``wait()``), and the
host ones ``broadcast_object`` and ``barrier``.

A rank that dies would leave the others blocked in a collective: a ``Watchdog`` thread ends
this process with a one-line error when a host collective has not returned within
``timeout`` seconds ($GPUCNN_DIST_TIMEOUT, default 300), and the launcher then stops the job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import numpy as np

from gpucnn.distributed.world import DistributedError, World

TIMEOUT_ENV = "GPUCNN_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
EXIT_PEER_LOST = 75
OPS = ("sum", "max")


def collective_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise DistributedError(f"${TIMEOUT_ENV}: expected seconds as a number, got {value!r}") from None


class Watchdog:
    """Ends the process (exit EXIT_PEER_LOST) when one watched wait lasts over ``timeout`` s."""

    def __init__(self, rank: int, timeout: float, exit=os._exit) -> None:
        self.rank = rank
        self.timeout = float(timeout)
        self._exit = exit
        self._lock = threading.Lock()
        self._waiting: tuple[str, float] | None = None
        self._thread = threading.Thread(target=self._run, name="gpucnn-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self, what: str):
        with self._lock:
            self._waiting = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._waiting = None

    def _run(self) -> None:
        period = min(1.0, self.timeout / 4)
        while True:
            time.sleep(period)
            with self._lock:
                waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                sys.stderr.write(
                    f"gpucnn: error: rank {self.rank}: no answer from the other ranks for {self.timeout:g} s in "
                    f"{waiting[0]}; a rank died or hangs, stopping (set ${TIMEOUT_ENV} for a longer wait)\n")
                sys.stderr.flush()
                self._exit(EXIT_PEER_LOST)


class _Done:
    """The handle of a collective that has already completed."""

    def __init__(self, result) -> None:
        self.result = result

    def wait(self):
        return self.result


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"allreduce: op must be one of {', '.join(OPS)}, got {op!r}")


class LocalComm:
    """A world of one: collectives return their input."""

    rank, size = 0, 1

    def allreduce(self, array, op: str = "sum", what: str = "allreduce"):
        _check_op(op)
        return array

    def iallreduce(self, array, op: str = "sum", what: str = "allreduce"):
        return _Done(self.allreduce(array, op))

    def broadcast_object(self, obj, root: int = 0):
        return obj

    def barrier(self) -> None:
        pass


class MPIComm:
    """MPI collectives on host (NumPy) arrays over an mpi4py communicator."""

    def __init__(self, comm, timeout: float | None = None) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.watchdog = Watchdog(self.rank, collective_timeout() if timeout is None else timeout)

    def _op(self, op: str):
        _check_op(op)
        return self._MPI.SUM if op == "sum" else self._MPI.MAX

    @contextlib.contextmanager
    def _guard(self, what: str):
        with self.watchdog.watch(what):
            try:
                yield
            except self._MPI.Exception as exc:
                raise DistributedError(f"rank {self.rank}: {what} failed: {exc.Get_error_string()}") from None

    def allreduce(self, array, op: str = "sum", what: str = "allreduce"):
        """In place for a contiguous NumPy array; other arrays (e.g. 0-d, non-contiguous) are copied."""
        buf = _host_buffer(array)
        with self._guard(what):
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._op(op))
        return buf

    def iallreduce(self, array, op: str = "sum", what: str = "allreduce"):
        buf = _host_buffer(array)
        with self._guard(what):
            request = self.comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._op(op))
        comm = self

        class _Pending:
            def wait(self):
                with comm._guard(what):
                    request.Wait()
                return buf

        return _Pending()

    def broadcast_object(self, obj, root: int = 0):
        with self._guard("broadcast"):
            return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        with self._guard("barrier"):
            self.comm.Barrier()


def _host_buffer(array) -> np.ndarray:
    if isinstance(array, np.ndarray) and array.ndim and array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.ascontiguousarray(np.array(array)).reshape(np.shape(array))


class NCCLComm:
    """NCCL all-reduce of CuPy arrays on the current stream; control goes through ``host``.

    ``nccl``: the ``cupy.cuda.nccl`` module (passed in so this file imports CuPy nowhere
    but in ``make_communicator``).
    """

    _DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64"}

    def __init__(self, host, nccl, cupy) -> None:
        self.host = host
        self.rank, self.size = host.rank, host.size
        self._nccl, self._cupy = nccl, cupy
        uid = host.broadcast_object(nccl.get_unique_id() if host.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(host.size, uid, host.rank)

    def allreduce(self, array, op: str = "sum", what: str = "allreduce"):
        _check_op(op)
        if not array.flags.c_contiguous:
            raise ValueError(f"NCCLComm.{what}: needs a C-contiguous device array")
        name = self._DTYPES.get(array.dtype.name)
        if name is None:
            raise ValueError(f"NCCLComm.{what}: dtype {array.dtype.name} not supported ({', '.join(self._DTYPES)})")
        nccl = self._nccl
        stream = self._cupy.cuda.get_current_stream()
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, getattr(nccl, name),
                            nccl.NCCL_SUM if op == "sum" else nccl.NCCL_MAX, stream.ptr)
        return array

    def iallreduce(self, array, op: str = "sum", what: str = "allreduce"):
        # Ordered on the training stream: the host never waits for it.
        return _Done(self.allreduce(array, op, what))

    def broadcast_object(self, obj, root: int = 0):
        return self.host.broadcast_object(obj, root)

    def barrier(self) -> None:
        self.host.barrier()


def host_communicator(world: World, timeout: float | None = None):
    """MPI over the world's comm, or a LocalComm for a world of one without MPI."""
    if world.comm is None:
        if world.size > 1:
            raise DistributedError(f"a world of {world.size} ranks needs an MPI communicator")
        return LocalComm()
    return MPIComm(world.comm, timeout)


def make_communicator(world: World, backend, timeout: float | None = None):
    """(host communicator, gradient communicator): NCCL for device backends, else the host one."""
    host = host_communicator(world, timeout)
    if not backend.on_device:
        return host, host
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedError(f"rank {world.rank}: the cuda backend needs NCCL for gradients, "
                               f"but cupy.cuda.nccl does not import ({exc}); pip install nvidia-nccl-cu12") from None
    if not getattr(nccl, "available", True):
        raise DistributedError(f"rank {world.rank}: this CuPy was built without NCCL; "
                               f"pip install nvidia-nccl-cu12 (or the cuda13 wheel)")
    return host, NCCLComm(host, nccl, cupy)
