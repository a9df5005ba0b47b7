"""How long the README's first command takes, as a new user runs it, and whether it prints the
committed table.

``python -m benchmarks first-command [--save] [--keep DIR]`` clones the repository's committed
``HEAD`` into a temporary folder, makes a virtual environment there without the system's
packages, and runs the README's first command in it, ``pip install torch==2.13.0 && pip install
-e . && moe-theory reproduce``, with an empty G_bar cache (``MOE_THEORY_CACHE``), timing the
installs and the reproduction apart. It then compares what the run wrote with the committed
preset (``paper_figures/nguyen2024-measurable/preset/``): the printed slope table, line by line
(``cpu_rates.txt``, but for its last line, which gives that run's own time), and the figure, byte
for byte. It records the times, the machine's CPU count, the comparison and the run's exit
status, and what the run printed, and exits with the run's status, so that a timing is never
recorded as a success when the run failed. The README's time of its first command points to these files
(``results/first_command/``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
#: The README's first command, after its `git clone` and `cd`.
COMMANDS = (("install torch", "pip install torch==2.13.0"),
            ("install the project", "pip install -e ."),
            ("reproduce", "moe-theory reproduce"))
#: The committed preset: what the reproduction printed and drew on a CPU.
PRESET = Path("paper_figures") / "nguyen2024-measurable" / "preset"
PRINTED = PRESET / "cpu_rates.txt"
FIGURES = (Path("results") / "nguyen2024-measurable-fast" / "nguyen2024-measurable.png",
           PRESET / "nguyen2024-measurable-fast.png")


def table_lines(text: str) -> list[str]:
    """What a reproduction prints, without its last line (``wrote DIR/ (...); 341 s on cpu``: a
    run's own time)."""
    return [line for line in text.rstrip("\n").splitlines() if not line.startswith("wrote ")]


def compare(printed: str, repo: Path) -> dict:
    """Whether the printed table and the drawn figure are the committed preset's."""
    mine, theirs = table_lines(printed), table_lines((repo / PRINTED).read_text())
    diff = [i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b]
    figure, committed = (repo / path for path in FIGURES)
    return {"printed_table": {"same": not diff and len(mine) == len(theirs),
                              "lines": len(mine), "committed_lines": len(theirs),
                              "first_difference": diff[0] + 1 if diff else None},
            "figure": {"same": figure.exists() and figure.read_bytes() == committed.read_bytes()}}


def run(args: argparse.Namespace) -> int:
    prov = provenance("cpu")
    results: dict = {"provenance": prov, "cpus": os.cpu_count(),
                     "command": " && ".join(c for _, c in COMMANDS), "phases": {}}
    path = output_path(args, "first_command", prov)
    with tempfile.TemporaryDirectory(prefix="first-command-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        clone, env_dir, cache = work / "moe-theory", work / "venv", work / "cache"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
        cache.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MOE_THEORY_CACHE": str(cache), "VIRTUAL_ENV": str(env_dir),
               "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("PYTHONPATH", None)
        returncode, printed = 0, ""
        for name, command in COMMANDS:
            start = time.perf_counter()
            done = subprocess.run(command, shell=True, cwd=clone, env=env, capture_output=True,
                                  text=True, check=False)
            seconds = round(time.perf_counter() - start, 1)
            results["phases"][name] = {"wall_s": seconds, "returncode": done.returncode}
            print(f"{command}: {seconds:.0f} s, exit {done.returncode}", flush=True)
            printed = done.stdout
            if done.returncode:
                sys.stderr.write(done.stderr[-3000:])
                returncode = done.returncode
                break
        results["returncode"] = returncode
        if not returncode:
            results["matches_committed_preset"] = compare(printed, clone)
            # what it printed, whole: the committed preset's cpu_rates.txt is a run's output
            results["printed"] = printed
        write_json(path, results)
    phases = results["phases"]
    total = sum(p["wall_s"] for p in phases.values())
    print(f"\nthe first command: {total:.0f} s on {os.cpu_count()} CPUs "
          f"({phases.get('reproduce', {}).get('wall_s', float('nan')):.0f} s reproducing), "
          f"exit {returncode}; committed preset matched: "
          f"{results.get('matches_committed_preset')}")
    return returncode


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``first-command`` subcommand."""
    p = subparsers.add_parser("first-command", help="the README's first command, timed from a "
                              "clean clone in a fresh environment",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary "
                   "folder")
    p.set_defaults(run=run)
