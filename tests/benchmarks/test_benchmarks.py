"""The benchmarks' command line, result names and GPU-test runner, on the CPU (no timing)."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_tests
from benchmarks.__main__ import SUBCOMMANDS, main
from benchmarks.output import gpu_label, result_path, write_json

NAMES = ("moe", "attention", "fit-profile", "fit-agreement", "lm-parts", "memory-check",
         "sweep-scaling", "compare-tables", "gpu-tests", "certified-figure", "shared-memory",
         "data-draw", "warm-start", "sass", "stacked-dot", "chunk-bytes", "test-suite",
         "first-command")


def test_every_benchmark_is_a_subcommand():
    assert len(SUBCOMMANDS) == len(NAMES)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0


@pytest.mark.parametrize("name", NAMES)
def test_subcommand_help(name: str, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"python -m benchmarks {name}" in capsys.readouterr().out


PROV = {"git_commit": "0123456789abcdef", "git_dirty": False, "device": "cuda:0",
        "device_name": "NVIDIA H100 80GB HBM3", "date": "2026-11-23T06:19:51+00:00"}


@pytest.mark.parametrize(("device", "name", "label"), [
    ("cuda:0", "NVIDIA H100 80GB HBM3", "h100"), ("cuda:1", "NVIDIA H200", "h200"),
    ("cuda:0", "NVIDIA A100-SXM4-80GB", "a100"),
    ("cuda:0", "NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
    ("cpu", "Intel(R) Xeon(R) Platinum 8480C", "cpu")])
def test_gpu_label(device: str, name: str, label: str):
    assert gpu_label({"device": device, "device_name": name}) == label


def test_result_path():
    assert result_path("moe", PROV).parts[-2:] == ("moe", "2026-11-23_h100_0123456.json")
    assert result_path("sweep_scaling", PROV, gpu="h200x2", label="quick").name == \
        "2026-11-23_h200x2_0123456_quick.json"
    assert result_path("moe", {**PROV, "git_commit": None}).name == "2026-11-23_h100_nogit.json"


def test_write_json_records_provenance(tmp_path):
    write_json(tmp_path / "a" / "r.json", {"x": 1}, device="cpu")
    written = json.loads((tmp_path / "a" / "r.json").read_text())
    assert written["x"] == 1
    assert written["provenance"]["device"] == "cpu"
    write_json(tmp_path / "b.json", {"provenance": PROV, "y": [1.5]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"provenance": PROV, "y": [1.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.json"]  # no temporary left
    write_json(None, {"x": 1})  # no path: nothing written, no error


def test_outcomes_of_phases():
    events = [{"nodeid": i, "when": "start"} for i in "abcde"]
    events += [
        {"nodeid": "a", "when": "setup", "outcome": "passed"},
        {"nodeid": "a", "when": "call", "outcome": "passed"},
        {"nodeid": "a", "when": "teardown", "outcome": "passed"},
        {"nodeid": "b", "when": "setup", "outcome": "failed"},  # an error counts as a failure
        {"nodeid": "b", "when": "teardown", "outcome": "passed"},
        {"nodeid": "c", "when": "setup", "outcome": "skipped"},
        {"nodeid": "d", "when": "call", "outcome": "xfailed"},
        {"nodeid": "e", "when": "setup", "outcome": "passed"},
    ]
    outcomes, running = gpu_tests.outcomes_of(events)
    assert outcomes == {"a": "passed", "b": "failed", "c": "skipped", "d": "skipped"}
    assert running == "e"


def test_deal_round_robin():
    assert gpu_tests.deal(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]
    assert gpu_tests.deal(list("ab"), 4) == [["a"], ["b"]]


def test_interleave_files():
    ids = ["f.py::a", "f.py::b", "f.py::c", "g.py::x", "h.py::y", "h.py::z"]
    assert gpu_tests.interleave_files(ids) == ["f.py::a", "g.py::x", "h.py::y", "f.py::b",
                                               "h.py::z", "f.py::c"]


def test_summary_of_a_part_stopped_at_the_deadline(tmp_path):
    events = tmp_path / "part0.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in [
        {"nodeid": "f.py::a", "when": "start"},
        {"nodeid": "f.py::a", "when": "setup", "outcome": "passed"},
        {"nodeid": "f.py::a", "when": "call", "outcome": "passed"},
        {"nodeid": "f.py::a", "when": "teardown", "outcome": "passed"},
        {"nodeid": "g.py::b", "when": "start"},
        {"nodeid": "g.py::b", "when": "setup", "outcome": "passed"},
    ]) + '\n{"nodeid": "g.py::b", "wh')  # a line cut by the kill
    part = dict(part=0, tests=3, ids=["f.py::a", "g.py::b", "g.py::c"], events=events,
                status="timed_out", exit=-9, wall_s=540.0)
    summary = gpu_tests.summarise([part], {"procs": 1})
    assert summary["files"] == {
        "f.py": {"passed": 1, "failed": 0, "skipped": 0, "timed_out": 0, "not_run": 0},
        "g.py": {"passed": 0, "failed": 0, "skipped": 0, "timed_out": 1, "not_run": 1}}
    assert summary["timed_out"] == ["g.py::b"]
    assert summary["not_run"] == ["g.py::c"]
    assert not summary["complete"]
    running = gpu_tests.summarise([{**part, "status": "running"}], {})
    assert running["totals"]["pending"] == 2
    crashed = gpu_tests.summarise([{**part, "status": "crashed"}], {})
    assert crashed["failed"] == ["g.py::b"]  # the process died inside it


def test_stop_ends_the_part_and_its_children():
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                             "subprocess.Popen([sys.executable, '-c', 'import time; "
                             "time.sleep(60)']); time.sleep(60)"], start_new_session=True)
    gpu_tests._stop(proc)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):  # nothing left in the part's process group
        os.killpg(proc.pid, 0)


def test_gpu_tests_runner(tmp_path, monkeypatch):
    """End to end on a throw-away suite: counts per file and the failing id."""
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text(textwrap.dedent("""
        import pytest
        def test_pass(): pass
        def test_fail(): assert False
        def test_skip(): pytest.skip("no")
    """))
    (suite / "test_b.py").write_text("def test_other(): pass\n")
    out = tmp_path / "summary.json"
    args = argparse.Namespace(paths=["suite"], procs=2, deadline=300.0, out=str(out),
                              log=str(tmp_path / "logs"))
    assert gpu_tests.run(args) == 1
    summary = json.loads(out.read_text())
    zero = {"passed": 0, "failed": 0, "skipped": 0, "timed_out": 0, "not_run": 0}
    assert summary["files"] == {"suite/test_a.py": {**zero, "passed": 1, "failed": 1, "skipped": 1},
                                "suite/test_b.py": {**zero, "passed": 1}}
    assert summary["failed"] == ["suite/test_a.py::test_fail"]
    assert summary["complete"] and summary["collected"] == 4
    assert sorted(p["status"] for p in summary["parts"]) == ["failed", "passed"]
    assert summary["provenance"]["device"] in ("cpu", "cuda:0")
    # a second call runs what a first one left (timed out or not run), and only that
    first = dict(summary, timed_out=["suite/test_b.py::test_other"], not_run=[])
    (tmp_path / "first.json").write_text(json.dumps(first))
    again = tmp_path / "again.json"
    args = argparse.Namespace(paths=[], procs=1, deadline=300.0, out=str(again),
                              log=str(tmp_path / "logs2"), rest=str(tmp_path / "first.json"))
    assert gpu_tests.run(args) == 0
    rerun = json.loads(again.read_text())
    assert rerun["collected"] == 1 and rerun["files"] == {"suite/test_b.py": {**zero, "passed": 1}}
    (tmp_path / "first.json").write_text(json.dumps({"files": {}}))
    with pytest.raises(ValueError, match="rest: .* is not a gpu-tests summary"):
        gpu_tests.run(args)


def test_certified_figure_at_toy_size(tmp_path):
    """The fast preset's settings x 2 gates at one n, 2 replications x 3 starts, 4 iterations,
    float64 and float32 Gram on the same shards: every phase timed, every loss compared."""
    from benchmarks import certified_figure

    path = tmp_path / "fig.json"
    assert main(["certified-figure", "--fast", "--n-num", "1", "--reps", "2", "--max-iter", "4",
                 "--no-certificates", "--gram", "float64,float32", "--design-size", "500",
                 "--device", "cpu", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["provenance"]["device"] == "cpu" and out["complete"] and out["n"] == [1000]
    assert {"gbar", "data", "fit[float64]", "fit[float32]", "losses[float32]"} <= set(
        out["phases_s"])
    from moe_theory.config import load_config

    curves = 2 * len(load_config("nguyen2024", fast=True).settings)  # fitted gates x settings
    assert len(out["fits"]) == 2 * curves
    assert {f["gram"] for f in out["fits"]} == {"float64", "float32"}
    for v in ("float64", "float32"):
        assert out["per_gram"][v]["estimated_process_wall_s"] > out["per_gram"][v]["fit_s"] > 0
    agree = out["agreement"]["float32"]
    assert agree["compared"] == sum(len(r["values"]) for r in out["losses"]
                                    if r["gram"] == "float32") > 0
    assert math.isfinite(agree["max_rel_diff"]) and agree["holds"] == (agree["over_rtol"] == 0)
    assert certified_figure._grid(tuple(range(1, 16)), 10, 4) == [1, 4, 7, 10]


def test_certified_figure_agreement_counts():
    """Identical losses agree exactly; one loss off by 1% is the one counted over 1e-3."""
    from benchmarks.certified_figure import agreement

    fit = {"setting": "s", "gate": "g", "n": 10, "stop_test": ["gtol"] * 2, "n_iter": [3, 4],
           "fit_loss": [1.0, 2.0]}
    rec = {"setting": "s", "gate": "g", "n": 10, "loss": "D1", "values": [1.0, 2.0]}
    fits = [{**fit, "gram": "float64"}, {**fit, "gram": "tf32"}, {**fit, "gram": "float32"}]
    records = [{**rec, "gram": "float64"}, {**rec, "gram": "tf32"},
               {**rec, "gram": "float32", "values": [1.0, 2.02]}]
    out = agreement(records, fits, ["float64", "tf32", "float32"])
    assert out["tf32"]["max_rel_diff"] == 0 and out["tf32"]["holds"]
    assert out["float32"]["over_rtol"] == 1 and out["float32"]["worst"][0]["rep"] == 1
    assert abs(out["float32"]["max_rel_diff"] - 0.01) < 1e-12
    assert out["float32"]["by_convergence"]["both_converged"]["over_rtol"] == 1
    assert out["float32"]["by_convergence"]["not_both"]["compared"] == 0


def test_certified_figure_agreement_of_runs_cut_at_different_n():
    """Two precisions run in their own processes under --max-time-s reach different last n (an
    H200 run crashed on this): only the shared fits are compared, the others are counted."""
    from benchmarks.certified_figure import agreement

    def fit(n, gram):
        return {"setting": "s", "gate": "g", "n": n, "gram": gram, "stop_test": ["xtol"],
                "n_iter": [5], "fit_loss": [1.0]}

    fits = [fit(10, "float64"), fit(20, "float64"), fit(10, "tf32")]
    records = [{"setting": "s", "gate": "g", "n": n, "loss": "D1", "gram": g, "values": [1.0]}
               for n, g in ((10, "float64"), (20, "float64"), (10, "tf32"))]
    out = agreement(records, fits, ["float64", "tf32"])["tf32"]
    assert out["compared"] == 1 and out["holds"]
    assert out["fits_without_peer"] == {"float64": 1, "tf32": 0}


def test_certified_point_at_toy_size(tmp_path):
    path = tmp_path / "point.json"
    assert main(["certified-figure", "--n", "2e3", "--setting", "small-dense-relu", "--reps", "2",
                 "--max-iter", "3", "--gram", "float32", "--device", "cpu",
                 "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    fit = out["fits"]["float32"]
    assert out["n"] == 2000 and out["data_bytes"] == 2 * 2000 * (2 + 1) * 8
    assert 1 <= fit["batch_iterations"] <= 3 and fit["s_per_batch_iteration"] > 0


def test_warm_start_at_toy_size(tmp_path):
    path = tmp_path / "warm.json"
    assert main(["warm-start", "--config", "nguyen2024", "--setting", "small-dense-relu",
                 "--n", "600", "--sub", "200", "--reps", "2", "--device", "cpu",
                 "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert [out["fits"][name]["rows"] for name in ("cold", "sub", "warm")] == [600, 200, 600]
    assert all(len(out["fits"][name]["ssr"]) == 2 for name in out["fits"])
    assert len(out["warm_minus_cold_ssr_nu"]) == 2 and 0 <= out["same_minimum_share"] <= 1
    assert "D1" in out["losses"] and out["speedup"] > 0
    assert out["fits"]["cold"]["n_iter_sum"] == sum(out["fits"]["cold"]["n_iter"])
    with pytest.raises(SystemExit, match="--sub"):
        main(["warm-start", "--n", "600", "--sub", "600", "--device", "cpu"])


def test_certified_point_draws_its_data_in_blocks(monkeypatch):
    """Blocks of replications give the numbers of one draw (each replication is seeded alone)."""
    from benchmarks import certified_figure
    from moe_theory.config import load_config
    from moe_theory.sweep import shard_data

    config = load_config("nguyen2024", fast=True)
    setting = config.setting("small-dense-relu")
    monkeypatch.setattr(certified_figure, "DATA_BLOCK_BYTES", 2 * 300 * 3 * 8)  # 2 reps a block
    X, Y = certified_figure._blocked_data(config, setting, 300, "cpu")
    X1, Y1 = shard_data(config, setting, 300, 0, config.reps, "cpu")
    assert X.shape[0] == config.reps > 2 and torch.equal(X, X1) and torch.equal(Y, Y1)


def test_sass_counts_the_sample_loop_of_the_gradient_kernel(tmp_path):
    """Compiled for sm_90 with Triton's own ptxas, no GPU (in a process without the interpreter
    the tests run under): the loop holds the sigmoid's exponentials (MUFU) and the contractions'
    multiply-adds, and per sample it costs the loop's instructions times the program's threads
    over its samples."""
    from benchmarks import sass

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "s.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "sass", "--d", "2", "--k", "2",
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "per sample" in done.stdout
    saved = json.loads(out.read_text())
    mix, launch = saved["loop_mix"], saved["launch"]
    assert mix["MUFU"] >= 2 and mix["FFMA"] > 0 and mix["BRA"] == 1
    assert launch["d"] == 2 and launch["SPLIT"] >= 1 and launch["registers"] > 0
    per_thread = saved["loop_instructions_per_thread"]
    assert per_thread == sum(mix.values())
    assert saved["loop_instructions_per_sample"] == pytest.approx(
        per_thread * 32 * launch["num_warps"] / launch["BN"])
    # a straight-line program has no loop
    assert not sass.loop_mix("        /*0000*/                   EXIT ;\n")
    # under the interpreter there is no compiler: said, not a traceback
    assert main(["sass", "--d", "2", "--k", "2"]) == 2


def test_certified_figure_with_certificates_and_the_scipy_baseline(tmp_path, monkeypatch):
    """The paths the toy run above leaves out: the reference certificates (through
    moe_theory.sweep.certify, the call that brings the fits' losses and box; recorded here, not
    computed: they take minutes and tests/moe_theory/test_certificates.py computes them) and
    the scipy baseline beside the run (computed)."""
    from benchmarks import certified_figure

    calls = []
    monkeypatch.setattr(certified_figure, "certify",
                        lambda config, folder, **kw: calls.append((config.name, kw)) or [])
    path = tmp_path / "fig.json"
    assert main(["certified-figure", "--fast", "--n-num", "1", "--reps", "2", "--max-iter", "4",
                 "--gram", "float64", "--design-size", "500", "--scipy", "--device", "cpu",
                 "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["complete"] and "certificates" in out["phases_s"]
    assert calls == [("nguyen2024", {"device": "cpu", "backend": "auto"})]
    (summary,) = out["scipy_baseline"].values()
    assert "error" not in summary, summary
    assert summary["scipy_s_per_evaluation"] > 0


def test_test_suite_records_pytests_counts_and_status(tmp_path):
    """The timing of a suite carries pytest's counts and exit status, so a failed suite's time
    is never read as a passing one's."""
    from benchmarks.test_suite import parse_summary

    assert parse_summary("....\n1133 passed, 245 skipped in 578.41s (0:09:38)\n") == {
        "counts": {"passed": 1133, "skipped": 245}, "pytest_s": 578.41}
    assert parse_summary("no summary here") == {}
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text(
        "import pytest\ndef test_pass(): pass\ndef test_skip(): pytest.skip('no')\n"
        "def test_fail(): assert False\n")
    out = tmp_path / "run.json"
    code = main(["test-suite", "--json", str(out), "--", str(suite), "-p", "no:xdist",
                 "-p", "no:cacheprovider"])
    record = json.loads(out.read_text())
    assert code == record["returncode"] == 1
    assert record["counts"] == {"failed": 1, "passed": 1, "skipped": 1}
    assert record["command"].endswith(f"{suite} -p no:xdist -p no:cacheprovider")
    assert record["wall_s"] >= record["pytest_s"] > 0 and record["provenance"]["git_commit"]


def test_the_first_command_is_judged_against_the_committed_preset(tmp_path):
    """The first-command benchmark calls a run the committed preset's only when it printed the
    committed table line for line (but for the run's own time) and drew the same figure."""
    from benchmarks.first_command import FIGURES, PRINTED, compare

    repo = Path(__file__).resolve().parents[2]
    committed = (repo / PRINTED).read_text()
    figure = tmp_path / FIGURES[0]
    figure.parent.mkdir(parents=True)
    figure.write_bytes((repo / FIGURES[1]).read_bytes())
    (tmp_path / PRINTED).parent.mkdir(parents=True)
    (tmp_path / PRINTED).write_text(committed)
    (tmp_path / FIGURES[1]).write_bytes(figure.read_bytes())
    own_time = committed.replace(" s on cpu", "0 s on cpu")  # another run's time: still the same
    same = compare(own_time, tmp_path)
    assert same["printed_table"]["same"] and same["figure"]["same"]
    lines = committed.splitlines()
    lines[5] = lines[5] + " "
    moved = compare("\n".join(lines), tmp_path)
    assert not moved["printed_table"]["same"] and moved["printed_table"]["first_difference"] == 6
    figure.write_bytes(b"another figure")
    assert not compare(committed, tmp_path)["figure"]["same"]
