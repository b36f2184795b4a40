"""Your own images: a folder of class sub-folders of PNG/JPEG files ("folder" dataset).

Layout under ``path``::

    train/<class>/*.png|*.jpg|*.jpeg     required
    val/<class>/...                      a shipped validation split (optional)
    test/<class>/...                     a test split (optional)

At least one of ``val/`` and ``test/`` must exist. The test set is ``test/``, or ``val/``
when there is no ``test/``; a ``val/`` folder is also the validation set (``x_val``). Class
names are the sorted folder names of ``train/`` and every split must have the same class
folders. Files starting with "." and files of other types are ignored.

Images are read with Pillow (an optional dependency), converted to RGB and resized
(bilinear) to ``image_size`` (an int or (h, w)), giving (N, 3, h, w) uint8. The decoded
arrays are cached once as .npy (never pickle) in ``<data_dir>/folder-cache/<name>-<hash>/``
next to ``manifest.json`` (every file's path, size and mtime, the image size and options);
any change to a file, the file list or the options rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpucnn.atomic import atomic_path, write_text_atomic
from gpucnn.data.dataset import Dataset
from gpucnn.data.files import list_dir, resolve_root
from gpucnn.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
CACHE_FOLDER = "folder-cache"
MANIFEST = "manifest.json"
FORMAT = 1
WHAT = "image"


def pillow():
    """The PIL.Image module; DataError saying how to install it when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError('reading image folders needs Pillow: pip install "gpucnn[images]"') from None
    return Image


def parse_image_size(value) -> tuple[int, int]:
    """``image_size`` (an int or an (h, w) pair of positive ints) -> (h, w); DataError otherwise."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise DataError(f"folder dataset option image_size must be a positive int or an (h, w) pair of them, "
                        f"got {value!r}")
    return int(pair[0]), int(pair[1])


def scan_split(split_dir: Path) -> tuple[list[str], list[tuple[str, int, int, int]]]:
    """(class names, [(path relative to split_dir, size, mtime_ns, label)]) of one split folder."""
    classes = [e.name for e in list_dir(split_dir, WHAT) if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        raise DataError(f"image folder {split_dir} has no class folders; expected one sub-folder of "
                        "PNG/JPEG images per class")
    files = []
    for label, name in enumerate(classes):
        entries = [e for e in list_dir(split_dir / name, WHAT)
                   if not e.name.startswith(".") and e.name.lower().endswith(EXTENSIONS) and e.is_file()]
        if not entries:
            raise DataError(f"class folder {split_dir / name} has no PNG/JPEG images")
        for e in entries:
            st = e.stat()
            files.append((f"{name}/{e.name}", st.st_size, st.st_mtime_ns, label))
    return classes, files


def decode_image(path: Path, size_hw: tuple[int, int], image_module) -> np.ndarray:
    """One image file -> (3, h, w) uint8 RGB; DataError naming the file when it cannot be read."""
    h, w = size_hw
    try:
        with image_module.open(path) as im:
            rgb = im.convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), image_module.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except PermissionError:
        raise DataError(f"image file {path} is unreadable (permission denied)") from None
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as exc:
        # UnidentifiedImageError and "image file is truncated" are OSErrors
        raise DataError(f"image file {path} is unreadable: {exc}") from None


def decode_split(split_dir: Path, files, size_hw, skip_bad: bool, progress: bool):
    """(x (N, 3, h, w) uint8, y (N,) int64, [skipped relative paths]) for the scanned files of a split."""
    image_module = pillow()
    x = np.empty((len(files), 3, *size_hw), np.uint8)
    keep, skipped = [], []
    for i, (rel, _, _, _) in enumerate(tqdm(files, desc=f"decoding {split_dir.name}/", disable=not progress,
                                            leave=False, unit="img")):
        try:
            x[i] = decode_image(split_dir / rel, size_hw, image_module)
            keep.append(i)
        except DataError:
            if not skip_bad:
                raise
            skipped.append(rel)
    y = np.array([f[3] for f in files], np.int64)
    return x[keep], y[keep], skipped


def cache_dir(root: Path, path: Path) -> Path:
    """Where the decoded arrays of image folder ``path`` are cached under the data directory ``root``."""
    key = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return root / CACHE_FOLDER / f"{path.name or 'root'}-{key}"


def read_cache(folder: Path, manifest: dict, splits) -> dict | None:
    """{split: (x, y)} when the cache in ``folder`` matches ``manifest`` (files, sizes, options); else None."""
    try:
        saved = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stored = {k: v for k, v in saved.items() if k != "skipped"}
    if stored != manifest:
        return None
    arrays = {}
    h, w = manifest["image_size"]
    for split in splits:
        try:
            x = np.load(folder / f"{split}-x.npy", allow_pickle=False)
            y = np.load(folder / f"{split}-y.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        count = len(manifest["splits"][split]) - len(saved.get("skipped", {}).get(split, []))
        if x.dtype != np.uint8 or x.shape != (count, 3, h, w) or y.dtype != np.int64 or y.shape != (count,):
            return None
        arrays[split] = (x, y)
    arrays["skipped"] = saved.get("skipped", {})
    return arrays


def write_cache(folder: Path, manifest: dict, arrays: dict, skipped: dict) -> None:
    """Write the arrays, then the manifest last, so a half-written cache never matches."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for split, (x, y) in arrays.items():
        for part, array in (("x", x), ("y", y)):
            with atomic_path(folder / f"{split}-{part}.npy", suffix=".npy") as tmp:
                np.save(tmp, array, allow_pickle=False)
    write_text_atomic(folder / MANIFEST, json.dumps({**manifest, "skipped": skipped}))


def load_folder(
    path: str | os.PathLike | None = None,
    image_size=32,
    skip_bad_images: bool = False,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Dataset:
    """The image folder at ``path`` as a Dataset: images (3, h, w) uint8, labels int64 by sorted class folder.

    image_size: int or (h, w), default 32; skip_bad_images: skip unreadable images (a note
    on the Dataset says how many) instead of raising DataError naming the first one;
    data_dir: where the decoded cache goes (default ``default_data_dir()``).
    """
    if path is None or str(path) == "":
        raise DataError('dataset "folder" needs the option path=DIR (a folder holding train/ and val/ or test/)')
    size_hw = parse_image_size(image_size)
    base = Path(path).expanduser().resolve()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist or is not a folder")
    present = {e.name for e in list_dir(base, WHAT) if e.is_dir()}
    if "train" not in present or not present & {"val", "test"}:
        raise DataError(f"image folder {base} must hold train/ and val/ (or test/), each with one sub-folder per "
                        f"class; found: {', '.join(sorted(present)) or 'no folders'}")
    splits = [s for s in SPLITS if s in present]
    scans = {s: scan_split(base / s) for s in splits}
    classes = scans["train"][0]
    for split in splits[1:]:
        other = scans[split][0]
        if other != classes:
            missing, extra = sorted(set(classes) - set(other)), sorted(set(other) - set(classes))
            raise DataError(f"image folder {base}: {split}/ and train/ must have the same class folders; "
                            f"{split}/ lacks {missing or 'none'} and has extra {extra or 'none'}")
    manifest = {
        "format": FORMAT, "path": str(base), "image_size": list(size_hw), "skip_bad_images": bool(skip_bad_images),
        "classes": classes, "splits": {s: [list(f[:3]) for f in scans[s][1]] for s in splits},
    }
    cache = cache_dir(resolve_root(data_dir), base)
    notes = []
    cached = read_cache(cache, manifest, splits)
    if cached is not None:
        skipped = cached.pop("skipped")
        arrays = cached
    else:
        arrays, skipped = {}, {}
        for split in splits:
            x, y, bad = decode_split(base / split, scans[split][1], size_hw, skip_bad_images, progress)
            if bad:
                skipped[split] = bad
            missing = sorted(set(classes) - {classes[i] for i in np.unique(y)})
            if missing:
                raise DataError(f"image folder {base / split}: class folder(s) {', '.join(missing)} have no readable "
                                "images")
            arrays[split] = (x, y)
        try:
            write_cache(cache, manifest, arrays, skipped)
        except OSError as exc:
            notes.append(f"could not cache the decoded images in {cache} ({exc.strerror or exc}); "
                         "they will be decoded again next time")
    total_skipped = sum(len(v) for v in skipped.values())
    if total_skipped:
        first = next(f"{s}/{v[0]}" for s, v in skipped.items() if v)
        notes.insert(0, f"skipped {total_skipped} unreadable image(s) in {base} (first: {first}); "
                        "skip_bad_images is on")
    test = arrays["test"] if "test" in arrays else arrays["val"]
    val = arrays.get("val")
    return Dataset(name="folder", x_train=arrays["train"][0], y_train=arrays["train"][1], x_test=test[0],
                   y_test=test[1], classes=list(classes), x_val=None if val is None else val[0],
                   y_val=None if val is None else val[1], notes=notes)
