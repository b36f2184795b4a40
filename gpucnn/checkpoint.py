"""Training checkpoints: one ``.npz`` file, readable with ``np.load(path, allow_pickle=False)``.

Keys:
  ``model/layers.{i}.{name}``       params and layer state (``Sequential.state_dict()``)
  ``optim/velocity.layers.{i}.{n}``  optimizer state (``SGD.state_dict()``)
  ``progress/epoch``                 completed epochs (int64)
  ``progress/step_in_epoch``         steps done in the epoch after those (0 at an epoch boundary)
  ``progress/global_step``           optimizer steps done in all
  ``progress/best_test_acc``         best test accuracy so far (float64; -1 before any evaluation)
  ``progress/partial_sums``          (3,) float64: loss sum, correct count, samples of the unfinished epoch
  ``rng/seed``                       the run seed; every random stream (init, shuffle, augment, dropout)
                                     is a counter-based function of (seed, epoch, step), so seed and
                                     progress are the complete RNG state
  ``data/mean``, ``data/std``        (C,) normalization the model was trained with
  ``data/classes``                   (K,) str class names by label (optional: absent before it was added)
  ``data/input_shape``               (3,) int64 per-sample input (C, H, W) (optional, likewise)
  ``config/toml``                    the resolved config as TOML text
  ``format/version``                 CHECKPOINT_VERSION
Files are written to a temp file in the same directory and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpucnn.atomic import atomic_open
from gpucnn.config import dumps_toml, parse_toml, validate_config
from gpucnn.errors import GpucnnError

CHECKPOINT_VERSION = 1


class CheckpointError(GpucnnError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


@dataclass
class Progress:
    """Where a run stands: completed epochs, steps into the next one, running sums of that epoch."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_test_acc: float = -1.0
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


def save_checkpoint(path, model, optimizer, config: dict, progress: Progress, mean, std,
                    classes=None, input_shape=None) -> None:
    """Write a checkpoint atomically (temp file + ``os.replace``).

    ``classes`` (K names by label) and ``input_shape`` (C, H, W) are what prediction needs
    besides the model; either may be None (not stored).
    """
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays.update({
        "progress/epoch": np.int64(progress.epoch),
        "progress/step_in_epoch": np.int64(progress.step_in_epoch),
        "progress/global_step": np.int64(progress.global_step),
        "progress/best_test_acc": np.float64(progress.best_test_acc),
        "progress/partial_sums": np.asarray(progress.partial_sums, dtype=np.float64),
        "rng/seed": np.int64(config["training"]["seed"]),
        "data/mean": np.asarray(mean, dtype=np.float64),
        "data/std": np.asarray(std, dtype=np.float64),
        "config/toml": np.array(dumps_toml(config)),
        "format/version": np.int64(CHECKPOINT_VERSION),
    })
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


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; CheckpointError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError...
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    needed = ("format/version", "config/toml", "progress/epoch", "rng/seed", "data/mean", "data/std")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a gpucnn training checkpoint (missing {', '.join(missing)})")
    version = int(arrays["format/version"])
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version}, this gpucnn reads {CHECKPOINT_VERSION}")
    config = validate_config(parse_toml(str(arrays["config/toml"]), f"{path} (embedded config)"))
    progress = Progress(
        epoch=int(arrays["progress/epoch"]),
        step_in_epoch=int(arrays["progress/step_in_epoch"]),
        global_step=int(arrays["progress/global_step"]),
        best_test_acc=float(arrays["progress/best_test_acc"]),
        partial_sums=np.array(arrays["progress/partial_sums"], dtype=np.float64),
    )
    return Checkpoint(
        model_state={k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")},
        optim_state={k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
        config=config,
        progress=progress,
        seed=int(arrays["rng/seed"]),
        mean=arrays["data/mean"],
        std=arrays["data/std"],
        classes=[str(c) for c in arrays["data/classes"]] if "data/classes" in arrays else None,
        input_shape=tuple(int(s) for s in arrays["data/input_shape"]) if "data/input_shape" in arrays else None,
    )


def restore(checkpoint: Checkpoint, model, optimizer=None, path="checkpoint") -> None:
    """Load a checkpoint's params/state into ``model`` (and velocities into ``optimizer``)."""
    try:
        model.load_state_dict(checkpoint.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.optim_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model of its config: {exc}") from None
