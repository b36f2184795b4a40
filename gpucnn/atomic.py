"""Files written so that no reader ever sees a half-written one.

Everything gpucnn writes (parameters, checkpoints, configs, metrics, downloads,
benchmark results) goes to a temporary file in the destination's folder, which is
renamed over the destination only once it is complete; on any error, Ctrl-C included,
the temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def file_mode() -> int:
    """The permission bits a plain ``open()`` would give a new file (0o666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    ``suffix`` keeps an extension that a writer infers the format from (".png", ".npz").
    The destination's folder must exist.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp", **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` for writing, through ``atomic_path``: closed, then renamed into place."""
    with atomic_path(path, suffix) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
