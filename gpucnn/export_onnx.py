"""Export a trained Sequential to ONNX (``onnx.helper``; extra ``gpucnn[onnx]``, no torch).

The graph is the model in evaluation mode: input ``images`` float32 (batch, C, H, W),
already normalized ``(x/255 - mean) / std``; output ``logits`` float32 (batch, K); the
batch axis is dynamic. ``metadata_props`` carry ``classes``, ``mean``, ``std`` and
``input_shape`` (JSON lists) and how to normalize, so a consumer needs nothing else.

Each layer class maps to one converter in ``CONVERTERS`` (``@converter(Cls)``): a function
``(layer, graph, x) -> y`` that adds nodes to ``graph`` (an ``OnnxGraph``) taking the value
named ``x`` and returns the name of its output. A composite layer converts its children
with ``graph.chain(layers, x)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from gpucnn import layers as L
from gpucnn.atomic import atomic_open
from gpucnn.errors import GpucnnError

MIN_OPSET = 13  # Gemm without C, Softplus, Erf, BatchNormalization without training outputs
GELU_OP_OPSET = 20  # ONNX has a Gelu op from opset 20 on
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class ExportError(GpucnnError):
    """A model cannot be exported (a layer with no ONNX conversion, a bad opset, no onnx package)."""


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ExportError('ONNX export needs the onnx package: pip install "gpucnn[onnx]"') from None
    return onnx, helper, numpy_helper


class OnnxGraph:
    """Nodes and initializers under construction; names are unique within the graph."""

    def __init__(self, opset: int) -> None:
        _, self.helper, self.numpy_helper = _onnx()
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self.where = "model"  # the layer being converted, for error messages

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array, hint: str) -> str:
        """Add a float32 (or given-dtype) initializer; returns its name."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        """Add one node with one output; returns the output's name."""
        out = self.name(hint or op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.name(f"{op}_node"), **attrs))
        return out

    def convert(self, layer, x: str, where: str) -> str:
        """Convert one layer fed by ``x``; ExportError naming ``where`` when no converter fits."""
        fn = converter_for(layer)
        if fn is None:
            supported = ", ".join(sorted(c.__name__ for c in CONVERTERS))
            raise ExportError(f"{where} ({type(layer).__name__}): no ONNX conversion for this layer type; "
                              f"supported: {supported}")
        previous, self.where = self.where, where
        try:
            return fn(layer, self, x)
        finally:
            self.where = previous

    def chain(self, layers, x: str, prefix: str | None = None) -> str:
        """Convert ``layers`` in order; they are named ``layer {i}`` (top level) or ``{prefix}[{i}]``."""
        for i, layer in enumerate(layers):
            x = self.convert(layer, x, f"layer {i}" if prefix is None else f"{prefix}[{i}]")
        return x


Converter = Callable[[object, OnnxGraph, str], str]
CONVERTERS: dict[type, Converter] = {}


def converter(*classes: type) -> Callable[[Converter], Converter]:
    """Register a function ``(layer, graph, x) -> y`` as the ONNX conversion of ``classes``."""

    def register(fn: Converter) -> Converter:
        for cls in classes:
            CONVERTERS[cls] = fn
        return fn

    return register


def converter_for(layer) -> Converter | None:
    """The converter of the layer's class, else of its nearest registered base class."""
    for cls in type(layer).__mro__:
        if cls is L.Layer:
            return None
        if cls in CONVERTERS:
            return CONVERTERS[cls]
    return None


def _host(layer, array) -> np.ndarray:
    return np.asarray(layer.backend.to_host(array))


def _pads(padding) -> list[int]:
    ph, pw = padding
    return [ph, pw, ph, pw]  # ONNX order: begins of each spatial axis, then the ends


@converter(L.Conv2D)
def _conv(layer, g: OnnxGraph, x: str) -> str:
    inputs = [x, g.const(_host(layer, layer.params["W"]), "conv_W")]
    if "b" in layer.params:
        inputs.append(g.const(_host(layer, layer.params["b"]), "conv_b"))
    return g.node("Conv", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=_pads(layer.padding), dilations=[1, 1], group=1)


@converter(L.MaxPool2D)
def _maxpool(layer, g: OnnxGraph, x: str) -> str:
    # ONNX MaxPool ignores padded positions, as gpucnn's implicit -inf padding does.
    return g.node("MaxPool", [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=_pads(layer.padding), ceil_mode=0)


@converter(L.AvgPool2D)
def _avgpool(layer, g: OnnxGraph, x: str) -> str:
    return g.node("AveragePool", [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=_pads(layer.padding), ceil_mode=0, count_include_pad=1)


@converter(L.BatchNorm2D)
def _batchnorm(layer, g: OnnxGraph, x: str) -> str:
    gamma, beta = layer._gamma_beta()
    inputs = [x, g.const(_host(layer, gamma), "bn_scale"), g.const(_host(layer, beta), "bn_bias"),
              g.const(_host(layer, layer.running_mean), "bn_mean"), g.const(_host(layer, layer.running_var), "bn_var")]
    return g.node("BatchNormalization", inputs, epsilon=float(layer.eps))


@converter(L.Dense)
def _dense(layer, g: OnnxGraph, x: str) -> str:
    inputs = [x, g.const(_host(layer, layer.params["W"]), "dense_W")]
    if "b" in layer.params:
        inputs.append(g.const(_host(layer, layer.params["b"]), "dense_b"))
    return g.node("Gemm", inputs, transB=1)


@converter(L.GELU)
def _gelu(layer, g: OnnxGraph, x: str) -> str:
    if g.opset >= GELU_OP_OPSET:
        return g.node("Gelu", [x], approximate="none")
    # x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt 2))
    erf = g.node("Erf", [g.node("Div", [x, g.const(np.array(math.sqrt(2.0)), "sqrt2")])])
    one_plus = g.node("Add", [erf, g.const(np.array(1.0), "one")])
    return g.node("Mul", [g.node("Mul", [x, one_plus]), g.const(np.array(0.5), "half")], hint="gelu")


def _elementwise(op: str) -> Converter:
    return lambda layer, g, x: g.node(op, [x])


converter(L.ReLU)(_elementwise("Relu"))
converter(L.Sigmoid)(_elementwise("Sigmoid"))
converter(L.Tanh)(_elementwise("Tanh"))
converter(L.Softplus)(_elementwise("Softplus"))


@converter(L.SiLU)
def _silu(layer, g: OnnxGraph, x: str) -> str:
    return g.node("Mul", [x, g.node("Sigmoid", [x])], hint="silu")


@converter(L.GlobalAvgPool2D)
def _global_avgpool(layer, g: OnnxGraph, x: str) -> str:
    return g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)


@converter(L.SubsamplePad)
def _subsample_pad(layer, g: OnnxGraph, x: str) -> str:
    """x[:, :, ::sh, ::sw] with zero channels padded before and after (as SubsamplePad.forward)."""
    big = np.iinfo(np.int64).max
    sliced = g.node("Slice", [x, g.const(np.array([0, 0], np.int64), "starts"),
                              g.const(np.array([big, big], np.int64), "ends"),
                              g.const(np.array([2, 3], np.int64), "axes"),
                              g.const(np.array(layer.stride, np.int64), "steps")])
    in_channels = layer.in_channels  # set by build_onnx's shape pass (output_shape)
    front = (layer.out_channels - in_channels) // 2
    back = layer.out_channels - in_channels - front
    pads = g.const(np.array([0, front, 0, 0, 0, back, 0, 0], np.int64), "pads")
    return g.node("Pad", [sliced, pads], mode="constant")


@converter(L.Scale)
def _scale(layer, g: OnnxGraph, x: str) -> str:
    return g.node("Mul", [x, g.const(np.array(layer.factor), "scale")])


@converter(L.Flatten)
def _flatten(layer, g: OnnxGraph, x: str) -> str:
    return g.node("Flatten", [x], axis=1)


@converter(L.Dropout)
def _dropout(layer, g: OnnxGraph, x: str) -> str:
    return x  # the identity in evaluation mode


@converter(L.Add)
def convert_add(layer, g: OnnxGraph, x: str) -> str:
    """y = sum of the branches (Residual: body + shortcut); an empty branch is the identity."""
    where = g.where
    outputs = [g.chain(branch, x, f"{where}.{name}") for name, branch in zip(layer.branch_names, layer.branches)]
    y = outputs[0]
    for other in outputs[1:]:
        y = g.node("Add", [y, other], hint="residual")
    return y


def _metadata(classes, input_shape, mean, std) -> dict[str, str]:
    import gpucnn

    channels = input_shape[0]
    meta = {
        "classes": json.dumps([str(c) for c in classes]),
        "input_shape": json.dumps([int(s) for s in input_shape]),
        "producer": f"gpucnn {gpucnn.__version__}",
    }
    if mean is not None and std is not None:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        std = np.asarray(std, dtype=np.float64).reshape(-1)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ExportError(f"export_onnx: mean and std must have {channels} values (one per channel), "
                              f"got {mean.shape} and {std.shape}")
        meta["mean"] = json.dumps(mean.tolist())
        meta["std"] = json.dumps(std.tolist())
        meta["normalization"] = "images = (pixels / 255 - mean) / std per channel (pixels uint8 0..255)"
    return meta


def build_onnx(model, input_shape, classes, mean=None, std=None, opset: int = 17):
    """The ``onnx.ModelProto`` of ``model`` (a Sequential) for per-sample ``input_shape`` (C, H, W)."""
    onnx, helper, _ = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset: expected an int from {MIN_OPSET} to {newest} (this onnx package), got {opset!r}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ExportError(f"export_onnx: input_shape must be (C, H, W), got {input_shape!r}")
    out_shape = shape
    for i, layer in enumerate(model.layers):
        try:
            out_shape = tuple(layer.output_shape(out_shape))
        except ValueError as exc:
            raise ExportError(f"export_onnx: layer {i} does not take the input shape {shape}: {exc}") from None
    classes = [str(c) for c in classes]
    if out_shape != (len(classes),):
        raise ExportError(f"export_onnx: the model gives per-sample output {out_shape}, but {len(classes)} "
                          f"class names were given; expected ({len(classes)},)")
    g = OnnxGraph(opset)
    y = g.chain(model.layers, INPUT_NAME)
    g.nodes.append(helper.make_node("Identity", [y], [OUTPUT_NAME], name="output"))
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "gpucnn",
        [helper.make_tensor_value_info(INPUT_NAME, f32, ["batch", *shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, f32, ["batch", len(classes)])],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="gpucnn",
                              ir_version=helper.find_min_ir_version_for(opsets))
    proto.doc_string = ("gpucnn model in evaluation mode: images float32 (batch, C, H, W) normalized as the "
                        "metadata says -> logits (batch, K); softmax gives class probabilities")
    helper.set_model_props(proto, _metadata(classes, shape, mean, std))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, input_shape, classes, mean=None, std=None, opset: int = 17):
    """Write ``model`` as ONNX to ``path`` atomically; returns the ``onnx.ModelProto``.

    input_shape: per-sample (C, H, W); classes: K names by label; mean, std: (C,) training
    normalization in [0, 1] units (stored in the metadata). ExportError for a layer with
    no conversion (naming its index and class) or an opset outside what onnx supports.
    """
    proto = build_onnx(model, input_shape, classes, mean, std, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return proto


def check_with_onnxruntime(path, trained, images: int = 4, seed: int = 0) -> float | None:
    """Max |logits difference| between onnxruntime on ``path`` and ``trained``'s model, or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    rng = np.random.default_rng(seed)
    x = rng.random((images, *trained.input_shape), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: trained.normalize(x)})[0]
    return float(np.max(np.abs(got - trained.predict_logits(x))))


def export_command(checkpoint, output=None, opset: int = 17, echo: Callable[[str], None] = print) -> Path:
    """Body of ``gpucnn export CHECKPOINT [--output FILE.onnx] [--opset 17]``; returns the path written.

    ``output`` None: the checkpoint's path with ``.onnx``. Checks the file with onnxruntime
    when it is installed and says how close it came.
    """
    from gpucnn.predict import load

    trained = load(checkpoint, device="numpy")  # export reads host params; no device needed
    output = Path(output) if output is not None else Path(checkpoint).with_suffix(".onnx")
    proto = export_onnx(trained.model, output, trained.input_shape, trained.classes, trained.mean, trained.std,
                        opset)
    size = output.stat().st_size
    echo(f"wrote {output} ({size / 1e6:.2f} MB, opset {opset}, {len(proto.graph.node)} nodes): "
         f"input '{INPUT_NAME}' float32 (batch, {', '.join(map(str, trained.input_shape))}) normalized, "
         f"output '{OUTPUT_NAME}' (batch, {trained.num_classes}); classes, mean and std in its metadata")
    diff = check_with_onnxruntime(output, trained)
    if diff is None:
        echo('not checked: onnxruntime is not installed (pip install "gpucnn[onnx]")')
    else:
        echo(f"onnxruntime agrees with gpucnn: max |logit difference| {diff:.2e} on 4 random images")
    return output
