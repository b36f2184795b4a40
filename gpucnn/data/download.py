"""Download a file over HTTP(S) with a progress bar, verify its MD5, then move it into place.

The bytes go to a unique ``<name>.*.part`` temp file next to the destination; only after
the length and checksum match is it renamed (os.replace) to the final name, so an
interrupted or corrupt download never leaves a file that later passes for complete.

Two clocks bound a download: ``timeout`` (the stall timeout: no byte for that many
seconds while connecting or reading) and ``deadline`` (the whole transfer), so neither a
server that stops answering nor one that trickles a byte at a time hangs a run.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from gpucnn.atomic import atomic_open
from gpucnn.errors import DataError

CHUNK_BYTES = 1 << 20
STALL_TIMEOUT = 60.0
DEADLINE = 4 * 3600.0


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


def offline_hint(expected: str, data_dir_example: str = "DIR") -> str:
    """The advice appended to a failed download: where a local copy goes, or the offline dataset."""
    return (f"to work offline, put {expected} in a folder and pass --data-dir {data_dir_example}, "
            "or try gpucnn without a download: --config digits")


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = STALL_TIMEOUT,
    deadline: float | None = DEADLINE,
    hint: str = "",
) -> Path:
    """Fetch ``url`` into ``dest`` (created atomically) and return its path.

    ``timeout``: seconds without a byte (connecting or reading) before giving up;
    ``deadline``: seconds for the whole transfer (None: no limit; checked between reads,
    so it may be exceeded by up to ``timeout``). Raises DataError naming the URL and the
    cause on any network error, stall, deadline, on a response shorter than its
    Content-Length, or when the MD5 differs from ``md5`` (None: not checked). ``hint`` (e.g.
    ``offline_hint(...)``) is appended to the message of every failure except a checksum one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"; {hint}" if hint else ""
    digest = hashlib.md5()
    received = 0
    start = time.monotonic()
    with atomic_open(dest, "wb", suffix=".part") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length_header = response.headers.get("Content-Length")
                expected = int(length_header) if length_header and length_header.isdigit() else None
                with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {dest.name}", disable=not progress, leave=False) as bar:
                    while True:
                        if deadline is not None and time.monotonic() - start > deadline:
                            raise DataError(f"could not download {url}: not finished within the {deadline:g} s "
                                            f"deadline ({received} bytes received){suffix}")
                        try:
                            # read1: returns what has arrived, so a trickle still reaches the deadline check
                            chunk = response.read1(CHUNK_BYTES)
                        except (socket.timeout, TimeoutError):
                            raise DataError(f"could not download {url}: stalled, no data for {timeout:g} s "
                                            f"after {received} bytes{suffix}") from None
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: malformed URL
            cause = _describe(exc)
            if cause == "timed out":
                cause = f"timed out (no answer within {timeout:g} s)"
            raise DataError(f"could not download {url}: {cause}{suffix}") from exc
        # Checked inside the block: a short or corrupt download is never renamed into place.
        if expected is not None and received != expected:
            raise DataError(f"could not download {url}: connection closed after {received} of {expected} bytes"
                            f"{suffix}")
        actual = digest.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise DataError(f"download of {url} failed its checksum: expected md5 {md5.lower()}, got {actual} "
                            f"({received} bytes)")
    return dest


def fetch_verified(
    dest: Path,
    url: str,
    md5: str,
    progress: bool = True,
    timeout: float = STALL_TIMEOUT,
    deadline: float | None = DEADLINE,
    hint: str = "",
) -> Path:
    """``dest`` when it is there with the right MD5, else download it; DataError for a bad local copy."""
    if dest.is_file():
        try:
            actual = file_md5(dest)
        except OSError as exc:
            raise DataError(f"{dest} is unreadable ({exc.strerror or exc})") from exc
        if actual != md5.lower():
            raise DataError(f"{dest} fails its checksum (md5 {actual}, expected {md5.lower()}); "
                            "delete it to download again")
        return dest
    return download_file(url, dest, md5=md5, progress=progress, timeout=timeout, deadline=deadline, hint=hint)
