"""How a run speaks to its user while it works: one line on standard error, flushed at once.

Every stage that takes a ``log`` callable (the sweep, the executors, the references, the check,
``--force``) says its lines through :func:`log_stderr` unless given another, so that progress
shows at once where standard error is a pipe or a file (a GPU job's log, ``2> run.log``) and
standard output keeps only the tables a user may pipe on; and how a number it prints next to
the bound it was judged against keeps its side of that bound (:func:`past_bound`).
"""

from __future__ import annotations

import sys


def log_stderr(message: str) -> None:
    """Print ``message`` on standard error and flush it."""
    print(message, file=sys.stderr, flush=True)


def past_bound(value: float, bound: float, kind: str = "g", digits: int = 2) -> str:
    """``value`` formatted as ``.{digits}{kind}`` (``g``, ``f`` or ``%``), with as many more
    digits as it takes to print it on its own side of ``bound``."""
    for more in range(8):
        text = f"{value:.{digits + more}{kind}}"
        shown = float(text.rstrip("%")) / (100 if kind == "%" else 1)
        # a failed share or ratio rounded onto its bound read as a pass: "1 n with < 95% of
        # fits stopped on tolerance (n=1000: 95%)", "Delta SSR / (nu p) = 2 ... above [0.5, 2.0]"
        if not (shown == bound or (shown > bound) != (value > bound)):
            return text
    return f"{value:.{digits}{kind}}"
