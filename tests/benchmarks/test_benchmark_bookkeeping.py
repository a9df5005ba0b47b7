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


def _moe_stand_ins(monkeypatch, *, wrong_gn: bool, wrong_gradient: bool, wrong_gram: bool):
    """The moe benchmark on the CPU at small shapes: problems on the CPU, the Triton passes and
    the Gram kernel replaced by the float64 reference (right, or with one output scaled by 1.5:
    a pass that fails its check), and a ``_bench`` that runs the timed function once and
    returns 1 ms. Returns the calls of our passes and Gram kernel made inside ``_bench``."""
    from benchmarks import checks, moe
    from kernels.moe.gram import gram_jtj as torch_gram_jtj
    from kernels.moe.torch_pass import MoEPass
    from kernels.moe.torch_pass import moe_pass as reference

    timing, timed = [False], []
    monkeypatch.setattr(moe, "_problem", lambda *a, **kw: checks.moe_problem(*a, **kw,
                                                                              device="cpu"))

    def bench(fn):
        timing[0] = True
        try:
            fn()
        finally:
            timing[0] = False
        return 1.0

    def ours(X, Y, gp, ep, *, gate, score, expert, gauss_newton=True, config=None):
        if timing[0]:
            timed.append(("pass", gauss_newton, config))
        got = reference(X.double(), Y.double(), gp.double(), ep.double(), gate=gate, score=score,
                        expert=expert, gauss_newton=gauss_newton)
        off = None
        if gauss_newton and wrong_gn:
            off = "jtj"
        elif not gauss_newton and wrong_gradient:
            off = "loss"
        return MoEPass(*(None if t is None else (1.5 * t if name == off else t).to(X.dtype)
                         for name, t in zip(got._fields, got, strict=True)))

    def gram(U, X, *, precision=None, config=None, **kw):
        if timing[0]:
            timed.append(("gram", precision, config))
        return torch_gram_jtj(U.double(), X.double(), **kw).to(X.dtype) * (1.5 if wrong_gram
                                                                          else 1)

    monkeypatch.setattr(moe, "_bench", bench)
    monkeypatch.setattr(moe, "triton_moe_pass", ours)
    monkeypatch.setattr(checks, "triton_moe_pass", ours)
    monkeypatch.setattr(moe, "gram_jtj", gram)
    monkeypatch.setattr(checks, "gram_jtj", gram)
    monkeypatch.setattr(moe, "fp64_dots", lambda device: True)
    return moe, timed


@pytest.mark.parametrize("wrong", [False, True])
def test_moe_benchmark_does_not_time_a_pass_that_failed_its_check(monkeypatch, capsys, wrong):
    """(found by an audit) a pass whose output failed its check against the float64 reference
    was timed all the same, and its time entered ``ratio_to_floor``, ``speedup_vs_*`` and the
    J^T J rates as if valid. A failed provider is now not timed (``not_timed`` says why) and no
    ratio is built on it; the PyTorch peers are timed either way. Stand-ins (CPU, small shapes):
    our passes and the Gram kernel are the reference, with one output 1.5x off where ``wrong``."""
    moe, timed = _moe_stand_ins(monkeypatch, wrong_gn=wrong, wrong_gradient=wrong,
                                wrong_gram=wrong)
    grad = moe._gradient_point(3, 203, 3, 2, bandwidth=1.0, tune=True)
    gn = moe._gn_point(2, 61, 3, 2, bandwidth=1.0, rates={"tf32": 1.0, "fp64": 1.0}, tune=True)
    ours_keys = ("ours_ms", "ours_small_ms", "ratio_to_floor", "speedup_vs_eager")
    gn_keys = ("ours_gn_ms", "ours_gradient_ms", "ours_gn_fp64_ms", "ours_gn_precision_ms",
               "jtj_tflops", "jtj_vs_tf32_matmul", "speedup_gn_vs_reference",
               "gradient_ratio_to_floor")
    if not wrong:  # the control: every pass passed its check, and every one was timed
        assert all(key in grad for key in ours_keys) and "not_timed" not in grad
        assert all(key in gn for key in gn_keys) and "not_timed" not in gn
        assert all("ms" in v for v in grad["variants"] + gn["gram_variants"]
                   + gn["gram_variants_fp64"])
        assert set(gn["gram_ms"]) == {*moe.PRECISIONS, "torch", "torch_cached_V"}
        assert gn["jtj_fp64_provider"] == "ours"
        assert timed
        return
    assert timed == []  # none of our passes, nor the Gram kernel, ran inside a timing
    assert not any(key in grad for key in ours_keys)
    assert grad["not_timed"]["ours_ms"].startswith("check failed: loss")
    assert grad["not_timed"]["ours_small_ms"].startswith("check failed: loss")
    assert all("ms" not in v and v["check"]["loss"] > 1e-5 for v in grad["variants"])
    assert "eager_ms" in grad  # the peer is still timed, but no ratio against ours
    assert not any(key in gn for key in gn_keys)
    assert set(gn["not_timed"]) == {
        "ours_gn_ms", "ours_gradient_ms", "ours_gn_fp64_ms",
        *(f"ours_gn_precision_ms.{p}" for p in moe.PRECISIONS),
        *(f"gram_ms.{p}" for p in moe.PRECISIONS), "gram_ms_fp64.ieee"}
    assert gn["not_timed"]["ours_gn_fp64_ms"].startswith("check failed: jtj")
    # the Gram rates are the PyTorch product's alone; the float64 rate is named the reference's
    assert set(gn["gram_ms"]) == set(gn["gram_ms_fp64"]) == {"torch", "torch_cached_V"}
    assert gn["gram_effective_tflops"] == 2 * 2 * 61 * gn["p"] ** 2 / 1.0 / 1e9
    assert gn["jtj_fp64_provider"] == "reference" and "reference_gn_fp64_ms" in gn
    assert all("ms" not in v for v in gn["gram_variants"] + gn["gram_variants_fp64"])
    # the summary prints without the missing times and says what was not timed and why
    moe._print_table({"bandwidth_gbs": 1.0, "matmul_tflops": {"tf32": 1.0}, "gradient": [grad],
                      "gauss_newton": gn})
    out = capsys.readouterr().out
    assert "ours not timed (failed its check)" in out
    assert "not timed at (3, 203, 3, 2): ours_ms: check failed: loss" in out


def test_moe_compiled_peer_has_no_ratio_to_an_untimed_pass(monkeypatch):
    """The torch.compile peer is timed where ours failed its check, without the ratio."""
    from benchmarks import moe

    monkeypatch.setattr(moe.torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(moe, "_problem", lambda *a, **k: (None,) * 4)
    monkeypatch.setattr(moe, "_compiled_reference", lambda *a, **k: None)
    monkeypatch.setattr(moe, "_bench", lambda fn: 2.0)
    got = moe._compiled_point({"R": 1, "n": 100, "d": 2, "k": 2,
                               "not_timed": {"ours_ms": "check failed: loss 1e-1 > 1e-05"}})
    assert got["compiled_reference_ms"] == 2.0 and "speedup_vs_compiled" not in got


H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"


def _scaling_stand_ins(monkeypatch, gpu_names: list[str]):
    """sweep-scaling on the CPU: ``gpu_names`` stand for the visible GPUs, and
    ``reproduce_figures`` / ``run_sweep`` only record their calls (returns that list)."""
    from benchmarks import sweep_scaling

    calls = []
    monkeypatch.setattr(sweep_scaling.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sweep_scaling.torch.cuda, "device_count", lambda: len(gpu_names))
    monkeypatch.setattr(sweep_scaling.torch.cuda, "get_device_name", lambda i: gpu_names[i])
    monkeypatch.setattr(sweep_scaling, "provenance", lambda device: {
        "git_commit": "0" * 40, "device": "cuda:0", "device_name": gpu_names[0]})
    monkeypatch.setattr(sweep_scaling, "_dask_versions", lambda: {})
    monkeypatch.setattr(sweep_scaling, "load_config", lambda name, fast: SimpleNamespace(hash="h"))
    monkeypatch.setattr(sweep_scaling, "device_workers", lambda workers, device: 1)
    monkeypatch.setattr(sweep_scaling, "figure_hashes", lambda folder: {"results_sha256": "x"})
    monkeypatch.setattr(sweep_scaling, "reproduce_figures",
                        lambda figures, **kw: calls.append(kw["gpus"]))
    clock = iter(range(0, 10_000, 7))  # every run takes 7 s on a stand-in clock
    monkeypatch.setattr(sweep_scaling, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    return sweep_scaling, calls


def _reproduce_all_args(out, counts: str) -> argparse.Namespace:
    return argparse.Namespace(counts=counts, device="cuda", figures="nguyen2024", fast=True,
                              certify=True, backend="auto", workers=None, out=str(out),
                              save=False)


def test_sweep_scaling_refuses_to_merge_runs_of_another_gpu(monkeypatch, tmp_path, capsys):
    """(found by an audit) ``--reproduce-all`` added a call's runs to the runs recorded at
    ``--out`` whenever the commit and setup matched, whatever GPU made them: a 2-GPU run on an
    H100 and a 1-GPU run on an H200 made one record and one speed-up. Each run now records its
    devices, and a call on another model refuses before running anything, naming both."""
    sweep_scaling, calls = _scaling_stand_ins(monkeypatch, [H100, H100])
    assert sweep_scaling.run_reproduce_all(_reproduce_all_args(tmp_path, "2")) == 0
    path = tmp_path / "reproduce_all_scaling.json"
    first = json.loads(path.read_text())
    assert first["runs"]["2_gpus"]["device_names"] == [H100, H100]

    # the same model: merged, and the speed-up is between counts of one GPU model
    assert sweep_scaling.run_reproduce_all(_reproduce_all_args(tmp_path, "1")) == 0
    merged = json.loads(path.read_text())
    assert set(merged["runs"]) == {"2_gpus", "1_gpus"} and "2" in merged["speedup"]
    assert merged["runs"]["1_gpus"]["device_names"] == [H100]

    # another model: refused, nothing run, the record left as it was
    sweep_scaling, calls = _scaling_stand_ins(monkeypatch, [H200])
    assert sweep_scaling.run_reproduce_all(_reproduce_all_args(tmp_path, "1")) == 2
    err = capsys.readouterr().err
    assert "holds runs made on another device (2_gpus, 1_gpus on cuda (NVIDIA H100 80GB HBM3))" \
        in err and "this call runs on cuda (NVIDIA H200)" in err and "another --out" in err
    assert calls == [] and json.loads(path.read_text()) == merged


def test_sweep_scaling_reads_the_gpus_of_a_record_without_per_run_devices(monkeypatch, tmp_path,
                                                                          capsys):
    """A record written before runs held their devices: its runs ran on GPUs 0..count-1 of
    the record's ``devices``, and a CPU record (``--device cpu``) is another device type."""
    sweep_scaling, calls = _scaling_stand_ins(monkeypatch, [H200])
    path = tmp_path / "reproduce_all_scaling.json"
    old = {"provenance": {"git_commit": "0" * 40}, "devices": [H100, H100],
           "setup": {"device": "cuda"}, "runs": {"2_gpus": {"count": 2, "wall_s": 10.0}}}
    path.write_text(json.dumps(old))
    assert sweep_scaling.run_reproduce_all(_reproduce_all_args(tmp_path, "1")) == 2
    assert "2_gpus on cuda (NVIDIA H100 80GB HBM3)" in capsys.readouterr().err and calls == []
    cpu = {**old, "devices": ["cpu"], "setup": {"device": "cpu"},
           "provenance": {"git_commit": "0" * 40, "device_name": "AMD EPYC 9654"}}
    path.write_text(json.dumps(cpu))
    assert sweep_scaling.run_reproduce_all(_reproduce_all_args(tmp_path, "1")) == 2
    assert "2_gpus on cpu (AMD EPYC 9654)" in capsys.readouterr().err and calls == []


def test_sweep_scaling_refuses_gpus_of_several_models(monkeypatch, tmp_path, capsys):
    """GPUs 0..k-1 of two models in one call: its speed-ups would mix models with counts."""
    sweep_scaling, calls = _scaling_stand_ins(monkeypatch, [H100, H200])
    assert sweep_scaling.run_reproduce_all(_reproduce_all_args(tmp_path, "2,1")) == 2
    assert f"GPUs 0,1 are not all one model (0: {H100}, 1: {H200})" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "reproduce_all_scaling.json").exists()
    args = argparse.Namespace(out=str(tmp_path), gpus="0,1", save=False)
    assert sweep_scaling.run(args) == 2


def test_sweep_scaling_sweep_starts_each_run_from_nothing(monkeypatch, tmp_path):
    """(found by an audit) the one-sweep mode ran each run into ``--out/<label>`` without
    emptying it: a folder left by an earlier call, perhaps on another GPU (the rows record the
    device type only), was resumed, its shards merged into this run's table and its wall time
    only the remainder's. Each run now starts from an empty folder, and records its GPUs."""
    import pandas as pd

    sweep_scaling, _ = _scaling_stand_ins(monkeypatch, [H100, H100])
    stale = tmp_path / "1_gpu" / "shards"
    stale.mkdir(parents=True)
    (stale / "an-earlier-shard.parquet").write_text("of another GPU")
    seen = {}

    def run_sweep(config, folder, **kw):
        seen[folder.name] = folder.exists() and any(folder.iterdir())
        return pd.DataFrame({"setting": ["s"], "n": [10], "rep": [0], "wall_s": [1.0],
                             "loss_value": [1.0]})

    monkeypatch.setattr(sweep_scaling, "run_sweep", run_sweep)
    args = argparse.Namespace(out=str(tmp_path), gpus="0,1", save=False)
    assert sweep_scaling.run(args) == 0
    assert seen == {"2_gpus": False, "1_gpu": False}
    record = json.loads((tmp_path / "sweep_scaling.json").read_text())
    assert record["runs"]["1_gpu"]["device_names"] == [H100]
    assert record["runs"]["2_gpus"]["device_names"] == [H100, H100]
