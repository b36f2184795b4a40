"""Start N ranks on this machine through the mpiexec of the ``mpi`` extra (``gpucnn train --nproc N``).

``find_mpiexec()``: $GPUCNN_MPIEXEC, else the mpiexec installed beside this Python (the MPICH
wheel puts it in ``sys.prefix``/bin, next to the mpi4py it serves), else the one on PATH.
``launch(nproc, argv)`` runs ``mpiexec -n nproc argv...``, forwards Ctrl-C/SIGTERM to it (its
Hydra process manager passes them to every rank, which save once and stop together), and
returns the exit status; when a rank dies, Hydra stops the others and ``launch`` says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gpucnn.distributed.world import DistributedError, launched_size

MPIEXEC_ENV = "GPUCNN_MPIEXEC"
OK_CODES = (0, 130)  # completed; interrupted (saved)


def find_mpiexec() -> str:
    """The path of the mpiexec to start ranks with; DistributedError naming the fix when there is none."""
    explicit = os.environ.get(MPIEXEC_ENV)
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise DistributedError(f"${MPIEXEC_ENV}={explicit}: not an executable file")
        return explicit
    for candidate in (Path(sys.prefix) / "bin" / "mpiexec", Path(sys.executable).parent / "mpiexec"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("mpiexec")
    if found:
        return found
    raise DistributedError("--nproc needs mpiexec, and none was found beside this Python or on PATH; "
                           "install the mpi extra: pip install 'gpucnn[mpi]' (mpi4py and the MPICH wheel)")


def launch(nproc: int, argv: list[str], timeout: float | None = None, env: dict | None = None,
           echo=lambda line: print(line, file=sys.stderr)) -> int:
    """Run ``argv`` as ``nproc`` ranks; the job's exit status (a failing rank's, or 124 on ``timeout``)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise DistributedError(f"--nproc: expected a number of ranks >= 1, got {nproc!r}")
    if launched_size() > 1:
        raise DistributedError("--nproc starts its own ranks; drop it when the job is already started "
                               "by mpiexec or srun")
    command = [find_mpiexec(), "-n", str(nproc), *argv]
    proc = subprocess.Popen(command, env=env)
    forward = lambda signum, frame: proc.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        echo(f"gpucnn: error: the {nproc} ranks did not finish within {timeout:g} s; stopped them")
        return 124
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if rc not in OK_CODES:
        how = f"signal {-rc}" if rc < 0 else f"status {rc}"
        echo(f"gpucnn: error: the job of {nproc} ranks failed ({how}): a rank stopped or died, "
             f"and the others were stopped; see the messages above")
    return rc


def options_argv(ctx, drop=()) -> list[str]:
    """The command line that repeats a click command's parsed options (without those in ``drop``)."""
    argv = ctx.command_path.split()[1:]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or value == () or param.param_type_name != "option":
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            if value:
                argv.append(flag)
            continue
        for each in (value if getattr(param, "multiple", False) else (value,)):
            argv += [flag, str(each)]
    return argv


def relaunch(nproc: int, ctx, drop=("nproc",)) -> int:
    """Run the current click command again as ``nproc`` ranks of ``python -m gpucnn``."""
    return launch(nproc, [sys.executable, "-m", "gpucnn", *options_argv(ctx, drop)])
