"""The ``gpucnn`` command: train, evaluate, info (and bench, from gpucnn.bench.command).

User errors (``GpucnnError``) print one line on stderr and exit 1, or 2 for a bad config
or option (``ConfigError``, click usage errors); Ctrl-C during training saves last.npz and
exits 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

import click
import numpy as np

import gpucnn
from gpucnn import backend as backend_module
from gpucnn.config import shipped_config_names
from gpucnn.data import DATASETS
from gpucnn.errors import ConfigError, GpucnnError
from gpucnn.precision import PRECISIONS

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; a run stopped by SIGTERM/SIGHUP exits 128 + that signal


@contextlib.contextmanager
def user_errors():
    """Turn user errors into one line on stderr and an exit code; no traceback."""
    from gpucnn.train import is_out_of_memory

    try:
        yield
    except ConfigError as exc:
        click.echo(f"gpucnn: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except GpucnnError as exc:
        click.echo(f"gpucnn: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("gpucnn: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:  # the machine said no: disk full, permissions, a vanished folder...
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"gpucnn: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        if is_out_of_memory(exc):
            what = "host" if isinstance(exc, MemoryError) else "device"
            click.echo(f"gpucnn: error: out of {what} memory ({type(exc).__name__}); try a smaller --batch-size",
                       err=True)
            sys.exit(EXIT_ERROR)
        raise


class _Group(click.Group):
    """The command group; ``bench`` is imported from gpucnn.bench.command only when used
    (it pulls in the benchmark machinery, which train/evaluate/info do not need)."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), "bench"})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name == "bench":
            from gpucnn.bench.command import bench

            command = bench
        return command


@click.group(name="gpucnn", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(gpucnn.__version__, prog_name="gpucnn")
def cli() -> None:
    """Train and evaluate convolutional networks on hand-written CUDA kernels (NumPy fallback)."""


def _device_option(f):
    return click.option("--device", type=click.Choice(backend_module.DEVICE_CHOICES, case_sensitive=False), default=None,
                        help="Compute backend: auto (cuda if usable, else numpy), cpu/numpy, cuda, emulated.")(f)


def _precision_option(f):
    return click.option("--precision", type=click.Choice(PRECISIONS, case_sensitive=False), default=None,
                        help="GEMM precision: auto (tf32 on GPUs with tensor cores, else fp32), fp32, tf32, "
                             "bf16 (training.precision; GPUCNN_PRECISION).")(f)


@cli.command()
@click.option("--config", "config_source", metavar="PATH|NAME", default=None,
              help=f"TOML config file, or the name of a shipped config ({', '.join(shipped_config_names())}). "
                   "Default: lenet5 (LeNet-5 on CIFAR-10).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where datasets are kept.")
@click.option("--dataset", type=click.Choice(DATASETS, case_sensitive=False), default=None,
              help="Dataset to train on (data.dataset); 'folder' reads --set data.path=DIR.")
@_device_option
@_precision_option
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs (training.epochs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size (data.batch_size).")
@click.option("--lr", type=float, default=None, help="Base learning rate (optimizer.lr).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None, help="Run seed (training.seed).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: runs/<config>-<time>, or the checkpoint's directory with --resume).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a checkpoint (its config is used; options and --set still apply).")
@click.option("--overwrite", is_flag=True,
              help="Allow --out to replace a run already there (or to resume from an older checkpoint of it).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key by dotted name, e.g. --set optimizer.lr=0.05 (value as a TOML literal).")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Data-parallel ranks to start on this machine (mpiexec of the mpi extra); "
                   "data.batch_size stays the global batch.")
def train(config_source, data_dir, dataset, device, precision, epochs, batch_size, lr, seed, out, resume, overwrite,
          overrides, nproc) -> None:
    """Train a model from a config; writes config.toml, metrics.jsonl, last.npz and best.npz to --out."""
    if nproc is not None and nproc > 1:
        from gpucnn.distributed.launcher import relaunch

        with user_errors():
            sys.exit(relaunch(nproc, click.get_current_context()))
    with user_errors():
        result = _train(config_source, data_dir, dataset, device, epochs, batch_size, lr, seed, out, resume,
                        overwrite, overrides, precision)
    if result.status == "interrupted":
        sys.exit(128 + result.signal if result.signal else EXIT_INTERRUPTED)


def _device(option: str | None, config: dict) -> str:
    """The backend to use: --device, else GPUCNN_BACKEND, else the config's training.device."""
    return option or os.environ.get(backend_module.ENV_VAR) or config["training"]["device"]


def _set_backend(device: str | None, precision: str | None, config: dict):
    """Make the run's backend current: --device/GPUCNN_BACKEND/config, in --precision/GPUCNN_PRECISION/config."""
    value, where = backend_module.choose_precision(precision, config["training"]["precision"])
    return backend_module.set_backend(_device(device, config), value, where)


def _device_line(backend) -> str:
    """The run's first line: device, backend and the resolved precision (and that auto chose it)."""
    chosen = " (auto)" if backend.requested_precision == "auto" else ""
    return f"device: {backend.device_name} ({backend.name} backend), precision: {backend.precision}{chosen}"


def _train(config_source, data_dir, dataset_name, device, epochs, batch_size, lr, seed, out, resume, overwrite,
           overrides, precision=None):
    from gpucnn.build import build_run
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.config import apply_overrides, load_config, validate_config
    from gpucnn.rundir import check_out_dir, prepare_out_dir
    from gpucnn.distributed import detect_world
    from gpucnn.train import Trainer

    world = detect_world()  # one rank of an mpiexec/srun job, or a world of one
    if not world.is_root:  # rank 0 alone prints; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    checkpoint = None
    if resume:
        if config_source:
            raise click.UsageError("--resume takes the config stored in the checkpoint; drop --config "
                                   "(use --set to change single keys)")
        checkpoint = load_checkpoint(resume)
        config = checkpoint.config
        stem = Path(resume).parent.name
    else:
        config = load_config(config_source)
        stem = Path(config_source).stem if config_source else "lenet5"
    options = {"data.data_dir": data_dir, "data.dataset": dataset_name, "training.device": device,
               "training.precision": precision, "training.epochs": epochs,
               "data.batch_size": batch_size, "optimizer.lr": lr, "training.seed": seed}
    config = apply_overrides(config, [f"{k}={_toml_literal(v)}" for k, v in options.items() if v is not None])
    config = validate_config(apply_overrides(config, list(overrides)))
    if checkpoint is not None and config["training"]["seed"] != checkpoint.seed:
        click.echo(f"gpucnn: note: seed changed from {checkpoint.seed} to {config['training']['seed']}; "
                   "the rest of the run will not match the original one", err=True)

    out_dir = Path(out) if out else (Path(resume).parent if resume else
                                     Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    # Before any data is loaded or backend started: never lose an earlier run, fail fast on a bad --out.
    if world.is_root:
        check_out_dir(out_dir, Path(resume) if resume else None, overwrite)
        prepare_out_dir(out_dir, clear=overwrite and not resume)
    backend = _set_backend(device, precision, config)
    dataset = _load_dataset(config)
    if dataset_name is not None and checkpoint is None:  # another dataset: the head follows its classes
        from gpucnn.build import fit_classifier

        config, note = fit_classifier(config, dataset.num_classes)
        if note:
            click.echo(f"note: {note}")
    trainer = Trainer(build_run(config, dataset, checkpoint, checkpoint_path=resume, world=world), out_dir,
                      echo=click.echo)
    click.echo(_device_line(backend))
    val = f" / {len(dataset.y_val)} validation" if dataset.x_val is not None else ""
    click.echo(f"data: {dataset.name}, {len(dataset.y_train)} train{val} / {len(dataset.y_test)} test images "
               f"{dataset.image_shape}, {len(trainer.train_loader)} batches of {config['data']['batch_size']}")
    click.echo(trainer.model.summary(dataset.image_shape))
    if checkpoint is not None:
        p = checkpoint.progress
        click.echo(f"resuming from {resume}: epoch {p.epoch} done, step {p.step_in_epoch} of the next")
        if p.epoch >= config["training"]["epochs"]:
            click.echo(f"note: the checkpoint has finished all {config['training']['epochs']} epochs; "
                       f"pass --epochs N (N > {p.epoch}) to train longer")
    click.echo(f"output: {out_dir}")
    result = trainer.fit()
    if result.status == "completed":
        best = f"{100 * result.best_acc:.2f}%" if result.best_acc >= 0 else "n/a"
        what = trainer.monitor.replace("val_acc", "validation accuracy").replace("train_acc", "training accuracy")
        click.echo(f"done: {result.epochs_done} epochs, best {what} {best} (best.npz); checkpoints in {out_dir}")
    return result


def _toml_literal(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _load_dataset(config: dict):
    from gpucnn.build import build_dataset

    return build_dataset(config, progress=sys.stderr.isatty(), echo=click.echo)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where datasets are kept.")
@_device_option
@_precision_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Evaluation batch size.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: average the prediction with the mirrored image.")
@click.option("--tta-level", type=click.IntRange(0, 2), default=None,
              help="TTA level: 0 none, 1 mirror (= --tta), 2 mirror + 1-pixel translations (airbench94).")
@click.option("--confusion", "confusion_path", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Also draw the confusion matrix with class names (needs matplotlib: gpucnn[plot]).")
def evaluate(checkpoint, data_dir, device, precision, batch_size, tta, tta_level, confusion_path) -> None:
    """Test loss, accuracy and per-class accuracy of a checkpoint (its config says model and data)."""
    tta = int(tta) if tta_level is None else tta_level
    with user_errors():
        _evaluate(checkpoint, data_dir, device, batch_size, tta, confusion_path, precision)


def _evaluate(path, data_dir, device, batch_size, tta, confusion_path=None, precision=None) -> None:
    from gpucnn.build import build_run
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.evaluate import evaluate_model
    from gpucnn.metrics import per_class_table

    ckpt = load_checkpoint(path)
    config = ckpt.config
    if data_dir is not None:
        config["data"]["data_dir"] = data_dir
    if tta and not config["data"]["augment"]["flip"]:
        raise ConfigError(f"--tta averages each image with its mirror, but {path} was trained without flips "
                          "(data.augment.flip = false), so mirrored images are new to it (mirrored digits "
                          "are different digits); evaluate without --tta")
    backend = _set_backend(device, precision, config)
    dataset = _load_dataset(config)
    run = build_run(config, dataset, ckpt, train=False, eval_batch_size=batch_size, checkpoint_path=path)
    start = time.perf_counter()
    result = evaluate_model(run.model, run.loss_fn, run.test_loader, dataset.num_classes, tta=tta)
    seconds = time.perf_counter() - start
    click.echo(f"checkpoint: {path} (epoch {ckpt.progress.epoch}), {_device_line(backend)}")
    click.echo(f"test loss {result.loss:.4f}  accuracy {100 * result.accuracy:.2f}%  "
               f"({len(dataset.y_test)} images{['', ', mirrored TTA', ', mirror+translate TTA'][int(tta)]}, {seconds:.1f}s)")
    click.echo(per_class_table(result.confusion, dataset.classes))
    if confusion_path:
        from gpucnn.plots import confusion_figure

        written = confusion_figure(result.confusion, dataset.classes, confusion_path,
                                   title=f"{Path(path).name}: test accuracy {100 * result.accuracy:.2f}%")
        click.echo(f"wrote {written}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout instead of the table.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@_device_option
def predict(checkpoint, images, top_k, as_json, batch_size, device) -> None:
    """Top-k classes of images (PNG/JPEG, or .npy/.npz arrays N,C,H,W or N,H,W,C) with a trained checkpoint."""
    with user_errors():
        from gpucnn.predict import predict_command

        predict_command(checkpoint, list(images), top_k, as_json, batch_size, device, click.echo)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="The .onnx file (default: the checkpoint's path with .onnx).")
@click.option("--opset", type=click.IntRange(min=13), default=17, show_default=True, help="ONNX opset.")
def export(checkpoint, output, opset) -> None:
    """Export a checkpoint's model to ONNX (needs gpucnn[onnx]); class names go into its metadata."""
    with user_errors():
        from gpucnn.export_onnx import export_command

        export_command(checkpoint, output, opset, click.echo)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="The PNG (default: RUN_DIR/curves.png for one run, runs.png for several).")
def plot(run_dirs, output) -> None:
    """Loss, accuracy and learning rate of one or several runs against epoch (needs gpucnn[plot])."""
    with user_errors():
        from gpucnn.plots import plot_command

        plot_command(list(run_dirs), output, click.echo)


@cli.command()
@click.option("--data", "show_data", is_flag=True, help="Also list the datasets downloaded or cached, and where.")
@click.option("--kernels", "show_kernels", is_flag=True,
              help="Also the per-kernel ptxas/SASS table: registers, spills, shared memory, HMMA/LDSM/LDGSTS, "
                   "occupancy on sm_80/sm_90 (needs NVRTC; about a minute).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where datasets are kept.")
def info(show_data, show_kernels, data_dir) -> None:
    """Versions, the backend auto would pick and why, GPU, and whether the kernels compile."""
    with user_errors():
        _info(show_data, show_kernels, data_dir)


def _info(show_data: bool, show_kernels: bool, data_dir) -> None:
    click.echo(f"gpucnn {gpucnn.__version__} ({Path(gpucnn.__file__).parent})")
    click.echo(f"python {platform.python_version()} ({sys.executable})")
    click.echo(f"numpy {np.__version__}")
    click.echo(f"cupy {_cupy_version()}")
    reason = backend_module.cuda_unavailable_reason()
    if reason is None:
        click.echo("backend (auto): cuda")
        try:
            cuda = backend_module.create_backend("cuda")
            free, total = cuda.xp.cuda.Device().mem_info
            click.echo(f"gpu: {cuda.device_name}, {total / 2**30:.1f} GiB memory ({free / 2**30:.1f} GiB free)")
        except Exception as exc:  # report, do not crash: info is the diagnosis tool
            click.echo(f"gpu: present but not usable: {exc}")
    else:
        click.echo(f"backend (auto): numpy, because {reason}")
        click.echo("gpu: none")
    click.echo(f"kernels: {_kernel_check()}")
    if show_kernels:
        from gpucnn.cuda import nvrtc_check, sass_report

        if nvrtc_check.load_nvrtc() is None:
            click.echo("kernel table: not made: libnvrtc not found (pip install nvidia-cuda-nvrtc)")
        else:
            click.echo(sass_report.format_kernel_table(sass_report.kernel_report()))
    if show_data:
        from gpucnn.data import cached_datasets

        rows = cached_datasets(data_dir)
        if not rows:
            click.echo("datasets: none downloaded or cached yet")
        for name, path, size, status in rows:
            click.echo(f"dataset {name:<14} {size / 2**20:9.1f} MiB  {status:<12} {path}")


def _cupy_version() -> str:
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"):
        try:
            return f"{importlib.metadata.version(dist)} ({dist})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _kernel_check() -> str:
    """Whether every kernels/*.cu compiles with NVRTC (gpucnn.cuda.nvrtc_check), in one line."""
    from gpucnn.cuda import nvrtc_check

    try:
        if nvrtc_check.load_nvrtc() is None:
            return "not checked: libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUCNN_NVRTC)"
        version = nvrtc_check.nvrtc_version()
        results = nvrtc_check.check_all()
    except Exception as exc:
        return f"compile check failed: {type(exc).__name__}: {exc}"
    files = sorted({r.file for r in results})
    archs = sorted({r.arch for r in results})
    failed = [r for r in results if not r.ok]
    where = f"NVRTC {version[0]}.{version[1]}" if version else "NVRTC"
    if not failed:
        return f"all {len(files)} kernel files compile with {where} for {', '.join(archs)}"
    first = failed[0]
    detail = first.log.strip().splitlines()[0] if first.log.strip() else "no log"
    return (f"{len(failed)} of {len(results)} compiles FAILED with {where}; first: {first.file} "
            f"({first.arch}): {detail}")


def main() -> None:
    cli(prog_name="gpucnn")


if __name__ == "__main__":
    main()
