"""Images from files, as a model's input: PNG/JPEG (Pillow) and ``.npy``/``.npz`` arrays.

``read_images(paths, input_shape)`` gives one (N, C, H, W) array for all files: uint8 when
every file holds uint8 pixels, else float32 in [0, 1] (uint8 ones divided by 255). Image
files are converted to the model's channel count (grayscale <-> RGB, alpha dropped) and
resized to its (H, W); arrays are taken as they are, so a wrong size or channel count is a
``DataError`` naming the file and the expected shape. An array file may hold one image,
(C, H, W) or (H, W, C), or a batch, (N, C, H, W) or (N, H, W, C).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpucnn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
# Keys an .npz holding several arrays may keep its images under (the first one present wins).
NPZ_IMAGE_KEYS = ("images", "x", "x_test", "data")
# Pillow modes for a model's channel count.
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def read_images(paths, input_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """All images in ``paths`` as one (N, C, H, W) array, uint8 or float32 in [0, 1].

    ``input_shape`` (C, H, W): what the model takes; None keeps each file's own shape
    (then they must all agree). DataError for a missing, unreadable or misshapen file.
    """
    return read_images_named(paths, input_shape)[0]


def read_images_named(paths, input_shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """(images (N, C, H, W), names (N,)): ``a.png`` for an image file, ``b.npy[3]`` for a batch's 4th image."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("read_images: no image files given")
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if shape is not None and len(shape) != 3:
        raise ValueError(f"read_images: input_shape must be (C, H, W), got {input_shape!r}")
    parts, names = [], []
    for path in paths:
        images, batched = _read_one(path, shape)
        parts.append(images)
        names += [f"{path}[{i}]" for i in range(len(images))] if batched else [str(path)]
    if len({p.shape[1:] for p in parts}) > 1:
        found = ", ".join(f"{path}: {p.shape[1:]}" for path, p in zip(paths, parts))
        raise DataError(f"read_images: the files hold images of different shapes ({found}); "
                        "give the model's input shape to convert them")
    if all(p.dtype == np.uint8 for p in parts):
        return np.ascontiguousarray(np.concatenate(parts)), names
    floats = [p.astype(np.float32) / np.float32(255) if p.dtype == np.uint8 else p for p in parts]
    return np.ascontiguousarray(np.concatenate(floats), dtype=np.float32), names


def _read_one(path: Path, shape) -> tuple[np.ndarray, bool]:
    """(N, C, H, W) images of one file, and whether the file held a batch (named by index)."""
    if not path.is_file():
        raise DataError(f"image {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return _read_array(path, shape)
    if suffix in IMAGE_SUFFIXES:
        return _read_picture(path, shape)[None], False
    raise DataError(f"image {path}: unknown file type {path.suffix!r}; expected one of "
                    f"{', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)}")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError('reading PNG/JPEG images needs Pillow: pip install "gpucnn[images]"') from None
    return Image


def _read_picture(path: Path, shape) -> np.ndarray:
    """One image file -> (C, H, W) uint8, converted to ``shape``'s channels and size."""
    Image = _pillow()
    try:
        with Image.open(path) as img:
            img.load()
            picture = img.copy()  # close() frees the pixels of the file-backed image
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError, truncated files...
        raise DataError(f"image {path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if shape is None:
        mode = "L" if picture.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    else:
        if shape[0] not in _PIL_MODES:
            raise DataError(f"image {path}: cannot convert an image file to {shape[0]} channels "
                            "(the model takes 1, 3 or 4); give .npy arrays instead")
        mode = _PIL_MODES[shape[0]]
    # convert() drops alpha without blending and averages RGB to L with ITU-R 601 weights.
    picture = picture.convert(mode)
    if shape is not None and picture.size != (shape[2], shape[1]):
        picture = picture.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
    pixels = np.asarray(picture, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            if len(keys) == 1:
                return data[keys[0]]
            for key in NPZ_IMAGE_KEYS:
                if key in keys:
                    return data[key]
    except Exception as exc:
        raise DataError(f"image {path}: not a readable {path.suffix} file ({type(exc).__name__}: {exc})") from None
    raise DataError(f"image {path}: holds arrays {keys}; expected one array or one named "
                    f"{' or '.join(NPZ_IMAGE_KEYS)}")


def _read_array(path: Path, shape) -> tuple[np.ndarray, bool]:
    """An array file -> ((N, C, H, W) uint8 or float32, batched)."""
    array = _load_array(path)
    expected = "(C, H, W), (H, W, C), (N, C, H, W) or (N, H, W, C)" if shape is None else (
        f"({shape[0]}, {shape[1]}, {shape[2]}) or ({shape[1]}, {shape[2]}, {shape[0]}), optionally with a batch axis")
    if array.ndim not in (3, 4):
        raise DataError(f"image {path}: array of shape {array.shape}; expected {expected}")
    batched = array.ndim == 4
    batch = array if batched else array[None]
    tail = batch.shape[1:]
    if shape is None:
        channels_last = tail[-1] in (1, 3, 4) and tail[0] not in (1, 3, 4)
    elif tail == shape:
        channels_last = False
    elif tail == (shape[1], shape[2], shape[0]):
        channels_last = True
    else:
        raise DataError(f"image {path}: array of shape {array.shape}; the model takes {expected}")
    if channels_last:
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(_pixel_values(path, batch)), batched


def _pixel_values(path: Path, batch: np.ndarray) -> np.ndarray:
    """uint8 as is; floats as float32, which must lie in [0, 1]."""
    if batch.dtype == np.uint8:
        return batch
    if batch.dtype.kind != "f":
        raise DataError(f"image {path}: {batch.dtype.name} pixels; expected uint8 (0..255) or float (0..1)")
    values = batch.astype(np.float32)
    if not np.all(np.isfinite(values)) or (values.size and (values.min() < 0.0 or values.max() > 1.0)):
        low, high = np.nanmin(values), np.nanmax(values)
        raise DataError(f"image {path}: float pixels must be finite and in [0, 1], found values in "
                        f"[{low:g}, {high:g}]; divide 0..255 values by 255 or store uint8")
    return values
