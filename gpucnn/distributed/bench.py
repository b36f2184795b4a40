"""All-reduce bandwidth over the gradient sizes of the shipped models, beside the ring bound.

Ring all-reduce of S bytes over N ranks on links of bandwidth B (bytes/s) and latency a:
  t_ring = 2 (N - 1) / N * S / B + 2 (N - 1) a
(a reduce-scatter and an all-gather, each N-1 hops of S/N bytes). ``busbw = 2 (N-1)/N * S / t``
is the rate the links ran at (NCCL-tests' definition), comparable with B for any N.

  mpiexec -n 2 python -m gpucnn.distributed.bench [--link-gbps 100] [--repeats 20]
prints one line per model and message size; rank 0 prints. ``gradient_sizes()`` reads the
models from configs/ (the same ones ``gpucnn bench --train`` times).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def ring_seconds(nbytes: int, ranks: int, link_bytes_per_s: float, latency_s: float = 0.0) -> float:
    """The ring all-reduce bound of ``nbytes`` over ``ranks`` (0 for one rank)."""
    if ranks < 2:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / link_bytes_per_s + 2 * (ranks - 1) * latency_s


def gradient_sizes(dtype_bytes: int = 4) -> dict[str, int]:
    """Trainable gradient bytes per step of every shipped config's model (CIFAR-10 shaped input)."""
    from gpucnn.build import build_model
    from gpucnn.config import load_config, shipped_config_names, validate_config

    sizes = {}
    for name in shipped_config_names():
        config = validate_config(load_config(name))
        model = build_model(config, (3, 32, 32), 10)
        sizes[name] = dtype_bytes * model.num_trainable_params()  # nested blocks included
    return sizes


def allreduce_bench(comm, nbytes: int, xp=np, repeats: int = 20, dtype=np.float32) -> float:
    """Median seconds of one all-reduce of ``nbytes`` over ``comm`` (after one warm-up)."""
    buf = xp.ones(max(1, nbytes // np.dtype(dtype).itemsize), dtype=dtype)
    comm.allreduce(buf, "sum", "the all-reduce benchmark")
    times = []
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce(buf, "sum", "the all-reduce benchmark")
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def report(world, comm, link_gbps: float, repeats: int, xp=np) -> list[dict]:
    """One record per shipped model: bytes, measured seconds, busbw, and the ring bound at ``link_gbps``."""
    records = []
    for name, nbytes in gradient_sizes().items():
        seconds = allreduce_bench(comm, nbytes, xp, repeats)
        factor = 2 * (world.size - 1) / world.size if world.size > 1 else 0.0
        records.append({"model": name, "bytes": nbytes, "ranks": world.size, "seconds": seconds,
                        "busbw_GBps": factor * nbytes / seconds / 1e9 if seconds > 0 else None,
                        "ring_bound_seconds": ring_seconds(nbytes, world.size, link_gbps * 1e9 / 8)})
    return records


def main(argv=None) -> int:
    from gpucnn.backend import set_backend
    from gpucnn.distributed import bind_device, detect_world, make_communicator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link-gbps", type=float, default=100.0, help="link bandwidth for the ring bound (Gbit/s)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="numpy")
    args = parser.parse_args(argv)
    world = detect_world()
    backend = set_backend(args.device)
    bind_device(world, backend)
    _, comm = make_communicator(world, backend)
    records = report(world, comm, args.link_gbps, args.repeats, backend.xp)
    if world.is_root:
        print(f"all-reduce over {world.size} ranks ({backend.name}); ring bound at {args.link_gbps:g} Gbit/s")
        for r in records:
            bus = f"{r['busbw_GBps']:.2f} GB/s" if r["busbw_GBps"] else "-"
            print(f"{r['model']:<14} {r['bytes'] / 1e6:8.3f} MB  {1e3 * r['seconds']:8.3f} ms  busbw {bus:>11}  "
                  f"ring bound {1e3 * r['ring_bound_seconds']:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
