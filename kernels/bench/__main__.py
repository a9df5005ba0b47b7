"""Benchmarks: ``python -m kernels.bench {moe,attention} [--json PATH]``.

Each subcommand lives in its own module and registers an ``add_parser(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import importlib
import sys

FAMILIES = ("moe", "attention")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__)
    sub = parser.add_subparsers(dest="family", required=True)
    for family in FAMILIES:
        module = importlib.import_module(f"kernels.bench.{family}")
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
