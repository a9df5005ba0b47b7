"""The shared-memory model of the MoE kernels and what the dispatch does with it (CPU only).

The interpreter has no shared-memory limit, so CI checks the model against the compiler: the
calibration grid (``python -m benchmarks shared-memory``: ``metadata.shared`` of Triton 3.6 and 3.9
compiling the kernels for sm_90, committed under ``benchmarks/results/shared_memory/``) row by row,
and a few shapes compiled here; and the choices the model makes against the H100/H200 limit. The
launches themselves are checked by the GPU test run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings
from pathlib import Path

import pytest
import torch

import kernels.moe as dispatch
from benchmarks import shared_memory
from kernels.moe import model, resources, triton_gram
from kernels.moe import triton_pass as tp
from kernels.moe.torch_pass import moe_pass as reference_moe_pass

LIMIT = resources.HOPPER_SHARED_MEMORY
F64, F32 = torch.float64, torch.float32
#: The two shapes whose Gauss-Newton kernel failed on an H200 (315392 bytes at the defaults).
FAILED = [("sigmoid", "monomial", "poly3", 3, 9), ("softmax", "quadratic", "gelu", 3, 9)]
CALIBRATION = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "results"
                      / "shared_memory").glob("*.json"))


def _config(block_n: int, tile_max: int, num_stages: int) -> tp.LaunchConfig:
    return tp.LaunchConfig(block_n=block_n, num_warps=4, num_stages=num_stages,
                           tile_max=tile_max, waves=4)


def _compiled_rows(path: Path) -> list[dict]:
    return [row for row in json.loads(path.read_text())["rows"] if row["actual"] is not None]


def _name(row: dict) -> str:
    c = row["config"]
    return (f"{row['kernel']} {row['gate']} {row['score']} {row['expert']} d={row['d']} "
            f"k={row['k']} {row['dtype']} block_n={c['block_n']} stages={c['num_stages']} "
            f"tile_max={c['tile_max']}")


def test_calibration_covers_both_triton_versions():
    versions = {json.loads(path.read_text())["compiler_triton"] for path in CALIBRATION}
    assert {"3.6.0", "3.9.0"} <= versions


@pytest.mark.parametrize("path", CALIBRATION, ids=lambda path: path.stem)
def test_model_is_at_or_above_every_compiled_kernel(path):
    """Every kernel of the calibration grid: the prediction is at least what the compiler
    allocated."""
    rows = _compiled_rows(path)
    assert len(rows) >= 100, path.name
    under = [(_name(row), predicted, row["actual"]) for row in rows
             if (predicted := shared_memory.predicted_bytes(row)) < row["actual"]]
    assert not under, under[:5]


def test_model_overestimates_the_larger_version_modestly():
    """Kernels compiled by both Triton versions, above 16 KiB (below, a few KiB cannot change a
    choice): the prediction is at most :data:`resources.MAX_OVERESTIMATE` times the larger of
    the two allocations (the versions differ: 3.9 stages the ``(QP, BN)`` quadratic-feature tile
    of the gradient kernel whole, 3.6 does not)."""
    actual: dict[str, list[int]] = {}
    rows = {}
    for path in CALIBRATION:
        for row in _compiled_rows(path):
            actual.setdefault(_name(row), []).append(row["actual"])
            rows[_name(row)] = row
    both = {name: max(sizes) for name, sizes in actual.items() if len(sizes) >= 2}
    assert len(both) >= 100
    over = [(name, predicted, size) for name, size in both.items() if size > 16384
            and (predicted := shared_memory.predicted_bytes(rows[name]))
            > resources.MAX_OVERESTIMATE * size]
    assert not over, over[:5]


@pytest.mark.parametrize("path", CALIBRATION, ids=lambda path: path.stem)
def test_chosen_configurations_compiled_within_the_hopper_limit(path):
    """For every shape and kernel of the grid, the configuration ``pick_config`` chooses now fits
    the H100/H200 as compiled. A complete run must hold every choice (if not, the model changed:
    rerun ``python -m benchmarks shared-memory --reuse``); a run cut short, at least half."""
    rows = json.loads(path.read_text())["rows"]
    measured = {_name(row): row for row in rows if row["actual"] is not None or row.get("error")}
    complete = json.loads(path.read_text())["summary"]["complete"]
    shapes = {(r["gate"], r["score"], r["expert"], r["d"], r["k"], r["dtype"], r["kernel"])
              for r in rows if r["role"] != "earlier"}
    missing, over, checked = [], [], 0
    for gate, score, expert, d, k, dtype, kernel in sorted(shapes):
        chosen = tp.pick_config(gate, score, expert, d, k, getattr(torch, dtype),
                                gauss_newton=kernel == "gauss_newton", shared_memory=LIMIT)
        if chosen is None:
            continue
        name = _name(dict(gate=gate, score=score, expert=expert, d=d, k=k, dtype=dtype,
                          kernel=kernel, config=dataclasses.asdict(chosen)))
        found = measured.get(name)
        if found is None:
            missing.append(name)
        elif found["actual"] is not None:
            checked += 1
            if found["actual"] > LIMIT:
                over.append((name, found["actual"]))
    assert not over, over
    if complete:
        assert not missing, missing[:5]
    else:
        assert checked >= len(missing), missing[:5]


def _compiler_for_sm90() -> str | None:
    """Why the installed Triton cannot compile for sm_90 here (None when it can)."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        make_backend(GPUTarget("cuda", 90, 32))
    except Exception as e:  # no CUDA backend in this Triton build
        return f"no Triton CUDA backend: {e}"
    return None


#: Shapes compiled here, each at the configuration pick_config chooses: the shape whose
#: Gauss-Newton kernel stages its quadratic features without dots (issue 19: 573440 bytes at the
#: defaults), one of the two earlier H200 failures, and a gradient kernel with tf32x3 dots.
COMPILED = [("softmax", "monomial", "constant", 17, 1, F64, True),
            ("sigmoid", "monomial", "poly3", 3, 9, F64, True),
            ("sigmoid", "linear", "relu", 32, 9, F32, False)]


@pytest.mark.skipif(_compiler_for_sm90() is not None, reason="needs Triton's CUDA backend")
def test_compiled_shared_memory_is_within_the_model_and_the_limit():
    points = []
    for gate, score, expert, d, k, dtype, gn in COMPILED:
        chosen = tp.pick_config(gate, score, expert, d, k, dtype, gauss_newton=gn,
                                shared_memory=LIMIT)
        points.append(dict(gate=gate, score=score, expert=expert, d=d, k=k,
                           dtype=str(dtype).removeprefix("torch."),
                           kernel="gauss_newton" if gn else "gradient",
                           config=dataclasses.asdict(chosen)))
    actual = shared_memory.compile_all([shared_memory.capture(p) for p in points], timeout=300)
    for point, shared in zip(points, actual, strict=True):
        assert shared is not None, _name(point)
        assert shared <= shared_memory.predicted_bytes(point), _name(point)
        assert shared <= LIMIT, _name(point)


@pytest.mark.parametrize(("dtype", "stages", "measured"), [(F64, 3, 147968), (F32, 1, 32768)])
def test_gram_model_is_above_measured(dtype, stages, measured):
    """Per-feature Gram kernel at d = 128 (the widest X tile), the default blocks."""
    predicted = triton_gram.staged_elements(triton_gram.GramConfig(num_stages=stages), 128)
    assert measured <= predicted * dtype.itemsize <= 1.12 * measured


def test_failing_shapes_choose_a_configuration_that_fits():
    """The H200 failures of issue 19 (315392 bytes at the defaults for the first two, 573440 for
    the constant expert at d = 17, k = 1) choose fewer pipeline stages or samples per tile; the
    compiled size of the choice is checked against the limit by the calibration grid and the
    compile test."""
    for gate, score, expert, d, k in [*FAILED, ("softmax", "monomial", "constant", 17, 1)]:
        default = tp.default_config(gate, score, expert, d, k, gauss_newton=True)
        assert not resources.fits(tp.staged_elements(gate, score, expert, d, k, F64, default,
                                                     gauss_newton=True), 8, LIMIT)
        chosen = tp.pick_config(gate, score, expert, d, k, F64, gauss_newton=True,
                                shared_memory=LIMIT)
        assert chosen is not None
        assert chosen.block_n * chosen.num_stages < default.block_n * default.num_stages
        assert tp.unsupported_reason(score, d, k, F64, gate=gate, expert=expert) is None


DEFAULT_GN = _config(128, 128, 2)
DEFAULT_GRADIENT = tp.LaunchConfig(block_n=128, num_warps=4, num_stages=1, waves=16)

#: Kernels measured outside the calibration grid (gate, score, expert, d, k, dtype, config,
#: gauss_newton, metadata.shared of Triton 3.9 for sm_90): the gradient kernel at the kernels'
#: largest d and k, the Gauss-Newton kernel at other block sizes.
MEASURED = [
    ("sigmoid", "monomial", "poly3", 3, 9, F64, DEFAULT_GN, True, 315392),
    ("softmax", "quadratic", "gelu", 3, 9, F64, DEFAULT_GN, True, 315392),
    ("sigmoid", "monomial", "poly3", 3, 9, F32, DEFAULT_GN, True, 157696),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(128, 128, 1), True, 262144),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(64, 128, 2), True, 157696),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(32, 128, 2), True, 78848),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(128, 64, 2), True, 184320),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(64, 64, 2), True, 92160),
    ("softmax", "quadratic", "relu", 8, 9, F64, DEFAULT_GN, True, 671744),
    ("softmax", "quadratic", "relu", 8, 9, F64, _config(128, 128, 1), True, 270336),
    ("softmax", "quadratic", "relu", 8, 9, F32, DEFAULT_GN, True, 339968),
    ("sigmoid", "linear", "gelu", 32, 9, F64, DEFAULT_GRADIENT, False, 57344),
    ("sigmoid", "linear", "gelu", 128, 64, F64, DEFAULT_GRADIENT, False, 327680),
    ("sigmoid", "linear", "gelu", 128, 64, F32, DEFAULT_GRADIENT, False, 262144),
    ("sigmoid", "quadratic", "gelu", 8, 64, F64,
     tp.LaunchConfig(block_n=16, num_warps=4, num_stages=1, split=8, waves=16), False, 43008),
]


@pytest.mark.parametrize("case", MEASURED, ids=lambda c: "-".join(map(str, c[:6])))
def test_model_is_at_or_above_kernels_measured_outside_the_grid(case):
    gate, score, expert, d, k, dtype, config, gauss_newton, measured = case
    predicted = tp.staged_elements(gate, score, expert, d, k, dtype, config,
                                   gauss_newton=gauss_newton) * dtype.itemsize
    assert measured <= predicted <= resources.MAX_OVERESTIMATE * measured


def test_gradient_kernel_defaults_are_kept():
    """The gradient kernel keeps its measured defaults (and results) for linear scores at
    d <= 32 and for every score at d <= 8, k <= 9; the Gram kernel its three stages."""
    for gate, score, expert, dtype in itertools.product(model.GATES, model.SCORES,
                                                         ("relu", "constant", "poly3"), (F32, F64)):
        for d, k in itertools.product((1, 3, 8, 17, 32), (1, 2, 9)):
            if (score != "linear" and d > 8) or tp.unsupported_reason(score, d, k, dtype):
                continue
            assert tp.pick_config(gate, score, expert, d, k, dtype, gauss_newton=False,
                                  shared_memory=LIMIT) == tp.default_config(
                gate, score, expert, d, k, gauss_newton=False), (gate, score, expert, d, k, dtype)
    assert triton_gram.pick_config(128, F64, LIMIT) == triton_gram.GramConfig(num_stages=3)


GRID = [
    (gate, score, expert, d, k, dtype)
    for gate, score, expert, dtype in itertools.product(
        model.GATES, model.SCORES, ("relu", "constant", "poly3"), (F32, F64))
    for d in (*range(1, 9), 16, 32, tp.MAX_D)
    for k in (*range(1, 10), 16, tp.MAX_K)
    if not tp.unsupported_reason(score, d, k, dtype)
]


def test_every_shape_gets_a_configuration_within_the_hopper_limit():
    """Score x gate x expert at d <= 8 and up to the kernels' limits, k <= 9 and up: the chosen
    configuration's predicted shared memory leaves the headroom of 232448 bytes; at d <= 8,
    k <= 9 every shape has one (no fall back to the reference)."""
    for (gate, score, expert, d, k, dtype), jacobian_gn in itertools.product(GRID, (True, False)):
        pairs = jacobian_gn and model.score_has_quadratic(score)
        chosen = tp.pick_config(gate, score, expert, d, k, dtype, gauss_newton=pairs,
                                shared_memory=LIMIT)
        if chosen is None:
            assert d > 8 or k > 9, (gate, score, expert, d, k, dtype, pairs)
            continue
        predicted = tp.staged_elements(gate, score, expert, d, k, dtype, chosen,
                                       gauss_newton=pairs) * dtype.itemsize
        assert predicted <= resources.HEADROOM * LIMIT, (gate, score, expert, d, k, dtype, pairs)


def _problem(gate="sigmoid", score="monomial", expert="poly3", d=3, k=9, n=40):
    g = torch.Generator().manual_seed(7)
    ex = model.Expert(expert)
    X = torch.rand(2, n, d, generator=g, dtype=F64) * 2 - 1
    Y = torch.randn(2, n, generator=g, dtype=F64)
    gp = torch.randn(2, k, model.gate_dim(score, d), generator=g, dtype=F64)
    ep = torch.randn(2, k, ex.dim(d), generator=g, dtype=F64) / d**0.5
    gp[:, model.n_free_gates(gate, k):] = 0
    return (X, Y, gp, ep), dict(gate=gate, score=score, expert=ex)


def test_auto_falls_back_and_warns_once_when_a_launch_runs_out_of_resources(monkeypatch):
    """The last resort behind the model: a launch that raises OutOfResources runs the reference,
    with one warning naming the shape, and the shape is not launched again."""
    launches = []

    def out_of_resources(*args, **kwargs):
        launches.append(1)
        raise tp.OutOfResources(315392, LIMIT, "shared memory")

    monkeypatch.setattr(dispatch, "resolve_backend", lambda backend, device: "triton")
    monkeypatch.setattr(tp, "triton_moe_pass", out_of_resources)
    monkeypatch.setattr(dispatch, "_OUT_OF_RESOURCES", set())
    inputs, kw = _problem()
    want = reference_moe_pass(*inputs, **kw)
    with pytest.warns(RuntimeWarning, match=r"gate='sigmoid', score='monomial', expert='poly3', "
                                             r"d=3, k=9, torch.float64"):
        got = dispatch.moe_pass(*inputs, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = dispatch.moe_pass(*inputs, **kw)
    assert launches == [1]
    for a, b, c in zip(got, again, want, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
    with pytest.raises(tp.OutOfResources):
        dispatch.moe_pass(*inputs, **kw, backend="triton")


def test_an_unfittable_shape_raises_under_triton_and_runs_the_reference_under_auto(monkeypatch):
    """A device with 4 KiB of shared memory per block fits none of the configurations of the
    Gauss-Newton kernel at d = 3, k = 9 (the smallest stages 16 x (2 x 16) float64 elements)."""
    monkeypatch.setattr(resources, "device_limit", lambda device: 4096)
    monkeypatch.setattr(dispatch, "resolve_backend", lambda backend, device: "triton")
    inputs, kw = _problem()
    with pytest.raises(ValueError, match=r"gate='sigmoid', score='monomial', expert='poly3', "
                                         r"d=3, k=9, torch.float64 in the 4096 bytes"):
        dispatch.moe_pass(*inputs, **kw, backend="triton")
    monkeypatch.setattr(tp, "triton_moe_pass", pytest.fail)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = dispatch.moe_pass(*inputs, **kw)
    for a, b in zip(got, reference_moe_pass(*inputs, **kw), strict=True):
        assert torch.equal(a, b)


def test_gram_kernel_configuration_shrinks_to_the_limit():
    base = triton_gram.pick_config(128, F64, None)
    assert base == triton_gram.GramConfig(num_stages=3)
    small = triton_gram.pick_config(128, F64, 48 * 1024)
    assert small is not None and small.num_stages < 3
    assert triton_gram.staged_elements(small, 128) * 8 <= resources.HEADROOM * 48 * 1024
    assert triton_gram.pick_config(128, F64, 1024) is None
