"""The scipy baseline that reproduce times beside GPU sweeps: pricing and failure reporting."""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path

import pandas as pd
import pytest

from moe_theory import baseline


def _done(value=None, error=None) -> cf.Future:
    fut = cf.Future()
    fut.set_exception(error) if error else fut.set_result(value)
    return fut


def _sweep_rows() -> pd.DataFrame:
    # two losses per fit: summarise must count each (setting, gate, n, rep) once
    rows = []
    for n, wall, iters in ((100, 0.5, 10), (400, 2.0, 20)):
        for rep in range(2):
            for loss in ("D1", "D2"):
                rows.append(dict(setting="s", fit_gate="softmax", n=n, rep=rep, loss_name=loss,
                                 wall_s=wall, n_iter=iters))
    return pd.DataFrame(rows)


def test_summarise_prices_fits_and_grid():
    out = {"setting": "s", "fit_gate": "softmax", "n": 100, "scipy_s_per_evaluation": 0.1}
    got = baseline.summarise(_done(out), _sweep_rows())
    assert got["scipy_s_per_fit_estimate"] == pytest.approx(0.1 * 10)
    assert got["ours_s_per_fit"] == pytest.approx(0.5)
    assert got["speedup_per_fit"] == pytest.approx(2.0)
    # linear in n: 2 reps x (0.1 x 1 x 10) + 2 reps x (0.1 x 4 x 20)
    assert got["scipy_full_grid_estimate_s"] == pytest.approx(2 * 1.0 + 2 * 8.0)
    assert got["ours_full_grid_fit_s"] == pytest.approx(2 * 0.5 + 2 * 2.0)


def test_summarise_reports_failures():
    assert baseline.summarise(None, _sweep_rows()) is None
    got = baseline.summarise(_done(error=RuntimeError("no scipy")), _sweep_rows())
    assert "RuntimeError" in got["error"]
    other = {"setting": "t", "fit_gate": "softmax", "n": 100, "scipy_s_per_evaluation": 0.1}
    assert "no fits" in baseline.summarise(_done(other), _sweep_rows())["error"]


def test_baseline_run_times_scipy_on_the_sweeps_data(tmp_path):
    from moe_theory.config import load_config

    # a config read from a file outside simulations/configs (it has no name to load it by)
    source = Path(__file__).parents[2] / "simulations" / "configs" / "nguyen2024.toml"
    (tmp_path / "elsewhere.toml").write_text(
        source.read_text().replace('name = "nguyen2024"', 'name = "elsewhere"'))
    config = load_config(tmp_path / "elsewhere.toml", fast=True)
    assert config.name == "elsewhere"
    got = baseline._run(config, "small-dense-relu", "softmax", 200)
    assert got["reps"] == baseline.BASELINE_REPS
    assert 0 < got["scipy_evaluations"] <= baseline.BASELINE_REPS * baseline.BASELINE_EVALS
    assert got["scipy_s_per_evaluation"] > 0


def test_baseline_process_runs_with_one_blas_thread(monkeypatch):
    """start(): the child sees one-thread BLAS settings; this process's environment is restored."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(baseline, "_run", _env_probe)
    from moe_theory.config import load_config

    future = baseline.start(load_config("nguyen2024", fast=True))
    assert future.result(timeout=120) == "1"
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def _env_probe(*args) -> str | None:
    return os.environ.get("OPENBLAS_NUM_THREADS")
