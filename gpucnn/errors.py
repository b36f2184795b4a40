"""Exceptions that carry a user-facing, one-line message.

The CLI prints ``str(error)`` for every ``GpucnnError`` on one line (no traceback) and
exits with code 2 for a ``ConfigError`` (a usage error, like a bad option) and 1 for the
rest; programming errors (everything else) keep their traceback.
"""


class GpucnnError(Exception):
    """Base class of every error gpucnn reports to a user in one line."""


class BackendUnavailable(GpucnnError):
    """The requested compute backend cannot run here (no CuPy, no device, old driver...)."""


class KernelCompileError(GpucnnError):
    """A kernels/*.cu file failed to compile; the message names the file and line."""


class ConfigError(GpucnnError):
    """A config key is unknown, mistyped or out of range; the message names the dotted key."""


class DataError(GpucnnError):
    """A dataset file is missing, corrupt, truncated or fails its checksum."""


class TrainingError(GpucnnError):
    """Training cannot go on (non-finite loss, out of device memory, ...)."""
