"""Training checkpoints: one ``.npz`` file, readable with ``np.load(path, allow_pickle=False)``.

Keys:
  ``model/layers.{i}.{name}``       params and layer state (``Sequential.state_dict()``)
  ``optim/velocity.layers.{i}.{n}``  optimizer state (``SGD.state_dict()``; Adam's ``exp_avg...``
                                     float arrays and ``step...`` int64 counts)
  ``progress/epoch``                 completed epochs (int64)
  ``progress/step_in_epoch``         steps done in the epoch after those (0 at an epoch boundary)
  ``progress/global_step``           optimizer steps done in all
  ``progress/best_acc``              best accuracy so far of what best.npz is chosen on: validation,
                                     else training accuracy (float64; -1 before any). Checkpoints of
                                     older versions have ``progress/best_test_acc`` instead
  ``progress/partial_sums``          (3,) float64: loss sum, correct count, samples of the unfinished epoch
  ``rng/seed``                       the run seed; every random stream (init, shuffle, augment, dropout)
                                     is a counter-based function of (seed, epoch, step), so seed and
                                     progress are the complete RNG state
  ``data/mean``, ``data/std``        (C,) normalization the model was trained with
  ``data/classes``                   (K,) str class names by label (optional: absent before it was added)
  ``data/input_shape``               (3,) int64 per-sample input (C, H, W) (optional, likewise)
  ``config/toml``                    the resolved config as TOML text
  ``metrics/jsonl``                  the metrics.jsonl rows of the completed epochs (optional)
  ``ema/layers.{i}.{name}``, ``ema/num_updates``   averaged weights when training.ema is on (optional)
  ``lookahead/layers.{i}.{name}``    Lookahead's slow weights when training.lookahead is on (optional)
  ``format/version``                 CHECKPOINT_VERSION
Files are written to a temp file in the same directory and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpucnn.atomic import atomic_open
from gpucnn.config import dumps_toml, parse_toml, validate_config
from gpucnn.errors import ConfigError, GpucnnError
from gpucnn.metrics import jsonl_text

CHECKPOINT_VERSION = 1


class CheckpointError(GpucnnError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


@dataclass
class Progress:
    """Where a run stands: completed epochs, steps into the next one, running sums of that epoch."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_acc: float = -1.0
    partial_sums: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float64))


@dataclass
class Checkpoint:
    model_state: dict[str, np.ndarray]
    optim_state: dict[str, np.ndarray]
    config: dict
    progress: Progress
    seed: int
    mean: np.ndarray
    std: np.ndarray
    classes: list[str] | None = None  # None: written without them (older gpucnn)
    input_shape: tuple[int, int, int] | None = None
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records of the epochs done
    ema_state: dict[str, np.ndarray] = field(default_factory=dict)  # averaged weights (training.ema)
    lookahead_state: dict[str, np.ndarray] = field(default_factory=dict)  # slow weights (training.lookahead)
    path: Path | None = None  # the file it was read from (load_checkpoint), for messages


def save_checkpoint(path, model, optimizer, config: dict, progress: Progress, mean, std,
                    classes=None, input_shape=None, history=None, ema=None, lookahead=None) -> None:
    """Write a checkpoint atomically (temp file + ``os.replace``).

    ``classes`` (K names by label) and ``input_shape`` (C, H, W) are what prediction needs
    besides the model; either may be None (not stored). ``history``: the metrics records of
    the epochs done, so that a run killed between writing this file and metrics.jsonl gets
    every row back on resume.
    """
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays.update({
        "progress/epoch": np.int64(progress.epoch),
        "progress/step_in_epoch": np.int64(progress.step_in_epoch),
        "progress/global_step": np.int64(progress.global_step),
        "progress/best_acc": np.float64(progress.best_acc),
        "progress/partial_sums": np.asarray(progress.partial_sums, dtype=np.float64),
        "rng/seed": np.int64(config["training"]["seed"]),
        "data/mean": np.asarray(mean, dtype=np.float64),
        "data/std": np.asarray(std, dtype=np.float64),
        "config/toml": np.array(dumps_toml(config)),
        "format/version": np.int64(CHECKPOINT_VERSION),
    })
    if history:
        arrays["metrics/jsonl"] = np.array(jsonl_text(history))
    if ema is not None:
        arrays.update({f"ema/{k}": v for k, v in ema.state().items()})
    if lookahead is not None:
        arrays.update({f"lookahead/{k}": v for k, v in lookahead.state().items()})
    if classes is not None:
        names = [str(c) for c in classes]
        if not names:
            raise ValueError("save_checkpoint: classes must name at least one class")
        arrays["data/classes"] = np.array(names, dtype=str)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"save_checkpoint: input_shape must be (C, H, W) positive ints, got {input_shape!r}")
        arrays["data/input_shape"] = np.array(shape, dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``; CheckpointError saying what is wrong with the file."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a folder, expected a .npz file such as {path / 'last.npz'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({exc.strerror})") from None
    # Checked first because NumPy takes any other file for a pickle and advises allow_pickle=True.
    if magic != b"PK\x03\x04":
        what = "a single .npy array" if magic == b"\x93NUM" else "empty" if not magic else "not an .npz (zip) archive"
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file ({what})")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise CheckpointError(f"checkpoint {path}: holds pickled (object) arrays, which gpucnn never loads; "
                                  "it is not a gpucnn checkpoint") from None
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, zlib.error...
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file, truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from None


def _scalar(arrays: dict, key: str, path: Path, kind: str, minimum=None, maximum=None):
    """The 0-d array ``arrays[key]`` as int ("i") or float ("f"), range-checked."""
    value = arrays[key]
    if value.shape != () or value.dtype.kind not in ("iu" if kind == "i" else "iuf"):
        what = "an integer" if kind == "i" else "a number"
        raise CheckpointError(f"checkpoint {path}: {key} must be {what} (a 0-d array), "
                              f"got {value.dtype.name} of shape {value.shape}")
    number = int(value) if kind == "i" else float(value)
    if not np.isfinite(number) or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise CheckpointError(f"checkpoint {path}: {key} = {number} is out of range (expected {bounds})")
    return number


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; CheckpointError naming the file and what is wrong."""
    path = Path(path)
    arrays = _read_arrays(path)
    if "progress/best_test_acc" in arrays and "progress/best_acc" not in arrays:  # written before validation
        arrays["progress/best_acc"] = arrays.pop("progress/best_test_acc")
    needed = ("format/version", "config/toml", "progress/epoch", "progress/step_in_epoch", "progress/global_step",
              "progress/best_acc", "progress/partial_sums", "rng/seed", "data/mean", "data/std")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a gpucnn training checkpoint (missing {', '.join(missing)})")
    version = _scalar(arrays, "format/version", path, "i")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version}, this gpucnn reads {CHECKPOINT_VERSION}")
    toml_text = arrays["config/toml"]
    if toml_text.shape != () or toml_text.dtype.kind != "U":
        raise CheckpointError(f"checkpoint {path}: config/toml must be a text string, got {toml_text.dtype.name}")
    try:
        config = validate_config(parse_toml(str(toml_text), "config/toml"))
    except ConfigError as exc:  # a checkpoint's fault, not the command line's: exit 1 like the rest
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    partial = arrays["progress/partial_sums"]
    if partial.shape != (3,) or partial.dtype.kind != "f" or not np.all(np.isfinite(partial)) or np.any(partial < 0):
        raise CheckpointError(f"checkpoint {path}: progress/partial_sums must be 3 finite non-negative numbers, "
                              f"got {partial.dtype.name} {partial.shape}")
    mean, std = arrays["data/mean"], arrays["data/std"]
    for key, value in (("data/mean", mean), ("data/std", std)):
        if value.ndim != 1 or value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint {path}: {key} must be finite per-channel numbers (C,), "
                                  f"got {value.dtype.name} {value.shape}")
    if mean.shape != std.shape or np.any(std <= 0):
        raise CheckpointError(f"checkpoint {path}: data/std must be positive and as long as data/mean "
                              f"({std.shape} vs {mean.shape})")
    for key, value in arrays.items():
        if key.startswith("optim/step."):  # Adam/AdamW's per-param update counts: int64 scalars
            if value.shape != () or value.dtype.kind not in "iu" or int(value) < 0:
                raise CheckpointError(f"checkpoint {path}: {key} must be a non-negative integer count, "
                                      f"got {value.dtype.name} {value.shape}")
            continue
        if key.startswith(("model/", "optim/", "ema/layers.", "lookahead/")):
            if value.dtype.kind != "f":
                raise CheckpointError(f"checkpoint {path}: {key} must be a float array, got {value.dtype.name}")
            # A diverged run never saves (Trainer._check_finite), so non-finite weights mean a damaged file.
            if not np.all(np.isfinite(value)):
                raise CheckpointError(f"checkpoint {path}: {key} holds non-finite values (nan or inf)")
    classes = _classes(arrays, path)
    input_shape = _input_shape(arrays, path)
    progress = Progress(
        epoch=_scalar(arrays, "progress/epoch", path, "i", 0),
        step_in_epoch=_scalar(arrays, "progress/step_in_epoch", path, "i", 0),
        global_step=_scalar(arrays, "progress/global_step", path, "i", 0),
        best_acc=_scalar(arrays, "progress/best_acc", path, "f", -1.0, 1.0),
        partial_sums=np.array(partial, dtype=np.float64),
    )
    history = _history(arrays, path)
    return Checkpoint(
        model_state={k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")},
        optim_state={k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
        config=config,
        progress=progress,
        seed=_scalar(arrays, "rng/seed", path, "i", 0, 2**32 - 1),
        mean=mean,
        std=std,
        classes=classes,
        input_shape=input_shape,
        history=history,
        ema_state={k[len("ema/"):]: v for k, v in arrays.items() if k.startswith("ema/")},
        lookahead_state={k[len("lookahead/"):]: v for k, v in arrays.items() if k.startswith("lookahead/")},
        path=path,
    )


def _classes(arrays: dict, path: Path) -> list[str] | None:
    """``data/classes`` as K names, None when absent (older checkpoints)."""
    if "data/classes" not in arrays:
        return None
    value = arrays["data/classes"]
    if value.ndim != 1 or value.dtype.kind != "U" or value.shape[0] == 0:
        raise CheckpointError(f"checkpoint {path}: data/classes must be a non-empty list of class names (K,), "
                              f"got {value.dtype.name} of shape {value.shape}")
    return [str(c) for c in value]


def _input_shape(arrays: dict, path: Path) -> tuple[int, int, int] | None:
    """``data/input_shape`` as (C, H, W) positive ints, None when absent (older checkpoints)."""
    if "data/input_shape" not in arrays:
        return None
    value = arrays["data/input_shape"]
    if value.shape != (3,) or value.dtype.kind not in "iu" or np.any(value < 1):
        raise CheckpointError(f"checkpoint {path}: data/input_shape must be 3 positive integers (C, H, W), "
                              f"got {value.dtype.name} {value.tolist()}")
    return tuple(int(s) for s in value)


def _history(arrays: dict, path: Path) -> list[dict]:
    """The metrics rows stored in ``metrics/jsonl`` (one JSON object per line), [] when absent."""
    if "metrics/jsonl" not in arrays:
        return []
    value = arrays["metrics/jsonl"]
    if value.shape != () or value.dtype.kind != "U":
        raise CheckpointError(f"checkpoint {path}: metrics/jsonl must be a text string, got {value.dtype.name}")
    history = []
    for number, line in enumerate(str(value).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint {path}: metrics/jsonl line {number} is not valid JSON "
                                  f"({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) or isinstance(record["epoch"], bool):
            raise CheckpointError(f"checkpoint {path}: metrics/jsonl line {number} must be an object with an "
                                  f"integer \"epoch\"")
        history.append(record)
    return history


def restore(checkpoint: Checkpoint, model, optimizer=None, path=None, ema=None) -> None:
    """Load a checkpoint's params/state into ``model`` (and optimizer state, and the EMA's
    averaged weights when both the run and the checkpoint have them)."""
    try:
        model.load_state_dict(checkpoint.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.optim_state)
        if ema is not None and checkpoint.ema_state:
            ema.load_state(checkpoint.ema_state)
    except (ValueError, KeyError) as exc:
        path = path if path is not None else checkpoint.path
        where = f"checkpoint {path}" if path is not None else "the checkpoint"
        raise CheckpointError(f"{where} does not fit the model of its own config: {exc}") from None


def restore_lookahead(checkpoint: Checkpoint, lookahead, path=None) -> None:
    """Load a checkpoint's Lookahead slow weights; a checkpoint of a run without them (written before
    training.lookahead was turned on) cannot be resumed exactly, so it is a CheckpointError."""
    where = f"checkpoint {path if path is not None else checkpoint.path}"
    if not checkpoint.lookahead_state:
        raise CheckpointError(f"{where} has no lookahead/ arrays, but training.lookahead.every is "
                              f"{lookahead.every}; resume it with the config it was saved with")
    try:
        lookahead.load_state(checkpoint.lookahead_state)
    except ValueError as exc:
        raise CheckpointError(f"{where} does not fit the model of its own config: {exc}") from None
