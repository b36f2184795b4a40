"""One rank of the distributed tests (run under mpiexec by tests/test_distributed_mpi.py).

  core OUT            float64 LeNet-5 and a BatchNorm model (sync_batchnorm) trained by a hand
                      loop with DataParallel; writes OUT/core-rank{r}.npz
  trainer OUT [opts]  the Trainer on a small digits subset (build_run(world=...)); options:
                      --resume CKPT, --stop-at STEP, --kill-rank R --kill-at STEP [--kill-signal
                      KILL|TERM], --sync-bn
The same functions build the single-process references in the tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucnn import layers as L  # noqa: E402
from gpucnn.backend import use_backend  # noqa: E402
from gpucnn.losses import SoftmaxCrossEntropy  # noqa: E402
from gpucnn.model import Sequential  # noqa: E402
from gpucnn.optim import SGD  # noqa: E402

F64 = np.float64
# (samples, global batch): uneven slices for 2 and 3 ranks, a smaller last batch, and for
# LeNet-5 a last batch of 2 that leaves the third rank empty.
CORE = {"lenet5": (23, 7), "bn": (24, 7)}
CORE_EPOCHS = 2


def lenet5(seed: int = 1) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential([
        L.Conv2D(3, 6, 5, dtype=F64, rng=rng), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(6, 16, 5, dtype=F64, rng=rng), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
        L.Dense(400, 120, dtype=F64, rng=rng), L.ReLU(), L.Dense(120, 84, dtype=F64, rng=rng), L.ReLU(),
        L.Dense(84, 10, dtype=F64, rng=rng),
    ])


def bn_model(seed: int = 2) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential([
        L.Conv2D(3, 4, 3, padding=1, dtype=F64, rng=rng), L.BatchNorm2D(4, dtype=F64), L.ReLU(), L.MaxPool2D(4),
        L.Conv2D(4, 6, 3, padding=1, dtype=F64, rng=rng), L.BatchNorm2D(6, dtype=F64), L.ReLU(), L.Flatten(),
        L.Dense(6 * 8 * 8, 10, dtype=F64, rng=rng),
    ])


def core_data(n: int):
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 3, 32, 32)), rng.integers(0, 10, n).astype(np.int32)


def core_train(name: str, world=None):
    """Train ``name`` for CORE_EPOCHS; the model's state_dict. ``world`` None: plain single process."""
    from gpucnn.distributed import DataParallel, shard_slice

    n, batch = CORE[name]
    x, y = core_data(n)
    model = lenet5() if name == "lenet5" else bn_model()
    opt = SGD(model, 0.05, momentum=0.9, weight_decay=1e-3)
    loss_fn = SoftmaxCrossEntropy()
    dp = None
    if world is not None:
        dp = DataParallel(world, model, model.backend, n, batch, sync_batchnorm=(name == "bn"))
    for epoch in range(CORE_EPOCHS):
        order = np.random.default_rng([3, epoch]).permutation(n)
        for step in range(-(-n // batch)):
            part = slice(step * batch, min(n, (step + 1) * batch))
            if dp is not None:
                part = shard_slice(part, world.rank, world.size)
            idx = order[part]
            if dp is not None and dp.begin_step(step, len(idx)) == 0.0:
                dp.skip_step()
                opt.step()
                continue
            logits = model.forward(x[idx], training=True)
            loss_fn.forward(logits, y[idx])
            if dp is None:
                model.backward(loss_fn.backward(), input_grad=False)
            else:
                dp.backward(loss_fn.backward())
            opt.step()
    return model.state_dict()


def small_digits(train: int = 96, test: int = 50):
    from gpucnn.data import load_dataset
    from gpucnn.data.dataset import Dataset

    d = load_dataset("digits")
    return Dataset("digits", d.x_train[:train], d.y_train[:train], d.x_test[:test], d.y_test[:test], d.classes)


TRAINER_OVERRIDES = [
    "training.epochs=2", "data.batch_size=20", "data.eval_batch_size=16", "training.log_every=2",
    "data.augment.flip=true", "data.augment.crop_padding=2", "optimizer.nesterov=true",
    "schedule.warmup_epochs=0.5",
]
BN_LAYERS = ("model.layers=[{type = \"avgpool2d\", kernel_size = 4}, {type = \"conv2d\", out_channels = 8, "
             "kernel_size = 3, padding = 1}, {type = \"batchnorm2d\"}, {type = \"relu\"}, {type = \"flatten\"}, "
             "{type = \"dense\", out_features = 10}]")


def trainer_config(sync_bn: bool = False):
    from gpucnn.config import apply_overrides, load_config, validate_config

    overrides = TRAINER_OVERRIDES + ([BN_LAYERS] if sync_bn else [])
    config = validate_config(apply_overrides(load_config("digits"), overrides))
    if sync_bn:
        config["model"]["sync_batchnorm"] = True
    return config


def run_trainer(out, world=None, resume=None, stop_at=None, kill=None, sync_bn=False):
    from gpucnn.build import build_run
    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.train import Trainer

    checkpoint = load_checkpoint(resume) if resume else None
    config = checkpoint.config if checkpoint is not None else trainer_config(sync_bn)

    def on_step(trainer):
        step = trainer.progress.global_step
        if kill is not None and world is not None and world.rank == kill[0] and step == kill[1]:
            os.kill(os.getpid(), kill[2])
        if stop_at is not None and step == stop_at:
            trainer.request_stop()

    run = build_run(config, small_digits(), checkpoint, world=world)
    trainer = Trainer(run, out, echo=lambda line: None, progress_bar=False, on_step=on_step)
    return trainer, trainer.fit()


def main(argv=None) -> int:
    from gpucnn.distributed import detect_world

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("core", "trainer"))
    parser.add_argument("out")
    parser.add_argument("--resume")
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-signal", choices=("KILL", "TERM"), default="KILL")
    parser.add_argument("--sync-bn", action="store_true")
    args = parser.parse_args(argv)
    world = detect_world()
    out = Path(args.out)
    with use_backend("numpy"):
        if args.mode == "core":
            out.mkdir(parents=True, exist_ok=True)
            states = {f"{name}/{k}": v for name in CORE for k, v in core_train(name, world).items()}
            np.savez(out / f"core-rank{world.rank}.npz", **states)
            return 0
        kill = None
        if args.kill_at is not None:
            kill = (args.kill_rank, args.kill_at, getattr(signal, f"SIG{args.kill_signal}"))
        trainer, result = run_trainer(out, world, args.resume, args.stop_at, kill, args.sync_bn)
        np.savez(out / f"trainer-rank{world.rank}.npz", **trainer.model.state_dict())
        return 0 if result.status == "completed" else 3


if __name__ == "__main__":
    sys.exit(main())
