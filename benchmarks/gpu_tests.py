"""The kernel tests on a GPU, split over processes, with a deadline and a committed summary.

``python -m benchmarks gpu-tests [--procs N] [--deadline 540] [--out PATH] [--log DIR]
[--rest SUMMARY] [PATHS...]``
(default paths ``tests/kernels tests/gpu``, which must lie under the working folder: run it from
the repository root). On a GPU every oddly sized test shape compiles its own Triton kernels, so
``tests/kernels`` in one process outlasts a 600 s session; compilation is CPU work, so dealing
the test ids round-robin over processes divides the time (taking the files in turn, so that a
deadline cuts every file short rather than skipping the last ones). Each part prints its counts
and failures as it ends. ``--deadline`` bounds everything, collection included: parts still
running then are stopped: the test each was in counts as timed out, the ones after it as not run.

The summary JSON (default ``benchmarks/results/gpu_tests/<date>_<gpu>_<commit7>.json``) holds
the run's provenance, per test file the passed / failed / skipped / timed-out / not-run counts,
the failing and timed-out test ids, and each part's status; it is rewritten as each part ends,
so a run cut short still leaves one. Exit status 0 when every test ran and none failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from benchmarks.output import result_path, write_json
from benchmarks.pytest_outcomes import ENV
from moe_theory.provenance import provenance

DEFAULT_PATHS = ("tests/kernels", "tests/gpu")
#: Under the 600 s a device session's command may take, with room to write the summary.
DEFAULT_DEADLINE_S = 540.0
#: pytest exit codes (https://docs.pytest.org/en/stable/reference/exit-codes.html)
_EXIT_STATUS = {0: "passed", 1: "failed", 2: "interrupted", 3: "internal_error", 4: "usage_error",
                5: "no_tests"}


#: Test ids are relative to pytest's root folder and the parts read them relative to their working
#: folder: both are the folder the runner starts in, and the test paths must lie under it.
_PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", ".")
#: The repository root, put on the parts' import path for ``-p benchmarks.pytest_outcomes``.
_REPO = Path(__file__).resolve().parents[1]


def collect(paths: list[str], timeout: float) -> tuple[list[str], str, list[str]]:
    """Test ids under ``paths`` (``pytest --collect-only -q``), pytest's output, and the files
    (or folders) that failed to collect.

    A file that fails to import lists no ids, so the parts, which run ids, would never see it:
    without the third list a broken test file vanished from the summary and the run passed.
    The collection loads :mod:`benchmarks.pytest_outcomes`, whose ``collect`` lines name them.
    """
    with tempfile.TemporaryDirectory(prefix="gpu_tests_collect_") as folder:
        events = Path(folder) / "collect.jsonl"
        path = os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))
        done = subprocess.run([*_PYTEST, "-p", "benchmarks.pytest_outcomes", "--collect-only",
                               "-q", *paths], capture_output=True, text=True,
                              timeout=max(1.0, timeout), check=False,
                              env={**os.environ, ENV: str(events), "PYTHONPATH": path})
        errors = sorted({e["nodeid"] for e in read_events(events)
                         if e.get("when") == "collect" and e.get("outcome") == "failed"})
    # test ids only: warnings in the listing can hold "::" too
    ids = [line for line in done.stdout.splitlines() if re.match(r"\S+\.py::", line)]
    outside = [i for i in ids if not Path(i.split("::")[0]).is_file()]
    if outside:
        raise ValueError(f"paths: must lie under the working folder; {outside[0]} is not a file "
                         "relative to it")
    return ids, done.stdout + done.stderr, errors


def interleave_files(ids: list[str]) -> list[str]:
    """``ids`` reordered to take one test of each file in turn (each file's own order kept): a
    part that the deadline stops then has run some tests of every file, not all of the first."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for nodeid in ids:
        by_file[nodeid.split("::")[0]].append(nodeid)
    rounds = itertools.zip_longest(*by_file.values())
    return [nodeid for batch in rounds for nodeid in batch if nodeid is not None]


def deal(ids: list[str], procs: int) -> list[list[str]]:
    """Deal ``ids`` round-robin into at most ``procs`` non-empty parts: the parametrizations of
    one test, which often share their cost, land in different processes."""
    return [ids[i::procs] for i in range(procs) if ids[i::procs]]


def read_events(path: Path) -> list[dict]:
    """The JSON lines a part has written so far (a last line cut by a kill is skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def outcomes_of(events: list[dict]) -> tuple[dict[str, str], str | None]:
    """Each finished test's outcome (``passed``, ``failed``, ``skipped``) and the id of the test
    that started last without finishing (None if none).

    A test failed if any phase failed (a setup error included), was skipped if a phase skipped
    (xfail included), and passed if its call passed (xpass included).
    """
    phases: dict[str, dict[str, str]] = defaultdict(dict)
    last_started = None
    for e in events:
        if e["when"] == "start":
            last_started = e["nodeid"]
        else:
            phases[e["nodeid"]][e["when"]] = e["outcome"]
    outcomes = {}
    for nodeid, seen in phases.items():
        values = set(seen.values())
        if "failed" in values:
            outcomes[nodeid] = "failed"
        elif values & {"skipped", "xfailed"}:
            outcomes[nodeid] = "skipped"
        elif seen.get("call") in ("passed", "xpassed") and "teardown" in seen:
            outcomes[nodeid] = "passed"
    running = last_started if last_started is not None and last_started not in outcomes else None
    return outcomes, running


def _unfinished(nodeid: str, running: str | None, status: str) -> str:
    """What a test without an outcome counts as, given its part's status."""
    if status == "running":
        return "pending"
    if nodeid != running:
        return "not_run"
    # the test the part was in when it was stopped, or when its process died
    return "timed_out" if status == "timed_out" else "failed"


def summarise(parts: list[dict], base: dict) -> dict:
    """The summary of the parts so far: ``base`` plus counts per test file and overall, the
    failing and timed-out ids, and each part's status."""
    files: dict[str, Counter] = defaultdict(Counter)
    failed, timed_out, not_run = [], [], []
    # files that failed to collect: no part runs them, each counts as one failure
    for nodeid in base.get("collection_errors", ()):
        files[nodeid.split("::")[0]]["failed"] += 1
        failed.append(nodeid)
    for part in parts:
        outcomes, running = outcomes_of(read_events(part["events"]))
        for nodeid in outcomes.keys() - set(part["ids"]):  # collection errors of a whole file
            files[nodeid.split("::")[0]]["failed"] += 1
            failed.append(nodeid)
        for nodeid in part["ids"]:
            outcome = outcomes.get(nodeid) or _unfinished(nodeid, running, part["status"])
            if outcome == "failed":
                failed.append(nodeid)
            elif outcome == "timed_out":
                timed_out.append(nodeid)
            elif outcome == "not_run":
                not_run.append(nodeid)
            files[nodeid.split("::")[0]][outcome] += 1
    keys = ("passed", "failed", "skipped", "timed_out", "not_run", "pending")
    totals = {key: sum(c[key] for c in files.values()) for key in keys}
    return {
        **base,
        "complete": all(p["status"] not in ("running", "timed_out") for p in parts),
        "totals": totals,
        "files": {f: {key: c[key] for key in keys if c[key] or key != "pending"}
                  for f, c in sorted(files.items())},
        "failed": sorted(failed),
        "timed_out": sorted(timed_out),
        # what a second run must take (with the timed-out ids) to complete a cut-short one
        "not_run": sorted(not_run),
        "parts": [{k: p[k] for k in ("part", "tests", "status", "exit", "wall_s")} for p in parts],
    }


def _stop(proc: subprocess.Popen) -> None:
    # the part runs in its own session: stop pytest and anything it spawned (compile workers)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def rest_ids(summary: Path) -> list[str]:
    """The ids an earlier run's summary lists as timed out or not run: what a second call,
    within a session's time limit, has left to do (the API grid outlasts one 600 s call)."""
    try:
        done = json.loads(summary.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"rest: cannot read the summary {summary}: {err}") from None
    if "timed_out" not in done or "not_run" not in done:
        raise ValueError(f"rest: {summary} is not a gpu-tests summary (no timed_out / not_run)")
    return [*done["timed_out"], *done["not_run"]]


def run(args: argparse.Namespace) -> int:
    """Collect, start the parts, report each as it ends, write the summary as it changes."""
    if args.procs < 1:
        raise ValueError(f"procs: must be >= 1, got {args.procs}")
    if not args.deadline > 0:
        raise ValueError(f"deadline: must be > 0 seconds, got {args.deadline}")
    if getattr(args, "rest", None):
        args.paths = rest_ids(Path(args.rest))
        if not args.paths:
            print(f"{args.rest}: every test ran (nothing timed out or was left unrun)")
            return 0
    start = time.monotonic()
    deadline = start + args.deadline
    prov = provenance("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out) if args.out else result_path("gpu_tests", prov)
    base = {"provenance": prov, "paths": args.paths, "procs": args.procs,
            "deadline_s": args.deadline}
    try:
        ids, listing, collection_errors = collect(args.paths, deadline - time.monotonic())
    except subprocess.TimeoutExpired:
        print(f"collection outlasted the {args.deadline:.0f} s deadline", file=sys.stderr)
        return 1
    if not ids:
        print(listing, file=sys.stderr)
        print(f"no tests collected under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    if collection_errors:
        print(listing, file=sys.stderr)
        for nodeid in collection_errors:
            print(f"ERROR collecting {nodeid}", file=sys.stderr, flush=True)
    base["collection_errors"] = collection_errors
    logs = Path(args.log or tempfile.mkdtemp(prefix="gpu_tests_"))
    logs.mkdir(parents=True, exist_ok=True)
    parts = []
    path = os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))
    for i, part_ids in enumerate(deal(interleave_files(ids), args.procs)):
        events = logs / f"part{i}.jsonl"
        events.unlink(missing_ok=True)
        # output to files, not pipes: a part that filled a pipe buffer would block
        with open(logs / f"part{i}.txt", "w") as output:
            proc = subprocess.Popen(
                [*_PYTEST, "-q", "-p", "benchmarks.pytest_outcomes", "--tb=short", "-rf",
                 *part_ids],
                stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, ENV: str(events), "PYTHONPATH": path},
                start_new_session=True)
        parts.append(dict(part=i, tests=len(part_ids), ids=part_ids, events=events, proc=proc,
                          status="running", exit=None, wall_s=None))
    base["collected"] = len(ids)
    print(f"{len(ids)} tests in {len(parts)} parts (logs in {logs}); summary: {out}", flush=True)
    write_json(out, summarise(parts, base))
    try:
        while any(p["status"] == "running" for p in parts):
            late = time.monotonic() > deadline
            for part in parts:
                proc = part["proc"]
                if part["status"] != "running" or (proc.poll() is None and not late):
                    continue
                if proc.poll() is None:
                    _stop(proc)
                    part["status"] = "timed_out"
                else:
                    part["status"] = _EXIT_STATUS.get(proc.returncode, "crashed")
                part["exit"] = proc.returncode
                part["wall_s"] = round(time.monotonic() - start, 1)
                _report(part, summarise([part], {}))
                write_json(out, summarise(parts, base))
            time.sleep(0.5)
    finally:
        for part in parts:
            if part["proc"].poll() is None:
                _stop(part["proc"])
    summary = summarise(parts, base)
    summary["elapsed_s"] = round(time.monotonic() - start, 1)
    write_json(out, summary)
    totals = summary["totals"]
    print(f"== all parts: {_counts(totals)} in {summary['elapsed_s']:.0f} s", flush=True)
    # a file that failed to collect is a failure even when every part passed
    return 0 if all(p["exit"] == 0 for p in parts) and not collection_errors else 1


def _counts(totals: dict) -> str:
    return ", ".join(f"{totals[key]} {key.replace('_', ' ')}" for key in
                     ("passed", "failed", "skipped", "timed_out", "not_run"))


def _report(part: dict, summary: dict) -> None:
    print(f"== part {part['part']} {part['status']} (exit {part['exit']}, {part['wall_s']:.0f} s):"
          f" {_counts(summary['totals'])}", flush=True)
    for nodeid in summary["failed"]:
        print(f"FAILED {nodeid}", flush=True)
    for nodeid in summary["timed_out"]:
        print(f"TIMED OUT {nodeid}", flush=True)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``gpu-tests`` subcommand."""
    p = subparsers.add_parser("gpu-tests", help="the kernel tests on a GPU, split over processes",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS),
                   help=f"test files or folders (default: {' '.join(DEFAULT_PATHS)})")
    p.add_argument("--procs", type=int, default=min(16, os.cpu_count() or 1),
                   help="processes to split the tests over (default: min(16, CPU count))")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                   help="seconds for everything, collection included (default: %(default)s)")
    p.add_argument("--out", help="summary JSON (default: benchmarks/results/gpu_tests/"
                   "<date>_<gpu>_<commit7>.json)")
    p.add_argument("--log", help="folder for each part's output (default: a new temporary folder)")
    p.add_argument("--rest", metavar="SUMMARY",
                   help="run the tests an earlier summary lists as timed out or not run "
                        "(instead of PATHS)")
    p.set_defaults(run=run)
