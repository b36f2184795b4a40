"""gpucnn: a convolutional-network trainer on hand-written CUDA kernels, with a NumPy fallback."""

__version__ = "0.1.0"
