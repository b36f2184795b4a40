"""``gpucnn bench``: per-op microbenchmarks and whole training steps, against NumPy/PyTorch.

Parses the options, makes the chosen backend current, runs the kernel and/or training
benchmarks, prints the table and writes the requested JSON/markdown/plot files.
User errors exit 2 (bad option) or 1 (a failed correctness check, an unwritable file...)
with one line on stderr.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from gpucnn.backend import DEVICE_CHOICES
from gpucnn.errors import GpucnnError
from gpucnn.precision import PRECISIONS


@contextmanager
def _one_line_errors():
    try:
        yield
    except GpucnnError as exc:
        click.echo(f"gpucnn: error: {exc}", err=True)
        sys.exit(1)


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(p) for p in _csv(text)]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values


def _command_argv() -> list[str]:
    """The command line of this run: sys.argv when it holds ``bench``, else rebuilt from the options."""
    if "bench" in sys.argv[1:]:
        return list(sys.argv)
    ctx = click.get_current_context()
    argv = ["gpucnn", "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value == param.default or value is None or value == () or not param.opts:
            continue
        flag = param.opts[0]
        if getattr(param, "is_flag", False):
            if value or param.secondary_opts:
                argv.append(flag if value else param.secondary_opts[0])
        elif isinstance(value, tuple):
            argv += [item for v in value for item in (flag, str(v))]
        else:
            argv += [flag, str(value)]
    return argv


@click.command(name="bench")
@click.option("--set", "sets", multiple=True, metavar="NAME",
              help="Named shape set, the layers of a shipped config: lenet (lenet5), vgg (cifar10-vgg), "
                   "fast (cifar10-fast); repeatable.")
@click.option("--shape", "shape_texts", multiple=True, metavar="SPEC",
              help="Custom shape, e.g. conv:N=128,C=64,H=32,W=32,O=128,K=3,S=1,P=1 (see benchmarks/README.md).")
@click.option("--batches", default="128,512", show_default=True, metavar="N,N",
              help="Batch sizes of the named sets.")
@click.option("--ops", "ops_text", default=None, metavar="LIST",
              help="Only these ops (comma-separated names or globs, e.g. 'conv2d_*,maxpool2d_forward').")
@click.option("--device", type=click.Choice(DEVICE_CHOICES, case_sensitive=False), default="auto", show_default=True,
              help="Backend to benchmark: auto, cpu/numpy, cuda/gpu, emulated.")
@click.option("--precision", type=click.Choice(PRECISIONS, case_sensitive=False), default=None,
              help="GEMM precision of ours (auto: tf32 on GPUs with tensor cores, else fp32; default "
                   "GPUCNN_PRECISION, else auto); the GPU's PyTorch peers run in the same one.")
@click.option("--repeats", type=click.IntRange(1), default=20, show_default=True, help="Timed samples per measurement.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed calls first.")
@click.option("--variant", "variant_texts", multiple=True, metavar="OP=NAME",
              help="Run OP with kernel variant NAME (cuda/emulated; repeatable).")
@click.option("--all-variants", is_flag=True, help="Time every kernel variant of each op side by side.")
@click.option("--gate-batch", type=click.IntRange(1), default=8, show_default=True,
              help="Batch size of the correctness check against NumPy (float64) before timing.")
@click.option("--peers/--no-peers", default=True, show_default=True, help="Time NumPy/PyTorch on the same data.")
@click.option("--sgemm-size", type=click.IntRange(16), default=None,
              help="Size of the reference SGEMM (default 8192 on cuda, 1024 on the CPU).")
@click.option("--train", is_flag=True, help="Also time whole training steps and an epoch (LeNet-5, VGG).")
@click.option("--train-models", default="lenet5,vgg", show_default=True, metavar="LIST",
              help="Models for --train: shipped config names (lenet5, cifar10-vgg, cifar10-fast, ...) or vgg/fast.")
@click.option("--train-batch", default="128", show_default=True, metavar="N,N", help="Batch sizes for --train.")
@click.option("--train-images", type=click.IntRange(1), default=50000, show_default=True,
              help="Images in one timed epoch for --train.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every figure as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write a markdown summary (for benchmarks/results/).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, metavar="PREFIX.png",
              help="One bar chart per op group, PREFIX-<group>.png: ours vs peers with the ratio on the bars "
                   "(needs matplotlib).")
@click.option("--allreduce", is_flag=True,
              help="Only all-reduce bandwidth over the shipped models' gradient sizes beside the ring bound "
                   "(run under mpiexec -n N for N ranks).")
@click.option("--link-gbps", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="Link bandwidth for --allreduce's ring bound (Gbit/s).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, only the final table.")
def bench(sets, shape_texts, batches, ops_text, device, precision, repeats, warmup, variant_texts, all_variants,
          gate_batch, peers, sgemm_size, train, train_models, train_batch, train_images, json_path, markdown_path, plot_path,
          allreduce, link_gbps, quiet) -> None:
    """Benchmark the ops (checked against NumPy first) and training steps against NumPy and PyTorch.

    Without --set/--shape/--train, runs the lenet set. With only --train, runs only the
    training benchmark.
    """
    if allreduce:
        from gpucnn.distributed.bench import main as allreduce_main

        with _one_line_errors():
            sys.exit(allreduce_main(["--link-gbps", str(link_gbps), "--repeats", str(repeats), "--device",
                                     "numpy" if device == "auto" else device]))
    from gpucnn.bench import shapes as shape_module
    from gpucnn.bench.kernels_bench import KernelBenchSettings, parse_variant_options, resolve_op_patterns
    from gpucnn.bench.train_bench import TrainSettings, model_config

    try:
        batch_sizes = _int_list(batches, "--batches")
        shape_list = [s for name in sets for s in shape_module.named_set(name, tuple(batch_sizes))]
        shape_list += [shape_module.parse_shape(text) for text in shape_texts]
        patterns = resolve_op_patterns(ops_text)
        variants = parse_variant_options(variant_texts)
        models = _csv(train_models)
        for name in models:
            model_config(name)  # an unknown name is a usage error before any timing
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not shape_list and not train:
        shape_list = shape_module.named_set("lenet", tuple(batch_sizes))
    kernel_settings = KernelBenchSettings(shape_list, patterns, repeats, warmup, gate_batch, peers, variants,
                                          all_variants) if shape_list else None
    train_settings = TrainSettings(models, _int_list(train_batch, "--train-batch"), train_images,
                                   repeats=max(1, min(repeats, 10)), warmup=max(1, min(warmup, 3)),
                                   peers=peers) if train else None
    log = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    with _one_line_errors():
        from gpucnn.bench.runner import run_bench

        result = run_bench(device, kernel_settings, train_settings, sgemm_size, log=log,
                           check_outputs=(json_path, markdown_path, plot_path), argv=_command_argv(),
                           precision=precision)
        from gpucnn.bench import report

        click.echo(report.render_text(result))
        if json_path:
            report.write_json(result, json_path)
            log(f"wrote {json_path}")
        if markdown_path:
            report.write_markdown(result, markdown_path)
            log(f"wrote {markdown_path}")
        if plot_path:
            from gpucnn.plots import bench_figures

            prefix = str(plot_path)[:-4] if str(plot_path).lower().endswith(".png") else str(plot_path)
            for written in bench_figures(result["kernels"], prefix, result["device"]["name"]):
                log(f"wrote {written}")
