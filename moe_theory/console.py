"""How a run speaks to its user while it works: one line on standard error, flushed at once.

Every stage that takes a ``log`` callable (the sweep, the executors, the references, the check,
``--force``) says its lines through :func:`log_stderr` unless given another, so that progress
shows at once where standard error is a pipe or a file (a GPU job's log, ``2> run.log``) and
standard output keeps only the tables a user may pipe on.
"""

from __future__ import annotations

import sys


def log_stderr(message: str) -> None:
    """Print ``message`` on standard error and flush it."""
    print(message, file=sys.stderr, flush=True)
