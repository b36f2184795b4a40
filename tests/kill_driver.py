"""Run ``gpucnn train`` and SIGKILL it at one planted point of its writes (used by test_kill_points.py).

    python tests/kill_driver.py WHEN:FILE:NTH [gpucnn train options...]

FILE is ``last.npz``, ``best.npz`` or ``metrics.jsonl``; NTH counts the writes of that file in
this process (1 = the first). WHEN is
  ``during``  half of the file's bytes are in its temporary file when the process dies
              (inside ``np.savez`` for checkpoints, inside ``MetricsLog.write`` for metrics);
  ``before``  the temporary file is complete, the rename into place has not happened;
  ``after``   the rename has happened, nothing after it (e.g. last.npz is new, metrics.jsonl not yet).
The process kills itself with SIGKILL, so no handler, ``finally`` or atexit runs: what is on
disk is what a ``kill -9`` at that instant leaves. It exits 0 only when the point was never reached.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    when, target, nth = sys.argv[1].split(":")
    nth = int(nth)
    assert when in ("during", "before", "after") and target in ("last.npz", "best.npz", "metrics.jsonl")
    seen = {"count": 0}

    def is_hit(path) -> bool:
        seen["count"] += 1
        return seen["count"] == nth

    def written_name(path) -> str:
        """The run file a temp path (".last.npz.XXXX.tmp") or destination stands for."""
        name = Path(path).name
        for run_file in ("last.npz", "best.npz", "metrics.jsonl"):
            if name == run_file or name.startswith(f".{run_file}."):
                return run_file
        return name

    import numpy as np

    from gpucnn.metrics import MetricsLog, jsonl_text

    if when == "during" and target.endswith(".npz"):
        real_savez = np.savez

        def savez(file, *args, **kwargs):
            if written_name(file.name) == target and is_hit(file.name):
                buffer = io.BytesIO()
                real_savez(buffer, *args, **kwargs)
                data = buffer.getvalue()
                file.write(data[: len(data) // 2])
                file.flush()
                os.fsync(file.fileno())
                die()
            return real_savez(file, *args, **kwargs)

        np.savez = savez
    elif when == "during":
        real_write = MetricsLog.write

        def write(self):
            if is_hit(self.path):
                from gpucnn.atomic import atomic_open

                text = jsonl_text(self.records)
                with atomic_open(self.path, "w", encoding="utf-8") as handle:
                    handle.write(text[: len(text) // 2])
                    handle.flush()
                    die()
            return real_write(self)

        MetricsLog.write = write
    else:
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            hit = written_name(dst) == target and is_hit(dst)
            if hit and when == "before":
                die()
            real_replace(src, dst, *args, **kwargs)
            if hit:
                die()

        os.replace = replace  # gpucnn.atomic renames through os.replace

    from gpucnn.cli import cli

    cli(["train", *sys.argv[2:]], prog_name="gpucnn")


if __name__ == "__main__":
    main()
