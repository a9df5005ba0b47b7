"""Benchmarks and GPU checks: ``python -m benchmarks <name> [...]`` from the repository root.

Each subcommand lives in its own module, which registers it with ``add_parser(subparsers)``.
``--json PATH`` writes a benchmark's results to PATH, ``--save`` to its committed-results name
``benchmarks/results/<benchmark>/<date>_<gpu>_<commit7>[_<label>].json`` (see README.md there).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import (
    attention,
    certified_figure,
    chunk_bytes,
    compare_tables,
    data_draw,
    first_command,
    fit_agreement,
    fit_profile,
    gpu_tests,
    lm_parts,
    memory_check,
    moe,
    sass,
    shared_memory,
    stacked_dot,
    sweep_scaling,
    test_suite,
    warm_start,
)

SUBCOMMANDS = (moe, attention, fit_profile, fit_agreement, lm_parts, memory_check, sweep_scaling,
               compare_tables, gpu_tests, certified_figure, shared_memory, data_draw,
               warm_start, sass, stacked_dot, chunk_bytes, test_suite, first_command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="<name>")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
