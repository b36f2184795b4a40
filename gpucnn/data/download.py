"""Download a file over HTTP(S) with a progress bar, verify its MD5, then move it into place.

The bytes go to a unique ``<name>.*.part`` temp file next to the destination; only after
the length and checksum match is it renamed (os.replace) to the final name, so an
interrupted or corrupt download never leaves a file that later passes for complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from gpucnn.atomic import atomic_open
from gpucnn.errors import DataError

CHUNK_BYTES = 1 << 20


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(exc: BaseException) -> str:
    """A short, one-line cause for a network error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return _describe(reason) if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` into ``dest`` (created atomically) and return its path.

    Raises DataError naming the URL and the cause on any network error, on a response
    shorter than its Content-Length, or when the MD5 differs from ``md5`` (None: not checked).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    received = 0
    with atomic_open(dest, "wb", suffix=".part") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length_header = response.headers.get("Content-Length")
                expected = int(length_header) if length_header and length_header.isdigit() else None
                with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {dest.name}", disable=not progress, leave=False) as bar:
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: malformed URL
            raise DataError(f"could not download {url}: {_describe(exc)}") from exc
        # Checked inside the block: a short or corrupt download is never renamed into place.
        if expected is not None and received != expected:
            raise DataError(f"could not download {url}: connection closed after {received} of {expected} bytes")
        actual = digest.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise DataError(f"download of {url} failed its checksum: expected md5 {md5.lower()}, got {actual} "
                            f"({received} bytes)")
    return dest
