"""The run directory (``--out``): what counts as an earlier run, and keeping it safe.

A folder holds a run when it has any of ``RUN_FILES``. ``gpucnn train`` never writes over
one unless told to (``--overwrite``) or resuming from that run's own latest checkpoint;
resuming from an older checkpoint of it (``best.npz`` while ``last.npz`` is later) would
drop the later epochs, so that needs ``--overwrite`` too. Temporary files that gpucnn's
atomic writes left behind (a run killed mid-write) are removed when the next run starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpucnn.errors import GpucnnError

RUN_FILES = ("metrics.jsonl", "last.npz", "best.npz")
# What gpucnn.atomic names its temporary files: ".<target name>.<random>.<suffix>".
WRITTEN_FILES = (*RUN_FILES, "config.toml", "curves.png")


class RunDirError(GpucnnError):
    """The output folder cannot be used: it holds another run, or it is not writable."""


def existing_run_files(out_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def checkpoint_epoch(path: Path) -> int | None:
    """The completed epochs recorded in a checkpoint, or None when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["progress/epoch"])
    except Exception:
        return None


def check_out_dir(out_dir: Path, resume: Path | None = None, overwrite: bool = False) -> None:
    """Refuse (RunDirError) to train into ``out_dir`` where that would lose an earlier run's files.

    ``resume``: the checkpoint being resumed from. Resuming from ``out_dir/last.npz`` (or from
    any checkpoint no older than it) into its own folder is the normal continuation.
    """
    found = existing_run_files(out_dir)
    if overwrite or not found:
        return
    last = out_dir / "last.npz"
    if resume is not None and last.exists() and Path(resume).resolve().parent == out_dir.resolve():
        resumed, latest = checkpoint_epoch(Path(resume)), checkpoint_epoch(last)
        if Path(resume).resolve() == last.resolve() or (latest is not None and resumed is not None
                                                        and resumed >= latest):
            return
        raise RunDirError(
            f"{resume} is from epoch {resumed}, but {last} is later (epoch {latest}): resuming here would "
            f"replace the later checkpoint and metrics; resume from {last}, give a new --out, or pass --overwrite"
        )
    hint = f"--resume {last}" if last.exists() else "a new --out"
    raise RunDirError(
        f"--out {out_dir} already holds a run ({', '.join(found)}); continue it with {hint}, "
        f"choose a new --out, or pass --overwrite to replace it"
    )


def prepare_out_dir(out_dir: Path, clear: bool = False) -> None:
    """Create ``out_dir``, prove it is writable, remove stale temp files; with ``clear`` (a new run
    with --overwrite), remove the earlier run's files so no old metrics row or best.npz survives
    into the new run. A resumed run never clears: its checkpoint may be one of those files."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"--out {out_dir}: exists and is not a folder") from None
    except OSError as exc:
        raise RunDirError(f"--out {out_dir}: cannot create it ({exc.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out_dir}: the folder is not writable")
    remove_stale_temp_files(out_dir)
    if clear:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)


def remove_stale_temp_files(out_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write of a run file left in ``out_dir``."""
    removed = []
    for name in WRITTEN_FILES:
        for stale in out_dir.glob(f".{name}.*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed
