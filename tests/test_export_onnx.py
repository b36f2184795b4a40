"""ONNX export: onnxruntime's logits against gpucnn's evaluation forward, for every shipped config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpucnn import layers as L
from gpucnn.build import build_model
from gpucnn.checkpoint import Progress, save_checkpoint
from gpucnn.config import load_config, validate_config
from gpucnn.export_onnx import (
    CONVERTERS, ExportError, build_onnx, converter, export_command, export_onnx,
)
from gpucnn.model import Sequential

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.toml"))
TOL = dict(rtol=1e-4, atol=1e-4)


def _randomize(model, seed=0):
    """Random biases and BatchNorm affine/running stats: export must carry every one of them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for name, value in layer.params.items():
            if name in ("b", "beta"):
                layer.set_param(name, 0.1 * rng.standard_normal(value.shape))
            elif name == "gamma":
                layer.set_param(name, rng.uniform(0.5, 1.5, value.shape))
        if isinstance(layer, L.BatchNorm2D):
            c = layer.num_features
            layer.load_state({"running_mean": 0.2 * rng.standard_normal(c), "running_var": rng.uniform(0.5, 2.0, c)})


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _check(model, shape, opset=17, batches=(1, 5), seed=0):
    out = shape
    for layer in model.layers:
        out = layer.output_shape(out)
    classes = [f"k{i}" for i in range(out[0])]
    proto = build_onnx(model, shape, classes, opset=opset)
    session = _session(proto)
    rng = np.random.default_rng(seed)
    for n in batches:  # one session, two batch sizes: the batch axis is dynamic
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        want = model.forward(x, training=False)
        got = session.run(["logits"], {"images": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, **TOL)
    return proto


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_exports_and_matches(path):
    config = validate_config(load_config(str(path)))
    model = build_model(config, (3, 32, 32), 10, seed=1)
    _randomize(model)
    _check(model, (3, 32, 32))


def test_every_layer_option_matches():
    """Stride/padding, no-bias conv and dense, padded pools, non-affine BN, every activation, Scale, Dropout."""
    rng = np.random.default_rng(2)
    model = Sequential([
        L.Conv2D(3, 6, (3, 2), stride=(2, 1), padding=(1, 0), rng=rng),
        L.BatchNorm2D(6, eps=1e-3, affine=False),
        L.Sigmoid(),
        L.Conv2D(6, 5, 3, padding=1, bias=False, rng=rng),
        L.Tanh(),
        L.AvgPool2D(3, stride=2, padding=1),
        L.Softplus(),
        L.MaxPool2D(3, stride=1, padding=1),
        L.GELU(),
        L.Dropout(0.5),
        L.Flatten(),
        L.Dense(5 * 3 * 5, 7, rng=rng, bias=False),
        L.ReLU(),
        L.Dense(7, 4, rng=rng),
        L.Scale(0.25),
        L.Dropout(0.3),
    ])
    _randomize(model)
    _check(model, (3, 9, 10), opset=17)
    proto = _check(model, (3, 9, 10), opset=20)
    assert "Gelu" in {n.op_type for n in proto.graph.node}


def test_metadata_and_atomic_file(tmp_path):
    rng = np.random.default_rng(3)
    model = Sequential([L.Flatten(), L.Dense(12, 3, rng=rng)])
    path = tmp_path / "sub" / "m.onnx"
    export_onnx(model, path, (3, 2, 2), ["cat", "dog", "emu"], mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.25])
    loaded = onnx.load(str(path))
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog", "emu"]
    assert json.loads(meta["mean"]) == [0.1, 0.2, 0.3] and json.loads(meta["std"]) == [0.5, 0.5, 0.25]
    assert json.loads(meta["input_shape"]) == [3, 2, 2]
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["m.onnx"]  # no temp file left
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, model.forward(x, training=False), **TOL)


class _Mystery(L.Layer):
    def forward(self, x, training=True):
        return x


def test_unsupported_layer_names_its_index_and_class(tmp_path):
    model = Sequential([L.ReLU(), _Mystery(), L.Flatten(), L.Dense(4, 2)])
    with pytest.raises(ExportError, match=r"layer 1 \(_Mystery\): no ONNX conversion.*supported: .*Conv2D"):
        export_onnx(model, tmp_path / "m.onnx", (1, 2, 2), ["a", "b"])
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments_are_clear_errors(tmp_path):
    model = Sequential([L.Flatten(), L.Dense(4, 2)])
    with pytest.raises(ExportError, match="opset: expected an int from 13"):
        build_onnx(model, (1, 2, 2), ["a", "b"], opset=9)
    with pytest.raises(ExportError, match=r"2 class names.*\(3,\)|3 class names"):
        build_onnx(model, (1, 2, 2), ["a", "b", "c"])
    with pytest.raises(ExportError, match="layer 1 does not take the input shape"):
        build_onnx(model, (1, 3, 3), ["a", "b"])


def test_residual_blocks_and_every_activation_export():
    rng = np.random.default_rng(4)
    model = Sequential([
        L.Conv2D(2, 4, 3, padding=1, rng=rng),
        L.Residual([L.Conv2D(4, 4, 3, padding=1, rng=rng), L.BatchNorm2D(4), L.SiLU()]),
        L.Residual([L.Conv2D(4, 6, 3, stride=2, padding=1, rng=rng)], [L.Conv2D(4, 6, 1, stride=2, rng=rng)]),
        L.Residual([L.Conv2D(6, 8, 3, stride=2, padding=1, rng=rng)], [L.SubsamplePad(8, stride=2)]),
        L.Add([L.Tanh()], [L.Sigmoid()], [L.Softplus()], []),
        L.GELU(), L.GlobalAvgPool2D(), L.Dense(8, 3, rng=rng),
    ])
    _randomize(model)
    model.layers[1].body[1].load_state({"running_mean": np.full(4, 0.3), "running_var": np.full(4, 2.0)})
    _check(model, (2, 6, 6))
    with pytest.raises(ExportError, match=r"layer 1\.body\[0\] \(_Mystery\)"):
        build_onnx(Sequential([L.Flatten(), L.Residual([_Mystery()]), L.Dense(8, 2)]), (2, 2, 2), ["a", "b"])


def test_export_command_from_a_checkpoint(tmp_path):
    config = validate_config(load_config("digits"))
    model = build_model(config, (3, 32, 32), 10, seed=5)
    _randomize(model)
    ckpt = tmp_path / "best.npz"
    classes = [f"d{i}" for i in range(10)]
    save_checkpoint(ckpt, model, None, config, Progress(epoch=1), [0.1, 0.2, 0.3], [0.3, 0.3, 0.3],
                    classes=classes, input_shape=(3, 32, 32))
    lines: list[str] = []
    out = export_command(ckpt, None, 17, echo=lines.append)
    assert out == tmp_path / "best.onnx" and out.is_file()
    assert "onnxruntime agrees" in lines[-1]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == classes
    x = np.random.default_rng(6).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, model.forward(x, training=False), **TOL)
