"""Use a trained model: ``load(checkpoint) -> TrainedModel`` and the ``gpucnn predict`` command.

``TrainedModel.predict(images)`` takes raw images, (N, C, H, W) or one (C, H, W), uint8
0..255 or float 0..1, applies the training normalization ``(x - mean) / std`` (mean, std in
[0, 1] units, as ``gpucnn.data.loader`` does), runs the model in evaluation mode batch by
batch and returns softmax probabilities (N, K) float32 on the host.

Class names and the input shape come from the checkpoint; a checkpoint written before it
stored them falls back to what the config's ``data.dataset`` is known to have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gpucnn import backend as backend_module
from gpucnn.checkpoint import CheckpointError, load_checkpoint
from gpucnn.errors import ConfigError

# Class names and (C, H, W) of the datasets gpucnn knows, for checkpoints that did not store them.
def known_dataset(name: str) -> tuple[list[str], tuple[int, int, int]] | None:
    """(classes, input shape) of a dataset whose class names are fixed (for checkpoints written
    before they stored their own), or None. The shape is the data registry's."""
    from gpucnn.data import DATASET_SPECS, cifar10, digits

    names = {"digits": digits.CLASSES, "cifar10": cifar10.CLASS_NAMES}.get(name)
    if names is None:
        return None
    return list(names), tuple(DATASET_SPECS[name].image_shape)


@dataclass
class TrainedModel:
    """A model restored from a checkpoint, ready to classify images.

    model: the Sequential (on ``backend``); classes: K names by label; input_shape: (C, H, W);
    mean, std: (C,) float64 in [0, 1] units; config: the checkpoint's config; epoch: epochs trained.
    """

    model: object
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    config: dict
    path: Path
    epoch: int
    backend: object

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, images) -> np.ndarray:
        """Host (N, C, H, W) float32 ``(x - mean) / std`` of uint8 0..255 or float 0..1 ``images``."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"predict: expected images (N, {', '.join(map(str, self.input_shape))}) or one "
                             f"{self.input_shape}, got shape {tuple(x.shape)}")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / np.float32(255)
        elif x.dtype.kind == "f":
            x = x.astype(np.float32)
        else:
            raise ValueError(f"predict: expected uint8 (0..255) or float (0..1) images, got {x.dtype.name}")
        mean = self.mean.astype(np.float32).reshape(1, -1, 1, 1)
        std = self.std.astype(np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def predict_logits(self, images, batch_size: int = 256) -> np.ndarray:
        """(N, K) float32 logits in evaluation mode, ``batch_size`` images per forward pass."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be an int >= 1, got {batch_size!r}")
        x = self.normalize(images)
        outs = []
        for start in range(0, x.shape[0], batch_size):
            # Copy one batch at a time: only a batch, never the whole input, sits on the device.
            batch = self.backend.asarray(x[start : start + batch_size])
            outs.append(np.asarray(self.backend.to_host(self.model.forward(batch, training=False)), np.float32))
        return np.concatenate(outs) if outs else np.zeros((0, self.num_classes), np.float32)

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """(N, K) float32 class probabilities (softmax of the logits); rows sum to 1."""
        return softmax(self.predict_logits(images, batch_size))

    def top_k(self, images, k: int = 5, batch_size: int = 256) -> list[list[tuple[str, float]]]:
        """For each image the ``k`` most probable (class name, probability), most probable first."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"top_k: k must be an int >= 1, got {k!r}")
        probs = self.predict(images, batch_size)
        k = min(int(k), self.num_classes)
        # A stable sort keeps the lower label first among equal probabilities.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, float32, shifted by the row max so exp cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _classes_and_shape(ckpt, path) -> tuple[list[str], tuple[int, int, int]]:
    classes, shape = ckpt.classes, ckpt.input_shape
    if classes is None or shape is None:
        dataset = ckpt.config["data"]["dataset"]
        known = known_dataset(dataset)
        if known is None:
            missing = " and ".join(w for w, v in (("class names", classes), ("input shape", shape)) if v is None)
            raise CheckpointError(f"checkpoint {path} stores no {missing} and its dataset {dataset!r} is not one "
                                  "gpucnn knows; re-save it with a gpucnn that stores them")
        classes = known[0] if classes is None else classes
        shape = known[1] if shape is None else shape
    if len(shape) != 3 or min(shape) < 1:
        raise CheckpointError(f"checkpoint {path}: data/input_shape is {shape}, expected (C, H, W)")
    return list(classes), tuple(int(s) for s in shape)


def load(path, device: str | None = None) -> TrainedModel:
    """The model of a checkpoint (``best.npz``/``last.npz``), restored for prediction.

    ``device``: backend name (numpy/cpu, cuda, emulated, auto); None uses the current backend.
    The current backend is left as it was. CheckpointError for a file that is not a
    checkpoint or does not fit its config.
    """
    from gpucnn.build import restored_model

    path = Path(path)
    ckpt = load_checkpoint(path)
    classes, shape = _classes_and_shape(ckpt, path)
    if device is None:
        backend = backend_module.get_backend()
        model = restored_model(ckpt, shape, len(classes), path)
    else:
        # Layers keep the backend they were built under, so building inside the block is enough.
        with backend_module.use_backend(device) as backend:
            model = restored_model(ckpt, shape, len(classes), path)
    mean, std = np.asarray(ckpt.mean, np.float64), np.asarray(ckpt.std, np.float64)
    if mean.shape != (shape[0],) or std.shape != (shape[0],):
        raise CheckpointError(f"checkpoint {path}: data/mean and data/std have shapes {mean.shape}, {std.shape}; "
                              f"expected ({shape[0]},) for {shape[0]}-channel inputs")
    return TrainedModel(model, classes, shape, mean, std, ckpt.config, path, ckpt.progress.epoch, backend)


def predictions_table(names: list[str], top: list[list[tuple[str, float]]]) -> str:
    """Aligned text: file, rank, class, probability (percent), one row per (image, rank)."""
    rows = [(name, str(rank), cls, f"{100 * p:.2f}%")
            for name, pairs in zip(names, top) for rank, (cls, p) in enumerate(pairs, start=1)]
    head = ("file", "rank", "class", "probability")
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(4)]
    line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"  # noqa: E731
    return "\n".join([line(head), "-" * (sum(widths) + 6)] + [line(r) for r in rows])


def predict_command(checkpoint, images, top_k: int = 5, as_json: bool = False, batch_size: int = 256,
                    device: str | None = None, echo: Callable[[str], None] = print) -> list[dict]:
    """Body of ``gpucnn predict CHECKPOINT IMAGE...``: print the top-k classes of each image.

    ``images``: paths (PNG/JPEG/.npy/.npz; an array file may hold a batch). Prints a table,
    or with ``as_json`` one JSON object ``{"checkpoint", "predictions": [{"file", "top_k":
    [{"class", "probability"}]}]}``. Returns the predictions list.
    """
    from gpucnn.images import read_images_named

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k: expected an int >= 1, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size: expected an int >= 1, got {batch_size!r}")
    if not images:
        raise ConfigError("predict: give at least one IMAGE file")
    trained = load(checkpoint, device)
    x, names = read_images_named(images, trained.input_shape)
    top = trained.top_k(x, top_k, batch_size)
    result = [{"file": name, "top_k": [{"class": c, "probability": p} for c, p in pairs]}
              for name, pairs in zip(names, top)]
    if as_json:
        echo(json.dumps({"checkpoint": str(checkpoint), "predictions": result}, indent=2))
    else:
        echo(f"checkpoint: {checkpoint} (epoch {trained.epoch}), {trained.num_classes} classes, "
             f"device: {trained.backend.device_name}")
        echo(predictions_table(names, top))
    return result
