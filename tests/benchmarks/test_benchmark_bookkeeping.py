"""Regression tests for bugs found by an audit of ``benchmarks/`` (CPU; no timing asserted)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import textwrap
from types import SimpleNamespace

import pytest
import torch

from benchmarks.__main__ import main


def test_gpu_tests_counts_a_file_that_fails_to_collect(tmp_path, monkeypatch):
    """A test file that fails to import lists no test ids, so no part ran it: it vanished from
    the summary and the run passed (exit 0, "1 passed"). It is a failure."""
    from benchmarks import gpu_tests

    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_ok.py").write_text("def test_ok(): pass\n")
    (suite / "test_broken.py").write_text(textwrap.dedent("""
        import a_module_that_does_not_exist_anywhere
        def test_never_runs(): pass
    """))
    out = tmp_path / "summary.json"
    args = argparse.Namespace(paths=["suite"], procs=1, deadline=300.0, out=str(out),
                              log=str(tmp_path / "logs"))
    assert gpu_tests.run(args) == 1
    summary = json.loads(out.read_text())
    assert summary["failed"] == ["suite/test_broken.py"]
    assert summary["totals"]["failed"] == 1 and summary["totals"]["passed"] == 1
    assert summary["files"]["suite/test_broken.py"]["failed"] == 1


class _Measure:
    """A fitted measure that only says which variant's fit it is (its data's dtype)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def to(self, **kwargs):
        return self


def test_fit_agreement_does_not_drop_a_nan_loss(monkeypatch, tmp_path):
    """``max`` over a generator keeps its first value against NaN (``nan > x`` is False): a GPU
    fit whose Voronoi loss was NaN in a replication after the first was recorded as agreeing
    with the CPU fit. Runs ``fit-agreement`` end to end with stand-in fits (on the CPU)."""
    from benchmarks import fit_agreement

    setting = SimpleNamespace(k_fit=2, expert="relu", score="linear")
    config = SimpleNamespace(settings=["s"], setting=lambda name: setting, max_iter=3,
                             gates_for=lambda s: ["sigmoid"], losses=("D1",))
    monkeypatch.setattr(fit_agreement, "load_config", lambda name: config)
    monkeypatch.setattr(fit_agreement, "provenance", lambda device: {"device": "cpu"})
    monkeypatch.setattr(fit_agreement.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fit_agreement, "shard_data",
                        lambda *a, **k: (torch.zeros(3, 4, 1), torch.zeros(3, 4)))
    monkeypatch.setattr(fit_agreement, "reference_measure",
                        lambda *a, **k: ("G*", _Measure(torch.float64)))
    monkeypatch.setattr(fit_agreement, "applicable_losses", lambda s, kind, losses: list(losses))
    monkeypatch.setattr(fit_agreement, "shard_init", lambda *a, **k: None)
    # every "device" is the CPU here; the float32 variant is the one whose fit went wrong
    monkeypatch.setattr(fit_agreement, "VARIANTS", (
        ("cpu-float64-torch", "cpu", torch.float64, "torch"),
        ("cuda-float32-triton", "cpu", torch.float32, "triton")))

    def fake_fit(X, Y, *args, **kwargs):
        zeros = torch.zeros(X.shape[0])
        return SimpleNamespace(measure=_Measure(X.dtype), n_iter=zeros.long(),
                               converged=zeros.bool(), certified=zeros.bool(), fit_loss=zeros)

    def fake_loss(fitted, ref, loss):
        good = [1.0, 2.0, 3.0]
        return torch.tensor(good if fitted.dtype == torch.float64 else [1.0, math.nan, 3.0])

    monkeypatch.setattr(fit_agreement, "fit_lse", fake_fit)
    monkeypatch.setattr(fit_agreement, "voronoi_loss", fake_loss)
    path = tmp_path / "agreement.json"
    assert main(["fit-agreement", "--reps", "3", "--json", str(path)]) == 0
    (curve,) = json.loads(path.read_text())["curves"]
    assert curve["variants"]["cpu-float64-torch"]["agrees"]
    wrong = curve["variants"]["cuda-float32-triton"]
    assert not wrong["agrees"]
    assert math.isnan(wrong["max_rel_diff"]["D1"])
    # equal values (NaN on both sides included) agree; a finite difference is measured
    assert fit_agreement.max_rel_diff([math.nan, 1.0], [math.nan, 1.0]) == 0
    assert fit_agreement.max_rel_diff([1.0, 2.2], [1.0, 2.0]) == pytest.approx(0.1)


def test_certified_figure_processes_fail_when_a_child_fails(monkeypatch, tmp_path):
    """``--process``: a precision whose process crashed was recorded beside the other one and
    the benchmark exited 0, a failed run read as a success. The children are stand-ins here: the
    first writes its JSON and exits 0, the second crashes before writing any."""
    from benchmarks import certified_figure

    real_run = subprocess.run

    def fake_child(cmd, **kwargs):
        if "certified-figure" not in cmd:  # git, for the provenance
            return real_run(cmd, **kwargs)
        path = cmd[cmd.index("--json") + 1]
        gram = cmd[cmd.index("--gram") + 1]
        if gram == "float64":
            with open(path, "w") as f:
                json.dump({"n": [1000], "complete": True, "fits": [], "losses": []}, f)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback: out of memory")

    monkeypatch.setattr(certified_figure.subprocess, "run", fake_child)
    path = tmp_path / "processes.json"
    code = main(["certified-figure", "--process", "--gram", "float64,tf32", "--device", "cpu",
                 "--json", str(path)])
    record = json.loads(path.read_text())
    assert record["runs"]["tf32"]["returncode"] == 1
    assert code != 0


def test_moe_compile_seconds_are_the_first_call_only(monkeypatch):
    """``compile_s`` of the torch.compile peer stopped its clock after ``do_bench`` had run too,
    so it held the timing loop besides the compilation. A stand-in clock advances 5 s in the
    first (compiling) call and 100 s in the timing loop: compile_s is the 5 s."""
    from benchmarks import moe

    now = [0.0]
    monkeypatch.setattr(moe, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(moe.torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(moe, "_problem", lambda *a, **k: (None,) * 4)

    def first_call(*args, **kwargs):
        now[0] += 5.0

    def timing_loop(fn):
        now[0] += 100.0
        return 2.0

    monkeypatch.setattr(moe, "_compiled_reference", first_call)
    monkeypatch.setattr(moe, "_bench", timing_loop)
    got = moe._compiled_point({"R": 1, "n": 100, "d": 2, "k": 2, "ours_ms": 0.5})
    assert got["compile_s"] == 5.0
    assert got["compiled_reference_ms"] == 2.0 and got["speedup_vs_compiled"] == 4.0


def test_fit_profile_divides_by_the_iterations_the_fit_ran(monkeypatch, tmp_path):
    """``ms_per_iter`` divided the fit's seconds by ``--iters``, the cap, not by the iterations
    the batch ran: a fit that stopped on a tolerance after 4 of 30 iterations was reported 7.5x
    faster per iteration. Stand-in fit (2 s on a stand-in clock, starts of 3 and 4 iterations)
    and profiler, on the CPU."""
    from benchmarks import fit_profile

    now = [0.0]
    setting = SimpleNamespace(name="s", k_fit=2, expert="relu", score="linear")
    config = SimpleNamespace(settings=["s"], setting=lambda name: setting, rep_block=2,
                             gates_for=lambda s: ["sigmoid"])

    def fake_fit(*args, **kwargs):
        now[0] += 2.0
        return SimpleNamespace(n_iter=torch.tensor([3, 4]),
                               start_n_iter=torch.tensor([[3, 2], [4, 1]]))

    class Profile:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def key_averages(self):
            return []

    monkeypatch.setattr(fit_profile, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(fit_profile.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fit_profile.torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(fit_profile.torch.cuda, "empty_cache", lambda *a: None)
    monkeypatch.setattr(fit_profile.torch.profiler, "profile", Profile)
    monkeypatch.setattr(fit_profile, "load_config", lambda name: config)
    monkeypatch.setattr(fit_profile, "provenance", lambda device: {"device": "cpu"})
    monkeypatch.setattr(fit_profile, "shard_data",
                        lambda *a, **k: (torch.zeros(2, 8, 1), torch.zeros(2, 8)))
    monkeypatch.setattr(fit_profile, "reference_measure", lambda *a, **k: ("G*", None))
    monkeypatch.setattr(fit_profile, "shard_init", lambda *a, **k: None)
    monkeypatch.setattr(fit_profile, "fit_lse", fake_fit)
    path = tmp_path / "profile.json"
    assert main(["fit-profile", "--n", "8", "--iters", "30", "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["runs"]
    assert row["second_fit_s"] == 2.0
    assert row["ms_per_iter"] == 500.0  # 2 s over the batch's 4 iterations


def test_attention_ratios_leave_out_a_provider_that_failed_its_check():
    """The ratios (ours / peer) were computed from every row, those that failed the reference
    check included, with nothing in the ratio to say so."""
    from benchmarks.attention import _ratios

    def row(provider, tflops, ok=True):
        return {"n": 2048, "d": 128, "causal": False, "direction": "fwd", "provider": provider,
                "tflops": tflops, "check_ok": ok}

    rows = [row("ours-precise", 400.0), row("ours-fast", 900.0, ok=False),
            row("sdpa-flash", 300.0)]
    ratios = _ratios(rows)
    assert [(r["ours"], r["peer"]) for r in ratios] == [("ours-precise", "sdpa-flash")]
    assert ratios[0]["ratio"] == pytest.approx(4 / 3)
    # a peer that failed its check is no baseline either
    assert _ratios([row("ours-precise", 400.0), row("sdpa-flash", 300.0, ok=False)]) == []
