"""A small LeNet-style network learns scikit-learn's 8x8 digits to >= 95% test accuracy in seconds."""

import numpy as np
import pytest

from gpucnn import layers, losses, optim
from gpucnn.model import Sequential


def test_lenet_style_network_learns_digits(numpy_backend):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    rng = np.random.default_rng(0)
    model = Sequential(
        [
            layers.Conv2D(1, 8, 3, padding=1, rng=rng),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Conv2D(8, 16, 3, padding=1, rng=rng),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Flatten(),
            layers.Dense(64, 32, rng=rng),
            layers.ReLU(),
            layers.Dense(32, 10, rng=rng),
        ]
    )
    loss_fn = losses.SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.03, momentum=0.9, weight_decay=1e-4)
    for epoch in range(8):
        opt.lr = 0.03 if epoch < 6 else 0.003
        perm = rng.permutation(len(x_train))
        for i in range(0, len(perm), 32):
            idx = perm[i : i + 32]
            loss_fn.forward(model.forward(x_train[idx]), y_train[idx])
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
    accuracy = float((model.predict(x_test).argmax(axis=1) == y_test).mean())
    assert accuracy >= 0.95
