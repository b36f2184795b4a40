"""Patch-whitening initialisation: identity output covariance, airbench's filters, frozen weight."""

import numpy as np
import pytest

from gpucnn import layers, optim, whitening
from gpucnn.model import Sequential
from gpucnn.whitening import patch_covariance, whitening_conv, whitening_filters


def correlated_images(n=12, c=3, h=9, w=8, seed=0):
    """Images whose neighbouring pixels and channels are correlated (like photos), float64."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 1, h + 1, w + 1))
    noise = rng.standard_normal((n, c, h + 1, w + 1))
    x = 2.0 * base + 0.5 * noise + np.arange(c)[None, :, None, None] * 0.3
    return x[:, :, :-1, :-1] + 0.5 * x[:, :, 1:, 1:]


def output_covariance(images, filters):
    conv = layers.Conv2D(images.shape[1], filters.shape[0], filters.shape[2:], bias=False, dtype=np.float64)
    conv.set_param("W", filters)
    y = conv.forward(images)  # (N, 2D, OH, OW)
    flat = y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
    return flat.T @ flat / flat.shape[0]


@pytest.mark.parametrize("kernel", [2, (2, 3)])
def test_first_half_of_outputs_is_white(numpy_backend, kernel):
    images = correlated_images()
    eps = 5e-4
    filters = whitening_filters(images, kernel, eps)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    d = images.shape[1] * kh * kw
    assert filters.shape == (2 * d, images.shape[1], kh, kw)
    lam = np.sort(np.linalg.eigvalsh(patch_covariance(images, (kh, kw))))[::-1]
    cov = output_covariance(images, filters)[:d, :d]
    np.testing.assert_allclose(cov, np.diag(lam / (lam + eps)), atol=1e-10)
    assert np.abs(cov - np.eye(d)).max() <= eps / (lam.min() + eps) + 1e-10
    assert np.abs(cov - np.eye(d)).max() < 0.05


def test_filters_are_sorted_and_followed_by_their_negatives():
    images = correlated_images()
    filters = whitening_filters(images, 2)
    d = filters.shape[0] // 2
    np.testing.assert_array_equal(filters[d:], -filters[:d])
    norms = np.linalg.norm(filters[:d].reshape(d, -1), axis=1)  # 1/sqrt(lam + eps): lam descending
    assert np.all(np.diff(norms) > 0)


def test_matches_airbench_whitening_up_to_sign():
    torch = pytest.importorskip("torch")
    images = correlated_images(n=6, h=7, w=7, seed=3)
    eps = 5e-4
    t = torch.tensor(images)
    c, h, w = 3, 2, 2
    patches = t.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    flat = patches.reshape(patches.shape[0], -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / flat.shape[0], UPLO="U")
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    ref = torch.cat((scaled, -scaled)).numpy()
    ours = whitening_filters(images, 2, eps)
    signs = np.sign(np.sum(ours * ref, axis=(1, 2, 3)))[:, None, None, None]
    np.testing.assert_allclose(ours * signs, ref, rtol=1e-8, atol=1e-10)


def test_chunked_covariance_equals_direct(monkeypatch):
    images = correlated_images(n=7)
    direct = whitening.image_patches(images, (2, 2))
    monkeypatch.setattr(whitening, "_CHUNK_PATCHES", 100)  # 56 patches per image: one image per chunk
    np.testing.assert_allclose(patch_covariance(images, (2, 2)), direct.T @ direct / direct.shape[0], rtol=1e-12)


def test_whitening_conv_keeps_its_weight_and_trains_its_bias(numpy_backend):
    images = correlated_images().astype(np.float32)
    conv = whitening_conv(images, 3, kernel_size=2)
    assert conv.frozen_params == {"W"} and conv.params["W"].shape == (24, 3, 2, 2)
    np.testing.assert_allclose(conv.params["W"], whitening_filters(images, 2).astype(np.float32))
    model = Sequential([conv, layers.Flatten()])
    before = {k: np.array(v) for k, v in conv.params.items()}
    y = model.forward(images[:2])
    model.backward(np.ones_like(y))
    optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1).step()
    np.testing.assert_array_equal(conv.params["W"], before["W"])
    assert np.all(conv.params["b"] != before["b"])
    assert "Non-trainable params: 288" in model.summary((3, 9, 8))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="whitening_filters: expected float images"):
        whitening_filters(np.zeros((2, 3, 4, 4), np.uint8), 2)
    with pytest.raises(ValueError, match=r"whitening_filters: expected non-empty images \(N, C, H, W\)"):
        whitening_filters(np.zeros((3, 4, 4)), 2)
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        whitening_filters(np.zeros((1, 3, 4, 4)), 5)
    with pytest.raises(ValueError, match=r"whitening_conv: expected images \(N, 3, H, W\)"):
        whitening_conv(np.zeros((2, 1, 4, 4)), 3)
