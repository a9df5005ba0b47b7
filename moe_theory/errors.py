"""The errors the command line turns into exit codes (docs/design.md#exit-codes).

Exit codes of ``moe-theory``:

- :data:`EXIT_OK` (0): success;
- :data:`EXIT_DIFFERENT` (1): ``moe-theory compare`` found values that are not the same (as
  ``cmp`` and ``diff`` say it);
- :data:`EXIT_BAD_INPUT` (2): bad input, a ``ValueError``: a config key, a flag, a file's
  content; the message names the field and the allowed values;
- :data:`EXIT_ENVIRONMENT` (3): the machine refused, a :class:`ResourceError` or an ``OSError``:
  a folder that is read-only or full, ``--out`` naming a file, no permission, a device that is not
  there; the message names the path or the device. Every finished shard is kept and no partial
  file is left under its final name, so a rerun after the cause is fixed finishes the sweep;
- :data:`EXIT_INTERRUPTED` (130): interrupted (Ctrl-C); finished shards are kept.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130


class ResourceError(Exception):
    """The file system or the device refused what a run needs (exit code 3)."""


class StorageError(ResourceError):
    """A path of the results store that cannot be written or read.

    ``args`` is ``(path, reason)`` so that the error survives pickling from a worker process.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DeviceError(ResourceError, ValueError):
    """A device that this machine does not have. Also a ``ValueError``: to a caller of the Python
    API it is a bad argument like any other."""
