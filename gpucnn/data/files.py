"""Reading dataset files and folders with one-line errors that name the path.

Every parser in gpucnn.data reads through ``read_bytes`` and lists folders through
``list_dir``, so a missing, unreadable (permissions) or otherwise failing path becomes a
DataError naming it instead of a bare OSError traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpucnn.errors import DataError


def _cause(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def read_bytes(path: str | os.PathLike, what: str, hint: str = "") -> bytes:
    """The whole content of ``path``; DataError ``"<what> file <path> is missing|unreadable ..."``.

    ``what`` names the dataset ("CIFAR-100", "MNIST"); ``hint`` is appended to the
    message for a missing file (e.g. how to get it back).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{what} file {path} is missing{'; ' + hint if hint else ''}") from None
    except IsADirectoryError:
        raise DataError(f"{what} file {path} is a folder, expected a file") from None
    except OSError as exc:
        raise DataError(f"{what} file {path} is unreadable ({_cause(exc)})") from exc


def list_dir(path: str | os.PathLike, what: str) -> list[os.DirEntry]:
    """The entries of folder ``path`` sorted by name; DataError naming it when it cannot be listed."""
    path = Path(path)
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"{what} folder {path} does not exist") from None
    except NotADirectoryError:
        raise DataError(f"{what} folder {path} is a file, expected a folder") from None
    except OSError as exc:
        raise DataError(f"{what} folder {path} is unreadable ({_cause(exc)})") from exc


def resolve_root(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` (user-expanded) or the default cache folder."""
    from gpucnn.data.dataset import default_data_dir

    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def make_dir(path: Path) -> Path:
    """Create ``path`` (and parents); DataError naming it when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data directory {path}: {_cause(exc)}") from exc
    return path
