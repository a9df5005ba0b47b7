"""A pytest plugin that logs each test's start and outcomes, one JSON line per event, as they happen.

``python -m benchmarks gpu-tests`` loads it in every part (``-p benchmarks.pytest_outcomes``)
with ``BENCHMARKS_OUTCOMES`` naming the part's log: a part stopped at the deadline still leaves
the outcome of every test it finished and the id of the test it was running. Lines:
``{"nodeid": ..., "when": "start"}``, then one per phase, ``{"nodeid": ..., "when": "setup" |
"call" | "teardown", "outcome": "passed" | "failed" | "skipped" | "xfailed" | "xpassed"}``, and
``{"nodeid": <file>, "when": "collect", "outcome": "failed"}`` for a file that fails to collect.
"""

from __future__ import annotations

import json
import os

import pytest

ENV = "BENCHMARKS_OUTCOMES"


def _write(record: dict) -> None:
    path = os.environ.get(ENV)
    if path:
        # appended and closed per line: a killed process loses at most the line it was writing
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    _write({"nodeid": nodeid, "when": "start"})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    _write({"nodeid": report.nodeid, "when": report.when, "outcome": outcome})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed"})
