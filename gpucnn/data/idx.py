"""The IDX file format (MNIST, Fashion-MNIST), plain or gzipped, with full validation.

Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), a byte with the number of dimensions d, then d big-endian
uint32 sizes, then the values in row-major order, big-endian. The file length must be
exactly the header plus the product of the sizes times the item size.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from gpucnn.data.files import read_bytes
from gpucnn.errors import DataError

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def decode_idx(raw: bytes, path: str | os.PathLike, what: str = "IDX") -> np.ndarray:
    """Parse IDX bytes (already decompressed) into an array of native byte order; DataError naming ``path``."""
    if len(raw) < 4:
        raise DataError(f"{what} file {path} is truncated: {len(raw)} bytes, shorter than the 4-byte IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in DTYPES:
        raise DataError(f"{what} file {path} is not an IDX file: magic number {raw[:4].hex()}, expected "
                        "0000 followed by a type byte (08, 09, 0b, 0c, 0d or 0e) and the number of dimensions")
    dtype = np.dtype(DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise DataError(f"{what} file {path} is corrupt: its header says 0 dimensions, expected at least 1")
    if len(raw) < header:
        raise DataError(f"{what} file {path} is truncated: {ndim} dimensions need a {header}-byte header, "
                        f"the file has {len(raw)} bytes")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "corrupt"
        raise DataError(f"{what} file {path} is {state}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, what: str = "IDX") -> np.ndarray:
    """Read an IDX file, gunzipping it first when it starts with the gzip magic; DataError naming ``path``."""
    path = Path(path)
    raw = read_bytes(path, what)
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DataError(f"{what} file {path} is a truncated or corrupt gzip file ({exc or type(exc).__name__})"
                            ) from exc
    return decode_idx(raw, path, what)
