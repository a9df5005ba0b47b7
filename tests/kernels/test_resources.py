"""The shared-memory model of the MoE kernels and what the dispatch does with it (CPU only).

The interpreter has no shared-memory limit, so CI checks the model against numbers measured on
the compiler (``metadata.shared`` of Triton 3.9 compiling the kernels for sm_90) and the choices
it makes against the H100/H200 limit; the launches themselves are checked by the GPU test run.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

import kernels.moe as dispatch
from kernels.moe import model, resources, triton_gram
from kernels.moe import triton_pass as tp
from kernels.moe.torch_pass import moe_pass as reference_moe_pass

LIMIT = resources.HOPPER_SHARED_MEMORY
F64, F32 = torch.float64, torch.float32
#: The two shapes whose Gauss-Newton kernel failed on an H200 (315392 bytes at the defaults).
FAILED = [("sigmoid", "monomial", "poly3", 3, 9), ("softmax", "quadratic", "gelu", 3, 9)]


def _config(block_n: int, tile_max: int, num_stages: int) -> tp.LaunchConfig:
    return tp.LaunchConfig(block_n=block_n, num_warps=4, num_stages=num_stages,
                           tile_max=tile_max, waves=4)


DEFAULT_GN = _config(128, 128, 2)
DEFAULT_GRADIENT = tp.LaunchConfig(block_n=128, num_warps=4, num_stages=1, waves=16)

#: (gate, score, expert, d, k, dtype, config, gauss_newton, measured bytes, model / measured):
#: metadata.shared of Triton 3.9 for sm_90; the model must never be below it.
MEASURED = [
    ("sigmoid", "monomial", "poly3", 3, 9, F64, DEFAULT_GN, True, 315392, 1.0),
    ("softmax", "quadratic", "gelu", 3, 9, F64, DEFAULT_GN, True, 315392, 1.0),
    ("sigmoid", "monomial", "poly3", 3, 9, F32, DEFAULT_GN, True, 157696, 1.0),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(128, 128, 1), True, 262144, 1.0),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(64, 128, 2), True, 157696, 1.0),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(32, 128, 2), True, 78848, 1.0),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(128, 64, 2), True, 184320, 1.0),
    ("sigmoid", "monomial", "poly3", 3, 9, F64, _config(64, 64, 2), True, 92160, 1.0),
    ("softmax", "quadratic", "relu", 8, 9, F64, DEFAULT_GN, True, 671744, 1.0),
    ("softmax", "quadratic", "relu", 8, 9, F64, _config(128, 128, 1), True, 270336, 1.0),
    ("softmax", "quadratic", "relu", 8, 9, F32, DEFAULT_GN, True, 339968, 1.18),
    ("sigmoid", "linear", "gelu", 32, 9, F64, DEFAULT_GRADIENT, False, 57344, 1.0),
    ("sigmoid", "linear", "gelu", 128, 64, F64, DEFAULT_GRADIENT, False, 327680, 1.0),
    ("sigmoid", "linear", "gelu", 128, 64, F32, DEFAULT_GRADIENT, False, 262144, 1.0),
    ("sigmoid", "quadratic", "gelu", 8, 64, F64,
     tp.LaunchConfig(block_n=16, num_warps=4, num_stages=1, split=8, waves=16), False, 43008, 1.34),
]


@pytest.mark.parametrize("case", MEASURED, ids=lambda c: "-".join(map(str, c[:6])))
def test_model_is_exact_or_above_on_measured_kernels(case):
    gate, score, expert, d, k, dtype, config, gauss_newton, measured, ratio = case
    predicted = tp.staged_elements(gate, score, expert, d, k, dtype, config,
                                   gauss_newton=gauss_newton) * dtype.itemsize
    assert predicted >= measured
    assert predicted == pytest.approx(ratio * measured, rel=0.01)


@pytest.mark.parametrize(("dtype", "stages", "measured"), [(F64, 3, 147968), (F32, 1, 32768)])
def test_gram_model_is_above_measured(dtype, stages, measured):
    """Per-feature Gram kernel at d = 128 (the widest X tile), the default blocks."""
    predicted = triton_gram.staged_elements(triton_gram.GramConfig(num_stages=stages), 128)
    assert measured <= predicted * dtype.itemsize <= 1.12 * measured


def test_failing_shapes_choose_a_configuration_that_fits():
    for gate, score, expert, d, k in FAILED:
        default = tp.default_config(gate, score, expert, d, k, gauss_newton=True)
        assert tp.staged_elements(gate, score, expert, d, k, F64, default,
                                  gauss_newton=True) * 8 == 315392 > LIMIT
        chosen = tp.pick_config(gate, score, expert, d, k, F64, gauss_newton=True,
                                shared_memory=LIMIT)
        # half the samples per tile, as wide blocks: 157696 bytes, measured
        assert chosen == _config(64, 128, 2)
        assert tp.staged_elements(gate, score, expert, d, k, F64, chosen,
                                  gauss_newton=True) * 8 == 157696
        assert tp.unsupported_reason(score, d, k, F64, gate=gate, expert=expert) is None


def test_defaults_are_kept_where_they_fit():
    """Shapes that ran before keep their configuration (and results) unchanged."""
    for gate, score, expert, d, k, dtype, gn in [
        ("sigmoid", "linear", "relu", 32, 9, F64, False),
        ("softmax", "quadratic", "relu", 3, 4, F64, True),
        ("sigmoid", "monomial", "poly3", 3, 9, F32, True),
        ("sigmoid", "linear", "gelu", 128, 32, F32, False),
    ]:
        assert tp.pick_config(gate, score, expert, d, k, dtype, gauss_newton=gn,
                              shared_memory=LIMIT) == tp.default_config(gate, score, expert, d,
                                                                        k, gauss_newton=gn)
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
