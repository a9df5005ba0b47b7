"""The thread default: applied by importing moe_theory, overridden by MOE_THEORY_THREADS, and an
explicit OMP_NUM_THREADS or MKL_NUM_THREADS left to torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_theory import threads

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import moe_theory, torch; print(torch.get_num_threads())"


def threads_after_import(**env: str) -> int:
    """torch's intra-op thread count in a fresh process that imports moe_theory under ``env``."""
    # without the variables a test run may have set (Dask sets OMP_ and MKL_NUM_THREADS=1)
    clean = {k: v for k, v in os.environ.items() if k not in (*threads.TORCH_ENV_VARS, threads.ENV_VAR)}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True,
                          text=True, check=True, cwd=ROOT)
    return int(done.stdout.strip().splitlines()[-1])


def test_import_applies_the_default():
    assert threads_after_import() == threads.DEFAULT_THREADS


def test_env_var_overrides_the_default_and_omp():
    # 3 differs from the default (1) and from OMP_NUM_THREADS, so the count shows which one won
    assert threads_after_import(MOE_THEORY_THREADS="3", OMP_NUM_THREADS="2") == 3


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_explicit_torch_variable_is_left_to_torch(variable):
    assert threads_after_import(**{variable: "2"}) == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_bad_env_var_names_it(monkeypatch, value):
    monkeypatch.setenv(threads.ENV_VAR, value)
    with pytest.raises(ValueError, match=threads.ENV_VAR):
        threads.default_threads()


def test_every_executor_computes_with_the_same_thread_count():
    """An explicit OMP_NUM_THREADS=2 and no MKL_NUM_THREADS: Dask's nannies set
    MKL_NUM_THREADS=1 in their workers' environment (and in the starting process's), which torch
    reads first; a worker that applied the rule there computed with one thread, the other
    executors with two, and a CPU's rows differ in the last bits with the count."""
    pytest.importorskip("distributed")
    clean = {k: v for k, v in os.environ.items() if k not in (*threads.TORCH_ENV_VARS, threads.ENV_VAR)}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "thread_counts.py")],
                          env={**clean, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts == [["local", [2]], ["processes", [2]], ["dask", [2]], ["processes", [2]]]
