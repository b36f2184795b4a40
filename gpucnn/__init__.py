"""gpucnn: a convolutional-network trainer on hand-written CUDA kernels, with a NumPy fallback."""

__version__ = "0.1.0"


def load(path, device=None):
    """A trained model from a checkpoint: ``gpucnn.predict.load`` (see ``TrainedModel``).

    Imported on first call, so ``import gpucnn`` stays light.
    """
    from gpucnn.predict import load as _load

    return _load(path, device)


__all__ = ["__version__", "load"]
