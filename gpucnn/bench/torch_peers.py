"""PyTorch peers: the same op on the same data through PyTorch (cuDNN/cuBLAS on the GPU).

Importing torch is optional: ``load_torch()`` returns None when it is missing. Every GPU peer
runs with ``torch.backends.cudnn.benchmark = True`` (cuDNN times its algorithms per shape, as
our ``auto`` conv variant does), and every record names its math mode (``PeerMode.math_mode``):
on the GPU in fp32 ``torch-fp32`` (TF32 off for cuDNN and cuBLAS: exact fp32 like ours) and
``torch-default`` (PyTorch's own TF32 flags, whatever they were at import); in tf32
``torch-tf32`` (allow_tf32 on for both); in bf16 ``torch-bf16`` (autocast to bfloat16 with
channels-last tensors). The precision is ``backend.precision`` (fp32 when the backend has
none). Next to each, for the training benchmark only, a ``torch.compile`` peer in the same
math mode (``torch-compile-<precision>``); it is GPU only, and ``skipped_peer_modes`` says
why it does not run elsewhere. On CPU backends one peer, ``torch-cpu``. Every peer starts from
the op's host NumPy arguments.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from gpucnn.bench.cases import OpCase
from gpucnn.ops import ACTIVATIONS


def load_torch():
    """The torch module, or None when it is not installed or fails to import."""
    try:
        import torch
    except Exception:
        return None
    return torch


@dataclass
class PeerMode:
    """A labelled PyTorch configuration: device, TF32 flags (None: leave as found), bf16
    autocast with channels-last tensors (``bf16``), and ``torch.compile`` of the training twin
    (``compile``; the op peers never compile)."""

    name: str
    device: str
    tf32: bool | None
    bf16: bool = False
    compile: bool = False

    @property
    def math_mode(self) -> str:
        """What the GEMMs/convolutions compute in: fp32, tf32, bf16-autocast+channels-last, default."""
        if self.device != "cuda":
            return "fp32"
        if self.bf16:
            return "bf16-autocast+channels-last"
        if self.tf32 is None:
            return "default"
        return "tf32" if self.tf32 else "fp32"

    @contextlib.contextmanager
    def active(self, torch) -> Iterator[None]:
        """cudnn.benchmark on, this mode's TF32 flags and bf16 autocast, for one measurement."""
        if self.device != "cuda":
            yield
            return
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.benchmark)
        torch.backends.cudnn.benchmark = True
        if self.tf32 is not None:
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        try:
            with autocast:
                yield
        finally:
            (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark) = saved

    def describe(self, torch) -> dict:
        """The mode's label, math mode and the flags it runs with (for the JSON)."""
        info = {"name": self.name, "device": self.device, "math_mode": self.math_mode, "compile": self.compile}
        if self.device == "cuda":
            with self.active(torch):
                info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
                info["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
                info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
                info["autocast"] = "bf16" if self.bf16 else None
                info["channels_last"] = self.bf16
        else:
            info["threads"] = int(torch.get_num_threads())
        return info


def peer_modes(backend, torch, compile_peers: bool = True) -> list[PeerMode]:
    """Which torch peers run next to a backend: on a GPU backend (when torch sees a GPU) the ones
    of the backend's precision (plus their ``torch.compile`` twin), else the CPU one."""
    if torch is None:
        return []
    if backend.on_device:
        if not torch.cuda.is_available():
            return []
        precision = getattr(backend, "precision", "fp32")
        if precision == "tf32":
            modes = [PeerMode("torch-tf32", "cuda", True)]
        elif precision == "bf16":
            modes = [PeerMode("torch-bf16", "cuda", False, bf16=True)]
        else:
            modes = [PeerMode("torch-fp32", "cuda", False), PeerMode("torch-default", "cuda", None)]
        if compile_peers and hasattr(torch, "compile"):
            first = modes[0]
            modes.append(PeerMode(f"torch-compile-{precision}", "cuda", first.tf32, first.bf16, compile=True))
        return modes
    return [PeerMode("torch-cpu", "cpu", None)]


def skipped_peer_modes(backend, torch) -> list[dict]:
    """Peers that do not run here, each with its reason (recorded in the JSON)."""
    if torch is None:
        return [{"name": "torch", "reason": "torch is not importable"}]
    if not backend.on_device:
        return [{"name": "torch-compile", "reason": "GPU only: torch.compile (inductor) is timed next to the "
                                                    "cuda backend, not the CPU ones"}]
    if not torch.cuda.is_available():
        return [{"name": "torch (cuda)", "reason": "torch sees no CUDA device"}]
    if not hasattr(torch, "compile"):
        return [{"name": "torch-compile", "reason": f"torch {torch.__version__} has no torch.compile"}]
    return []


_ACTIVATION_NAMES = {a.name for a in ACTIVATIONS}
_ATEN_BACKWARD = {"relu": ("threshold_backward", (0,)), "softplus": ("softplus_backward", (1, 20))}


def _pair(v) -> list[int]:
    return list(v)


def make_peer(case: OpCase, torch, device: str, bf16: bool = False) -> Callable[[], object] | None:
    """A no-argument callable running ``case.op`` in torch on ``device``, or None if unsupported.

    ``bf16``: for the GEMM ops (the ones our bf16 mode rounds), float tensors become bfloat16
    and 4-d ones channels-last; every other op stays fp32, as it does in ours.
    """
    import torch.nn.functional as F

    from gpucnn.backend import PRECISION_OPS

    bf16 = bf16 and case.op in PRECISION_OPS

    aten = torch.ops.aten

    def t(a):
        if not isinstance(a, np.ndarray):
            return a
        tensor = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        if bf16 and tensor.is_floating_point():
            tensor = tensor.to(torch.bfloat16)
            if tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def t_long(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device)

    a = case.args
    op = case.op
    if op == "conv2d_forward":
        x, w, b, s, p = map(t, a)
        return lambda: F.conv2d(x, w, b, stride=s, padding=p)
    if op == "conv2d_backward_data":
        dy, w, x_shape, s, p = map(t, a)
        return lambda: torch.nn.grad.conv2d_input(x_shape, w, dy, stride=s, padding=p)
    if op == "conv2d_backward_filter":
        dy, x, w_shape, s, p = map(t, a)
        return lambda: torch.nn.grad.conv2d_weight(x, w_shape, dy, stride=s, padding=p)
    if op == "conv2d_backward_bias":
        dy = t(a[0])
        return lambda: dy.sum(dim=(0, 2, 3))
    if op == "maxpool2d_forward":
        x, k, s, p = map(t, a)
        return lambda: F.max_pool2d(x, k, s, p, return_indices=True)
    if op == "maxpool2d_backward":
        dy, argmax, x_shape = a
        k, s, p = (case.shape.params[key] for key in ("K", "S", "P"))
        dy_t, idx, x_t = t(dy), t_long(argmax), torch.empty(x_shape, device=device)
        return lambda: aten.max_pool2d_with_indices_backward(dy_t, x_t, [k, k], [s, s], [p, p], [1, 1], False, idx)
    if op == "avgpool2d_forward":
        x, k, s, p = map(t, a)
        return lambda: F.avg_pool2d(x, k, s, p, ceil_mode=False, count_include_pad=True)
    if op == "avgpool2d_backward":
        dy, x_shape, k, s, p = a
        dy_t, x_t = t(dy), torch.empty(x_shape, device=device)
        return lambda: aten.avg_pool2d_backward(dy_t, x_t, _pair(k), _pair(s), _pair(p), False, True, None)
    name, _, direction = op.rpartition("_")
    if name in _ACTIVATION_NAMES and direction == "forward":
        fn, x = getattr(F, name), t(a[0])  # torch.nn.functional has each activation under its op name
        return lambda: fn(x)
    if name in _ACTIVATION_NAMES and direction == "backward":
        dy, other = t(a[0]), t(a[1])
        # aten's backward of each activation, with its extra arguments (relu's is a threshold op)
        fn, extra = _ATEN_BACKWARD.get(name, (f"{name}_backward", ()))
        backward = getattr(aten, fn)
        return lambda: backward(dy, other, *extra)
    if op == "dropout_forward":
        x, p = t(a[0]), a[1]
        return lambda: F.dropout(x, p, training=True)
    if op == "dropout_backward":
        dy, mask = t(a[0]), t(a[1])
        return lambda: dy * mask
    if op == "dense_forward":
        x, w, b = map(t, a)
        return lambda: F.linear(x, w, b)
    if op == "dense_backward":
        dy, x, w = map(t, a)
        return lambda: (dy @ w, dy.t() @ x, dy.sum(0))
    if op == "softmax_cross_entropy_forward":
        logits, labels, eps = t(a[0]), t_long(a[1]), a[2]
        return lambda: (F.cross_entropy(logits, labels, label_smoothing=eps), torch.softmax(logits, 1))
    if op == "softmax_cross_entropy_backward":
        probs, labels, eps = t(a[0]), t_long(a[1]), a[2]
        n, k = probs.shape

        def sce_backward():
            target = F.one_hot(labels, k).to(probs.dtype) * (1 - eps) + eps / k
            return (probs - target) / n

        return sce_backward
    if op == "mse_forward":
        pred, target = t(a[0]), t(a[1])
        return lambda: F.mse_loss(pred, target)
    if op == "mse_backward":
        pred, target = t(a[0]), t(a[1])
        return lambda: (pred - target) * (2.0 / pred.numel())
    if op == "sgd_update":
        param, grad, velocity = t(a[0]), t(a[1]), t(a[2])
        lr, momentum, _, weight_decay = a[3:7]

        def sgd():  # torch.optim.SGD's single-tensor path
            g = grad.add(param, alpha=weight_decay)
            velocity.mul_(momentum).add_(g)
            param.add_(velocity, alpha=-lr)

        return sgd
    if op == "batchnorm2d_forward":
        x, gamma, beta, eps = map(t, a)
        return lambda: aten.native_batch_norm(x, gamma, beta, None, None, True, 0.1, eps)
    if op == "batchnorm2d_inference":
        x, gamma, beta, rm, rv, eps = map(t, a)
        return lambda: F.batch_norm(x, rm, rv, gamma, beta, training=False, eps=eps)
    if op == "batchnorm2d_backward":
        dy, x, gamma, mean, invstd = map(t, a)
        from gpucnn.bench.cases import BN_EPS

        return lambda: aten.native_batch_norm_backward(
            dy, x, gamma, None, None, mean, invstd, True, BN_EPS, [True, True, True]
        )
    return None


def torch_clock(torch, device: str):
    """The clock for a torch peer: torch CUDA events on the GPU, perf_counter on the CPU."""
    from gpucnn.bench.timing import Clock, TorchEventClock

    return TorchEventClock(torch) if device == "cuda" else Clock()


def torch_version_info(torch) -> dict:
    """torch version, and its CUDA/cuDNN versions when it has them."""
    if torch is None:
        return {}
    info = {"torch": torch.__version__}
    cuda = getattr(torch.version, "cuda", None)
    if cuda:
        info["torch_cuda"] = cuda
        with contextlib.suppress(Exception):
            info["cudnn"] = str(torch.backends.cudnn.version())
    return info
