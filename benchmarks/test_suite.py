"""How long the test suite takes, as the README's test command runs it.

``python -m benchmarks test-suite [--save] [-- PYTEST_ARGS...]`` runs ``python -m pytest -q``
with the given arguments (default the README's, ``-n 2 --dist loadfile``) in a child process from
the repository root and records the wall time, the machine's CPU count and pytest's own summary
line (passed, skipped, failed, its seconds). It exits with pytest's status, so a timing is never
recorded as a pass when the suite failed. The README's times of the test command point to these
files (``results/test_suite/``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory.provenance import provenance

#: the README's test command's arguments
README_ARGS = ("-n", "2", "--dist", "loadfile")
#: pytest's closing line: "1133 passed, 245 skipped in 578.41s (0:09:38)"
SUMMARY = re.compile(r"^=*\s*(?P<counts>(?:\d+ \w+(?:, )?)+) in (?P<seconds>[\d.]+)s")


def parse_summary(output: str) -> dict:
    """The counts and seconds of pytest's last summary line in ``output`` (``{}`` without one)."""
    for line in reversed(output.splitlines()):
        match = SUMMARY.match(line.strip())
        if match:
            counts = {word: int(number) for number, word in
                      re.findall(r"(\d+) (\w+)", match["counts"])}
            return {"counts": counts, "pytest_s": float(match["seconds"])}
    return {}


def run(args: argparse.Namespace) -> int:
    pytest_args = list(args.pytest_args or [])
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    pytest_args = pytest_args or list(README_ARGS)
    command = [sys.executable, "-m", "pytest", "-q", *pytest_args]
    prov = provenance("cpu")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    sys.stdout.write(done.stdout[-2000:])
    sys.stderr.write(done.stderr[-2000:])
    results = {"provenance": prov, "command": " ".join(["python", "-m", "pytest", "-q",
                                                        *pytest_args]),
               "cpus": os.cpu_count(), "returncode": done.returncode, "wall_s": round(wall, 1),
               **parse_summary(done.stdout)}
    label = "readme" if pytest_args == list(README_ARGS) else "custom"
    write_json(output_path(args, "test_suite", prov, label=label), results)
    print(f"\n{results['command']}: {wall:.0f} s on {os.cpu_count()} CPUs, exit {done.returncode}")
    return done.returncode


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``test-suite`` subcommand."""
    p = subparsers.add_parser("test-suite", help="the README's test command, timed",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="arguments for pytest after `--` (default: the README's)")
    p.set_defaults(run=run)
