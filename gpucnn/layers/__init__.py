"""Layers: Conv2D, pooling, Dense, activations, Dropout, Flatten, BatchNorm2D, Scale, Residual, Add."""

from gpucnn.layers.activations import ACTIVATION_LAYERS, ActivationLayer
from gpucnn.layers.base import Layer
from gpucnn.layers.conv import Conv2D
from gpucnn.layers.dense import Dense
from gpucnn.layers.dropout import Dropout
from gpucnn.layers.norm import BatchNorm2D
from gpucnn.layers.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from gpucnn.layers.residual import Add, Residual, SubsamplePad
from gpucnn.layers.scale import Scale
from gpucnn.layers.shape import Flatten

__all__ = [
    "Layer",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "Dense",
    "Flatten",
    *(cls.__name__ for cls in ACTIVATION_LAYERS.values()),
    "Dropout",
    "BatchNorm2D",
    "Scale",
    "ActivationLayer",
    "ACTIVATION_LAYERS",
    "Residual",
    "Add",
    "SubsamplePad",
]

globals().update({cls.__name__: cls for cls in ACTIVATION_LAYERS.values()})
# Layers with parameters that optimizer groups may name by class (``optimizer.groups[].layer``).
PARAMETRIC_LAYERS = (Conv2D, Dense, BatchNorm2D)
