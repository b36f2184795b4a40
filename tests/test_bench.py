"""`gpucnn bench`: shape syntax, timing statistics, the correctness gate, peers, JSON schema."""

from __future__ import annotations

import importlib
import json
import types

import numpy as np
import pytest
from click.testing import CliRunner

from gpucnn import backend as backend_module
from gpucnn.bench import cases, gate, report, shapes, timing, torch_peers
from gpucnn.bench.command import bench
from gpucnn.ops import OP_FAMILIES, numpy_ops

TINY_SHAPES = [
    "conv:N=3,C=2,H=7,W=6,O=3,K=3,S=2,P=1",
    "pool:N=2,C=2,H=5,W=5,K=3,S=2,P=1",
    "act:N=2,C=2,H=3,W=3",
    "bn:N=3,C=2,H=3,W=3",
    "dense:N=3,I=5,O=4",
    "loss:N=4,K=5",
    "sgd:P=37",
]


def _run(args, **kwargs):
    return CliRunner().invoke(bench, args, catch_exceptions=False, **kwargs)


def _shape_args(texts=TINY_SHAPES):
    return [a for text in texts for a in ("--shape", text)]


def _kernel_ops_import_error() -> str | None:
    try:
        importlib.import_module("gpucnn.ops.kernel_ops")
        importlib.import_module("gpucnn.cuda.emulator")
    except ImportError as exc:
        return str(exc)
    return None


# Shapes ------------------------------------------------------------------------------------
def test_parse_shape_reads_keys_and_defaults():
    s = shapes.parse_shape("conv:n=128,C=64,H=32,W=32,O=128,K=3,P=1")
    assert s.family == "conv"
    assert s.params == {"N": 128, "C": 64, "H": 32, "W": 32, "O": 128, "K": 3, "S": 1, "P": 1}
    assert s.label == "conv:N=128,C=64,H=32,W=32,O=128,K=3,S=1,P=1"
    assert s.out_hw() == (32, 32)
    pool = shapes.parse_shape("pool:N=2,C=3,H=9,W=8,K=3")
    assert (pool.params["S"], pool.params["P"]) == (3, 0)
    assert pool.out_hw() == (3, 2)
    assert shapes.parse_shape("conv:N=1,C=1,H=7,W=7,O=1,K=3,S=2,P=1").out_hw() == (4, 4)
    assert s.with_batch(8).params["N"] == 8 and s.params["N"] == 128


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("conv", "FAMILY:KEY=INT"),
        ("pooling:N=1", "FAMILY one of"),
        ("conv:N=1,C=1,H=4,W=4,O=1,Q=3", "unknown item 'Q=3'"),
        ("conv:N=1,C=1,H=4,W=4,O=1", "missing K"),
        ("dense:N=two,I=3,O=3", "N must be an integer"),
        ("act:N=0,C=1,H=1,W=1", "N must be >= 1"),
        ("conv:N=1,C=1,H=4,W=4,O=1,K=7", "larger than the padded input"),
        ("pool:N=1,C=1,H=4,W=4,K=2,P=2", "at most K/2"),
    ],
)
def test_parse_shape_rejects_bad_specs(text, fragment):
    with pytest.raises(ValueError, match="--shape") as info:
        shapes.parse_shape(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize("set_name", sorted(shapes.NAMED_SETS))
def test_named_sets_are_the_layer_shapes_a_forward_pass_of_the_shipped_config_sees(set_name):
    """Each set is read off its config's model: check it against the inputs a real forward pass feeds
    every conv, pool, batchnorm and dense layer (an independent derivation from output_shape)."""
    from gpucnn import layers as L

    model = shapes.set_model(set_name)
    seen = {}
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    for index, layer in enumerate(model.layers):
        seen[index] = x.shape
        x = layer.forward(x, training=False)
    got = shapes.named_set(set_name, (4,))
    labels = {s.label for s in got}
    for index, layer in enumerate(model.layers):
        _, c, *hw = seen[index]
        if isinstance(layer, L.Conv2D):
            want = (f"conv:N=4,C={c},H={hw[0]},W={hw[1]},O={layer.out_channels},K={layer.kernel_size[0]},"
                    f"S={layer.stride[0]},P={layer.padding[0]}")
        elif isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
            want = f"pool:N=4,C={c},H={hw[0]},W={hw[1]},K={layer.kernel_size[0]},S={layer.stride[0]},P={layer.padding[0]}"
        elif isinstance(layer, L.BatchNorm2D):
            want = f"bn:N=4,C={c},H={hw[0]},W={hw[1]}"
        elif isinstance(layer, L.Dense):
            want = f"dense:N=4,I={c},O={layer.out_features}"
        else:
            continue
        assert want in labels, (set_name, index, want)
    assert len(labels) == len(got)  # no shape twice
    sgd = [s for s in got if s.family == "sgd"]
    assert len(sgd) == 1 and sgd[0].params["P"] == model.num_params()
    assert [s for s in got if s.family == "loss"][0].params["K"] == x.shape[1] == 10


def test_named_set_sizes_follow_the_configs():
    vgg = shapes.named_set("vgg", (128,))
    # configs/cifar10-vgg.toml: widths 32-64-128 (not the 64-256 VGG of older benchmark sets)
    assert {s.params["O"] for s in vgg if s.family == "conv"} == {32, 64, 128}
    assert [s.params["P"] for s in vgg if s.family == "sgd"] == [814570]
    assert {s.params["N"] for s in shapes.named_set("lenet") if s.family == "conv"} == {128, 512}
    with pytest.raises(ValueError, match="unknown shape set 'resnet'"):
        shapes.named_set("resnet")


def test_conv_case_counts_flops_and_reduction():
    shape = shapes.parse_shape("conv:N=2,C=3,H=8,W=8,O=4,K=3,S=1,P=0")
    case = cases.build_case("conv2d_forward", shape, np.random.default_rng(0))
    assert case.flops == 2 * 2 * 4 * 3 * 3 * 3 * 6 * 6
    assert case.reduction == 27
    bwd = cases.build_case("conv2d_backward_filter", shape, np.random.default_rng(0))
    assert bwd.flops == case.flops and bwd.reduction == 2 * 6 * 6
    assert cases.build_case("conv2d_backward_bias", shape, np.random.default_rng(0)).flops is None


# Timing ------------------------------------------------------------------------------------
class _FakeClock(timing.Clock):
    """Each call 'takes' the next duration of a list (ms)."""

    name = "fake"

    def __init__(self, per_call_ms):
        self.per_call_ms = list(per_call_ms)
        self.calls = 0

    def sample(self, fn, inner):
        total = 0.0
        for _ in range(inner):
            fn()
            total += self.per_call_ms[min(self.calls, len(self.per_call_ms) - 1)]
            self.calls += 1
        return total


def test_summarize_gives_median_quartiles_and_range():
    t = timing.summarize([4.0, 1.0, 3.0, 2.0, 5.0], inner=1, clock="x")
    assert (t.median_ms, t.q1_ms, t.q3_ms, t.min_ms, t.max_ms) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert t.iqr_ms == 2.0 and t.repeats == 5


def test_measure_warms_up_and_batches_short_calls():
    calls = []
    clock = _FakeClock([0.1])
    t = timing.measure(lambda: calls.append(1), clock, repeats=4, warmup=3, min_sample_ms=1.0)
    assert t.inner == 10  # 1 ms / 0.1 ms per call
    assert t.median_ms == pytest.approx(0.1)
    assert len(calls) == 3 + 1 + 4 * 10  # warm-up, probe, samples
    slow = timing.measure(lambda: None, _FakeClock([5.0, 5.0, 7.0, 6.0]), repeats=3, warmup=0)
    assert (slow.inner, slow.median_ms, slow.min_ms, slow.max_ms) == (1, 6.0, 5.0, 7.0)  # probe took the first 5.0
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        timing.measure(lambda: None, clock, repeats=0, warmup=0)


# Correctness gate --------------------------------------------------------------------------
def _numpy_backend_with(**overrides):
    """A numpy backend whose ops are numpy_ops except the given (wrong) functions."""
    ops = types.SimpleNamespace(**{name: getattr(numpy_ops, name) for name in dir(numpy_ops)
                                   if not name.startswith("_")})
    for name, fn in overrides.items():
        setattr(ops, name, fn)
    return backend_module.Backend("numpy", np, ops, "CPU (NumPy, patched)")


def test_gate_passes_float32_numpy_on_every_family():
    b = backend_module.create_backend("numpy")
    for text in TINY_SHAPES:
        shape = shapes.parse_shape(text)
        for op in OP_FAMILIES[shape.family]:
            result = gate.check_op(op, shape, b, gate_batch=2)
            assert 0.0 <= result.max_rel_err <= result.tol, (op, result)


def test_gate_rejects_a_slightly_wrong_conv():
    def off_by_a_bit(x, w, b, stride, padding):
        y = numpy_ops.conv2d_forward(x, w, b, stride, padding)
        y.flat[0] += 1e-2 * np.abs(y).max()
        return y

    b = _numpy_backend_with(conv2d_forward=off_by_a_bit)
    shape = shapes.parse_shape("conv:N=4,C=3,H=6,W=6,O=2,K=3,P=1")
    with pytest.raises(gate.BenchCheckError) as info:
        gate.check_op("conv2d_forward", shape, b, gate_batch=2)
    message = str(info.value)
    assert "conv2d_forward on conv:N=4,C=3,H=6,W=6,O=2,K=3,S=1,P=1" in message
    assert "checked at N=2" in message and "max relative error 0.01" in message
    assert "\n" not in message


def test_gate_rejects_a_wrong_argmax_and_a_wrong_in_place_update():
    def first_in_window(x, kernel, stride, padding):
        y, argmax = numpy_ops.maxpool2d_forward(x, kernel, stride, padding)
        return y, argmax + 1

    b = _numpy_backend_with(maxpool2d_forward=first_in_window)
    with pytest.raises(gate.BenchCheckError, match="maxpool2d_forward .* output 1"):
        gate.check_op("maxpool2d_forward", shapes.parse_shape("pool:N=1,C=1,H=4,W=4,K=2"), b, 8)

    def forgets_weight_decay(param, grad, velocity, lr, momentum, nesterov, weight_decay):
        numpy_ops.sgd_update(param, grad, velocity, lr, momentum, nesterov, 0.0)

    b = _numpy_backend_with(sgd_update=forgets_weight_decay)
    with pytest.raises(gate.BenchCheckError, match="sgd_update on sgd:P=50"):
        gate.check_op("sgd_update", shapes.parse_shape("sgd:P=50"), b, 8)


def test_tolerance_grows_with_the_reduction_length():
    assert gate.tolerance(1) == gate.tolerance(64) == pytest.approx(1e-4)
    assert gate.tolerance(64 * 100) == pytest.approx(1e-3)


def test_cli_aborts_in_one_line_on_a_wrong_kernel(monkeypatch):
    def wrong(dy, w, x_shape, stride, padding):
        return -numpy_ops.conv2d_backward_data(dy, w, x_shape, stride, padding)

    monkeypatch.setattr(backend_module, "_make_numpy", lambda: _numpy_backend_with(conv2d_backward_data=wrong))
    result = CliRunner().invoke(bench, ["--device", "numpy", "--shape", "conv:N=2,C=2,H=5,W=5,O=2,K=3",
                                        "--repeats", "1", "--warmup", "0", "--no-peers", "--sgemm-size", "32", "-q"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("gpucnn: error: bench check failed: conv2d_backward_data")
    assert "conv:N=2,C=2,H=5,W=5,O=2,K=3,S=1,P=0" in lines[-1] and "max relative error 2" in lines[-1]


# PyTorch peers compute the same op ---------------------------------------------------------
@pytest.mark.parametrize("text", TINY_SHAPES)
def test_torch_peers_agree_with_numpy(text):
    torch = pytest.importorskip("torch")
    shape = shapes.parse_shape(text)
    for op in OP_FAMILIES[shape.family]:
        if op in ("dropout_forward",):  # torch draws its own mask
            continue
        case = cases.build_case(op, shape, np.random.default_rng(3))
        peer = torch_peers.make_peer(case, torch, "cpu")
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
        ours = cases.output_arrays(getattr(numpy_ops, op)(*args), args, case)
        if case.inplace:
            continue  # sgd_update: test_torch_sgd_peer_matches_numpy
        theirs = peer()
        theirs = list(theirs) if isinstance(theirs, (tuple, list)) else [theirs]
        if op == "maxpool2d_forward":
            np.testing.assert_array_equal(theirs[1].numpy(), ours[1])
        if op == "batchnorm2d_forward":  # native_batch_norm returns (y, mean, invstd)
            ours = ours[:3]
        for mine, other in zip(ours, theirs):
            np.testing.assert_allclose(np.asarray(other.detach().numpy(), np.float64), mine, rtol=2e-4,
                                       atol=2e-5, err_msg=op)


def test_torch_sgd_peer_matches_numpy():
    torch = pytest.importorskip("torch")
    case = cases.build_case("sgd_update", shapes.parse_shape("sgd:P=20"), np.random.default_rng(0))
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    numpy_ops.sgd_update(*args)
    peer_args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    # On the CPU the peer's tensors share memory with these arrays, so the update shows here.
    torch_peers.make_peer(cases.OpCase("sgd_update", case.shape, peer_args, None, 1, (0, 2)), torch, "cpu")()
    np.testing.assert_allclose(peer_args[0], args[0], rtol=1e-6)
    np.testing.assert_allclose(peer_args[2], args[2], rtol=1e-6)
    assert not np.allclose(peer_args[0], case.args[0])


# Whole runs --------------------------------------------------------------------------------
_KERNEL_RECORD_TYPES = {
    "op": str, "set": str, "layer": str, "family": str, "shape": str, "params": dict,
    "metric": str, "work": (int, float), "check": dict, "ours": dict, "peers": dict,
}
_TIMING_TYPES = {"median_ms": float, "q1_ms": float, "q3_ms": float, "min_ms": float, "max_ms": float,
                 "repeats": int, "inner": int, "clock": str}


def _check_timing(t):
    assert set(t) == set(_TIMING_TYPES)
    for key, kind in _TIMING_TYPES.items():
        assert isinstance(t[key], kind), key
    assert t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] <= t["max_ms"]
    assert t["median_ms"] > 0


def _check_result_schema(data, backend_name, expect_peers):
    assert data["schema"] == "gpucnn-bench/1"
    for key in ("timestamp", "command"):
        assert isinstance(data[key], str) and data[key]
    assert data["command"].startswith("gpucnn bench")
    assert data["device"]["backend"] == backend_name and isinstance(data["device"]["name"], str)
    assert isinstance(data["versions"]["gpucnn"], str) and isinstance(data["versions"]["numpy"], str)
    ref = data["reference"]
    assert ref["sgemm"]["gflops"] > 0 and ref["copy"]["gbps"] > 0
    _check_timing(ref["sgemm"]["timing"])
    assert isinstance(data["settings"], dict) and isinstance(data["peer_modes"], list)
    for record in data["kernels"]:
        for key, kind in _KERNEL_RECORD_TYPES.items():
            assert isinstance(record[key], kind), (key, record)
        assert record["variant"] is None or isinstance(record["variant"], str)
        assert record["metric"] in ("GFLOP/s", "GB/s")
        assert 0 <= record["check"]["max_rel_err"] <= record["check"]["tol"]
        ours = record["ours"]
        _check_timing(ours["timing"])
        assert ours["ms"] == ours["timing"]["median_ms"]
        scale = 1e6 * ours["ms"]
        assert ours["rate"] == pytest.approx(record["work"] / scale)
        reference = ref["sgemm"]["gflops"] if record["metric"] == "GFLOP/s" else ref["copy"]["gbps"]
        assert ours["frac_ref"] == pytest.approx(ours["rate"] / reference)
        assert set(record["peers"]) == set(expect_peers), record["op"]
        for entry in record["peers"].values():
            assert set(entry) == {"ms", "rate", "ratio", "timing", "error"}
            assert entry["error"] is None
            _check_timing(entry["timing"])
            assert entry["ratio"] == pytest.approx(ours["ms"] / entry["ms"])
        if record["family"] == "conv" and record["op"] != "conv2d_backward_bias":
            p = record["params"]
            oh = (p["H"] + 2 * p["P"] - p["K"]) // p["S"] + 1
            ow = (p["W"] + 2 * p["P"] - p["K"]) // p["S"] + 1
            assert record["work"] == 2 * p["N"] * p["O"] * p["C"] * p["K"] ** 2 * oh * ow


def test_numpy_run_writes_json_and_markdown(tmp_path):
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    result = _run(["--device", "numpy", *_shape_args(), "--repeats", "2", "--warmup", "1", "--sgemm-size", "64",
                   "--json", str(json_path), "--markdown", str(md_path), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    peers = ["torch-cpu"] if torch_peers.load_torch() is not None else []
    _check_result_schema(data, "numpy", peers)
    ops = {r["op"] for r in data["kernels"]}
    assert ops == {op for fam in OP_FAMILIES.values() for op in fam}
    assert data["train"] == []
    assert "conv2d_backward_filter" in result.output and "GFLOP/s" in result.output
    markdown = md_path.read_text()
    assert markdown.startswith("# gpucnn bench: CPU (NumPy)") and "| conv2d_forward |" in markdown
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_ops_filter_and_named_set(tmp_path):
    json_path = tmp_path / "r.json"
    result = _run(["--device", "cpu", "--set", "lenet", "--batches", "2", "--ops", "conv2d_f*,maxpool2d_backward",
                   "--repeats", "1", "--warmup", "0", "--no-peers", "--sgemm-size", "64", "--json", str(json_path),
                   "-q"])
    assert result.exit_code == 0, result.output
    records = json.loads(json_path.read_text())["kernels"]
    assert [(r["op"], r["layer"]) for r in records] == [
        ("conv2d_forward", "conv2d0"), ("maxpool2d_backward", "maxpool2d2"),
        ("conv2d_forward", "conv2d3"), ("maxpool2d_backward", "maxpool2d5")]
    assert all(r["set"] == "lenet" and r["params"]["N"] == 2 and r["peers"] == {} for r in records)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--ops", "conv3d_forward"], "--ops: 'conv3d_forward' matches no op"),
        (["--shape", "conv:N=1"], "--shape 'conv:N=1': missing"),
        (["--variant", "conv2d_forward"], "expected OP=VARIANT"),
        (["--set", "alexnet"], "unknown shape set 'alexnet'"),
        (["--train", "--train-models", "resnet"], "unknown model 'resnet'"),
        (["--batches", "0"], "expected positive integers"),
    ],
)
def test_bad_options_are_usage_errors(args, fragment):
    result = CliRunner().invoke(bench, ["--device", "numpy", *args])
    assert result.exit_code == 2
    assert fragment in result.output


def test_variant_on_numpy_is_a_clear_error():
    result = CliRunner().invoke(bench, ["--device", "numpy", "--shape", "sgd:P=8", "--variant",
                                        "conv2d_forward=direct", "--no-peers", "--sgemm-size", "32", "-q"])
    assert result.exit_code == 1
    assert result.output.strip() == ("gpucnn: error: --variant: the numpy backend has no kernel variants "
                                     "(use --device cuda or emulated)")


def test_plot_without_matplotlib_fails_before_timing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = CliRunner().invoke(bench, ["--device", "numpy", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 1
    assert result.output.strip() == "gpucnn: error: --plot needs matplotlib: pip install matplotlib (or gpucnn[plot])"
    assert not (tmp_path / "p.png").exists()


def test_json_to_a_missing_folder_fails_before_timing(tmp_path):
    result = CliRunner().invoke(bench, ["--device", "numpy", "--json", str(tmp_path / "nope" / "r.json")])
    assert result.exit_code == 1 and "folder" in result.output and "does not exist" in result.output


def test_train_bench_on_numpy(tmp_path):
    json_path = tmp_path / "t.json"
    result = _run(["--device", "numpy", "--train", "--train-models", "lenet5", "--train-batch", "4",
                   "--train-images", "8", "--repeats", "1", "--warmup", "0", "--sgemm-size", "32",
                   "--json", str(json_path), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert data["kernels"] == []
    ours = data["train"][0]
    assert (ours["model"], ours["batch"], ours["impl"], ours["params"]) == ("lenet5", 4, "ours (numpy)", 62006)
    assert ours["epoch"] == {"images": 8, "steps": 2, "seconds": ours["epoch"]["seconds"]}
    assert ours["images_per_s"] == pytest.approx(8 / ours["epoch"]["seconds"])
    _check_timing(ours["step"]["timing"])
    if torch_peers.load_torch() is not None:
        peer = data["train"][1]
        assert peer["impl"] == "torch-cpu"
        assert peer["ratio"] == pytest.approx(ours["epoch"]["seconds"] / peer["epoch"]["seconds"])
    assert "training" in result.output and "lenet5" in result.output


def test_torch_twin_matches_every_benchmarked_config():
    torch = pytest.importorskip("torch")
    from gpucnn.bench.train_bench import model_config, torch_twin
    from gpucnn.build import build_model

    for name in ("lenet5", "vgg", "cifar10-fast"):
        config, _ = model_config(name)
        twin = torch_twin(torch, config["model"]["layers"])
        with backend_module.use_backend("numpy"):
            ours = build_model(config, (3, 32, 32), 10, seed=0)
        assert sum(p.numel() for p in twin.parameters()) == ours.num_params(), name
        assert twin(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    report.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# Emulated backend (the CUDA kernels compiled for the CPU) ------------------------------------
def _skip_without_kernel_ops():
    reason = _kernel_ops_import_error()
    if reason:
        pytest.skip(f"gpucnn.ops.kernel_ops cannot be imported yet: {reason}")


def test_emulated_run_checks_and_times_every_op(tmp_path):
    _skip_without_kernel_ops()
    json_path = tmp_path / "e.json"
    small = ["conv:N=2,C=2,H=5,W=5,O=3,K=3,S=2,P=1", "pool:N=2,C=2,H=4,W=4,K=2", "act:N=1,C=2,H=3,W=3",
             "bn:N=2,C=2,H=3,W=3", "dense:N=2,I=5,O=3", "loss:N=3,K=4", "sgd:P=20"]
    result = _run(["--device", "emulated", *_shape_args(small), "--repeats", "1", "--warmup", "0",
                   "--sgemm-size", "32", "--json", str(json_path), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    peers = ["numpy"] + (["torch-cpu"] if torch_peers.load_torch() is not None else [])
    _check_result_schema(data, "emulated", peers)
    assert {r["op"] for r in data["kernels"]} == {op for fam in OP_FAMILIES.values() for op in fam}
    with backend_module.use_backend("emulated") as b:
        defaults = {op: names[0] for op, names in b.ops.variants.items()}
    for record in data["kernels"]:
        assert record["variant"] == defaults.get(record["op"]), record["op"]


def test_emulated_all_variants_side_by_side(tmp_path):
    _skip_without_kernel_ops()
    json_path = tmp_path / "v.json"
    result = _run(["--device", "emulated", "--shape", "conv:N=2,C=2,H=5,W=5,O=3,K=3,S=1,P=1", "--all-variants",
                   "--no-peers", "--repeats", "1", "--warmup", "0", "--sgemm-size", "32", "--json", str(json_path),
                   "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    _check_result_schema(data, "emulated", [])
    with backend_module.use_backend("emulated") as b:
        variants = b.ops.variants
    for op in OP_FAMILIES["conv"]:
        assert [r["variant"] for r in data["kernels"] if r["op"] == op] == list(variants[op]), op


def test_emulated_unknown_variant_is_a_clear_error():
    _skip_without_kernel_ops()
    result = CliRunner().invoke(bench, ["--device", "emulated", "--shape", "sgd:P=8", "--variant",
                                        "conv2d_forward=no-such-variant", "--no-peers", "--sgemm-size", "32", "-q"])
    assert result.exit_code == 1
    assert "--variant conv2d_forward=no-such-variant" in result.output


@pytest.mark.gpu
def test_cuda_run_on_a_tiny_shape(tmp_path, cuda_backend):
    json_path = tmp_path / "g.json"
    result = _run(["--device", "cuda", *_shape_args(TINY_SHAPES[:2]), "--all-variants", "--repeats", "2",
                   "--warmup", "1", "--sgemm-size", "256", "--json", str(json_path), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert data["device"]["backend"] == "cuda" and "cupy" in data["versions"]
    assert all(r["ours"]["timing"]["clock"] == "cuda-event" for r in data["kernels"])


def test_bench_train_times_the_optimizer_train_builds(numpy_backend):
    """bench --train assembles its run with build_run: same param groups as `gpucnn train`, and the
    torch twin gets each param's lr scale, weight decay and frozen flag from ours."""
    torch = pytest.importorskip("torch")
    from gpucnn.bench.train_bench import _ours_step, model_config, torch_param_groups, torch_twin

    config, _ = model_config("fast")
    _, run = _ours_step(numpy_backend, config, 4, 0)
    assert run.optimizer.groups and len(run.optimizer.groups) == len(config["optimizer"]["groups"])
    net = torch_twin(torch, config["model"]["layers"])
    groups = torch_param_groups(net, run.model, run.optimizer)
    trainable = [(layer, name) for _, layer, name in run.model.parameters() if layer.is_trainable(name)]
    assert len(groups) == len(trainable) == sum(p.requires_grad for p in net.parameters())
    base = run.optimizer.lr
    for group, (layer, name) in zip(groups, trainable):
        scale, wd = run.optimizer.param_settings(layer, name)
        assert group["lr"] == pytest.approx(base * scale) and group["weight_decay"] == wd
    bn_bias_lrs = [g["lr"] for g, (layer, name) in zip(groups, trainable) if type(layer).__name__ == "BatchNorm2D"]
    assert bn_bias_lrs and bn_bias_lrs == pytest.approx([64 * base] * len(bn_bias_lrs))  # 64x on BN biases


def test_bench_train_graph_step_is_the_trainers_capturable_step(emulated_backend):
    """The bench's CUDA-graph record times gpucnn.graph_step.CapturableStep (what training.cuda_graph
    trains with); on the emulated backend it runs eagerly and trains, and no record is made
    (graphs are a GPU's; timing the emulator's eager copy would mean nothing)."""
    from gpucnn.bench.train_bench import TrainSettings, _graph_step, _ours_step, _time_graph_step, model_config

    config, source = model_config("lenet5")
    _, run = _ours_step(emulated_backend, config, 4, 0)
    before = {key: np.array(value) for key, value in run.model.state_dict().items()}
    step, captured = _graph_step(emulated_backend, run, 4, 0)
    step()
    step()
    assert captured.graph.mode == "eager" and captured.graph.blockers == []  # nothing would block capture
    assert float(captured.sums.sums()[0]) > 0  # two batches' losses accumulated in place
    moved = [key for key, value in run.model.state_dict().items() if not np.array_equal(value, before[key])]
    assert moved
    settings = TrainSettings(models=["lenet5"], batches=[4])
    assert _time_graph_step(emulated_backend, run, "lenet5", source, 4, 0, settings, print) is None
