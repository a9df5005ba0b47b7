"""The Triton MoE least-squares pass against the PyTorch reference (CPU: Triton's interpreter).

Tolerances (normwise relative error against the reference evaluated in float64 on the same data):
- float64 inputs: 1e-12. Both sides compute in float64 and differ only in summation order; the
  observed errors are ~1e-15.
- float32 inputs: 1e-5. The kernel computes in float32 (exact ``ieee`` products under the
  interpreter, as on the GPU for everything but ``J^T J``) and reduces in float64; a float32 result
  carries ~6e-8 relative rounding per operation, amplified by the sums over n <= 130 samples and
  the cancellation inside ``J^T r``; the observed errors are ~2e-7.
"""

from __future__ import annotations

import itertools
import os
import zlib

import pytest
import torch

from kernels.moe import gram, moe_pass, triton_gram
from kernels.moe import triton_pass as tp
from kernels.moe.torch_pass import jacobian_coefficients as reference_jacobian_coefficients
from kernels.moe.torch_pass import moe_pass as reference_moe_pass
from kernels.moe.torch_pass import n_free_gates
from moe_theory import models
from tests.kernels.poison import nan_buffers

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1",
)

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
#: float32 ``J^T J`` of the pair programs on a GPU: tf32 products (11-bit operands, ~5e-4 relative
#: per product; the benchmark checks 3e-3 at n = 1e5). The interpreter multiplies in ieee.
GPU_TF32_JTJ_TOLERANCE = 3e-3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXPERTS = ("linear", "relu", "gelu", "tanh", "poly2", "constant")


def _seed(*coords) -> int:
    return zlib.crc32(repr(coords).encode())


def _problem(gate, score, expert, d, k, R, n, dtype, seed):
    """Random data and parameters; the pinned softmax atom's score row is zero, as callers pass."""
    g = torch.Generator().manual_seed(seed)
    ex = models.get_expert(expert)
    X = torch.rand(R, n, d, generator=g, dtype=torch.float64) * 2 - 1
    Y = torch.randn(R, n, generator=g, dtype=torch.float64)
    gp = torch.randn(R, k, models.gate_dim(score, d), generator=g, dtype=torch.float64)
    ep = torch.randn(R, k, ex.dim(d), generator=g, dtype=torch.float64) / d**0.5
    gp[:, n_free_gates(gate, k):] = 0
    return [t.to(DEVICE, dtype) for t in (X, Y, gp, ep)], ex


@pytest.fixture
def poisoned(monkeypatch):
    """Partial-sum buffers start as NaN; returns the list of buffers the kernel had to fill."""
    return nan_buffers(monkeypatch, tp, triton_gram)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _check(gate, score, expert, d, k, R, n, dtype, poisoned, *, jacobian=True, gauss_newton=True,
           config=None):
    (X, Y, gp, ep), ex = _problem(gate, score, expert, d, k, R, n, dtype,
                                  _seed(gate, score, expert, d, k, R, n, str(dtype)))
    out = tp.triton_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=ex,
                             jacobian=jacobian, gauss_newton=gauss_newton, config=config)
    ref = reference_moe_pass(X.double(), Y.double(), gp.double(), ep.double(), gate=gate,
                             score=score, expert=ex, jacobian=jacobian, gauss_newton=gauss_newton,
                             structured=False)
    assert poisoned and all(not buf.isnan().any() for buf in poisoned), "unwritten partial sums"
    for name, got, want in zip(ref._fields, out, ref, strict=True):
        if want is None:
            assert got is None, name
            continue
        assert got.shape == want.shape and got.dtype == dtype, name
        tol = TOLERANCE[dtype]
        if name == "jtj" and dtype == torch.float32 and X.is_cuda:
            tol = GPU_TF32_JTJ_TOLERANCE
        assert _rel(got, want) <= tol, (name, _rel(got, want))


# Every gate x score x expert at d in {1, 3}, k in {1, 2}, R in {1, 5}, cycled so that each value
# meets every other; n = 37..130 is never a multiple of the block (16 under the interpreter).
SMALL = [
    (gate, score, expert, (1, 3)[i % 2], (1, 2)[i // 2 % 2], (1, 5)[i // 4 % 2], 37 + 7 * (i % 13))
    for i, (gate, score, expert) in enumerate(
        itertools.product(models.GATES, models.SCORES, EXPERTS)
    )
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("gate,score,expert,d,k,R,n", SMALL)
def test_small_shapes(gate, score, expert, d, k, R, n, dtype, poisoned):
    _check(gate, score, expert, d, k, R, n, dtype, poisoned)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("gate,score,expert,d,k,R,n", [
    ("sigmoid", "linear", "relu", 3, 9, 5, 61),
    ("softmax", "quadratic", "gelu", 3, 9, 1, 45),
    ("sigmoid", "monomial", "poly3", 3, 9, 1, 50),
    ("softmax", "linear", "tanh", 32, 9, 1, 70),
    ("sigmoid", "linear", "constant", 32, 9, 1, 41),
])
def test_nine_atoms(gate, score, expert, d, k, R, n, dtype, poisoned):
    _check(gate, score, expert, d, k, R, n, dtype, poisoned)


@pytest.mark.parametrize("score", ["linear", "monomial"])
def test_single_softmax_constant_atom_past_one_block_of_features(score, poisoned):
    """k = 1 softmax, constant expert: no atom has linear features, and d = 17 is wider than the
    16-wide block of J (the layout once divided its atoms into zero-width groups)."""
    _check("softmax", score, "constant", 17, 1, 2, 40, torch.float64, poisoned)


@pytest.mark.parametrize("gate,score,expert,d,k", [
    ("sigmoid", "linear", "gelu", 32, 2),
    ("softmax", "monomial", "relu", 3, 2),
])
@pytest.mark.parametrize("jacobian,gauss_newton", [(True, False), (False, False)])
def test_without_gauss_newton(gate, score, expert, d, k, jacobian, gauss_newton, poisoned):
    _check(gate, score, expert, d, k, 5, 53, torch.float32, poisoned, jacobian=jacobian,
           gauss_newton=gauss_newton)


@pytest.mark.parametrize("split,acc3", [(2, True), (4, False), (8, True)])
@pytest.mark.parametrize("gate,score,expert,k", [
    ("sigmoid", "linear", "relu", 3), ("softmax", "quadratic", "gelu", 9),
])
def test_gradient_kernel_atom_split(gate, score, expert, k, split, acc3, poisoned):
    """The gradient kernel with each sample's atoms spread over ``split`` lanes."""
    (X, Y, gp, ep), ex = _problem(gate, score, expert, 3, k, 2, 75, torch.float64,
                                  _seed("split", gate, score, split, acc3))
    cfg = tp.LaunchConfig(block_n=32 // split, num_warps=1, num_stages=1, acc3=acc3, split=split)
    out = tp.triton_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=ex, gauss_newton=False,
                             config=cfg)
    ref = reference_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=ex, gauss_newton=False)
    assert _rel(out.loss, ref.loss) <= TOLERANCE[torch.float64]
    assert _rel(out.jtr, ref.jtr) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("gate,score,expert", [
    ("sigmoid", "linear", "relu"), ("softmax", "quadratic", "gelu"),
    ("softmax", "monomial", "tanh"), ("sigmoid", "quadratic", "poly3"),
    ("softmax", "linear", "constant"),
])
def test_reference_gradient_matches_autograd(gate, score, expert):
    """The oracle itself: ``d loss / d theta = -2 J^T r`` in the free-parameter layout."""
    d, k, R, n = 3, 3, 2, 40
    (X, Y, gp, ep), ex = _problem(gate, score, expert, d, k, R, n, torch.float64,
                                  _seed("autograd", gate, score, expert))
    X, Y, gp, ep = (t.cpu() for t in (X, Y, gp, ep))
    kf = n_free_gates(gate, k)
    free_gate = gp[:, :kf].clone().requires_grad_(True)
    free_expert = ep.clone().requires_grad_(True)
    gp_full = torch.cat([free_gate, gp[:, kf:]], dim=1)
    f = models.regression_function(X, gp_full, free_expert, gate=gate, score=score, expert=ex)
    ((Y - f) ** 2).sum().backward()
    grad = torch.cat([free_gate.grad.reshape(R, -1), free_expert.grad.reshape(R, -1)], dim=1)
    ref = reference_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=ex)
    torch.testing.assert_close(-2 * ref.jtr, grad, rtol=1e-12, atol=1e-12)


def test_dispatch_runs_the_kernel(poisoned):
    (X, Y, gp, ep), ex = _problem("sigmoid", "linear", "relu", 3, 2, 2, 40, torch.float64, 7)
    out = moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert=ex, backend="triton")
    ref = reference_moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert=ex)
    assert poisoned, "the Triton kernel did not run"
    assert _rel(out.jtj, ref.jtj) <= TOLERANCE[torch.float64]


def test_unsupported_shape_is_named():
    (X, Y, gp, ep), ex = _problem("sigmoid", "quadratic", "relu", 32, 9, 1, 20, torch.float32, 3)
    with pytest.raises(ValueError, match="score"):
        tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score="quadratic", expert=ex)


def test_bad_inputs_name_the_field():
    (X, Y, gp, ep), ex = _problem("sigmoid", "linear", "relu", 3, 2, 1, 20, torch.float32, 5)
    with pytest.raises(ValueError, match="Y"):
        tp.triton_moe_pass(X, Y.double(), gp, ep, gate="sigmoid", score="linear", expert=ex)
    with pytest.raises(ValueError, match="expert_params"):
        tp.triton_moe_pass(X, Y, gp, ep[..., :2], gate="sigmoid", score="linear", expert=ex)


@pytest.mark.parametrize("score,gram,buffers", [("linear", "torch", 3), ("linear", "triton", 3),
                                                ("quadratic", "torch", 2)])
def test_gauss_newton_route(score, gram, buffers, poisoned):
    """Linear scores take J^T J from the coefficients U (buffers: partial sums, U, then the
    role-pair products W for the cuBLAS product or the Triton Gram kernel's partials); quadratic
    ones from the pair programs (partial sums, J^T J tiles)."""
    config = tp.LaunchConfig(block_n=16, num_warps=1, num_stages=1, waves=2, gram=gram)
    _check("softmax", score, "relu", 3, 4, 2, 77, torch.float64, poisoned, config=config)
    shapes = [tuple(b.shape) for b in poisoned]
    assert len(poisoned) == buffers, shapes
    if score == "linear":
        assert shapes[1] == (2, 3 + 4, 77), shapes


def test_gram_rejects_wrong_coefficients():
    X = torch.zeros(2, 5, 3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="U: must have shape"):
        triton_gram.gram_jtj(torch.zeros(2, 4, 5, dtype=torch.float64, device=DEVICE), X,
                             gate="sigmoid", expert="relu", k=3)


@pytest.mark.parametrize("gate,expert,d,k", [("sigmoid", "gelu", 3, 2), ("softmax", "constant", 1, 3),
                                             ("softmax", "poly2", 5, 2)])
def test_gram_kernel_alone(gate, expert, d, k, poisoned):
    """The Gram kernel on the reference's coefficients: J^T J of the reference, float64 (1e-12)."""
    (X, Y, gp, ep), ex = _problem(gate, "linear", expert, d, k, 3, 45, torch.float64,
                                  _seed("gram", gate, expert, d, k))
    U = reference_jacobian_coefficients(X, gp, ep, gate=gate, score="linear", expert=ex)
    got = triton_gram.gram_jtj(U, X, gate=gate, expert=expert, k=k)
    want = reference_moe_pass(X, Y, gp, ep, gate=gate, score="linear", expert=ex,
                              structured=False).jtj
    assert poisoned and not poisoned[0].isnan().any()
    assert _rel(got, want) <= TOLERANCE[torch.float64], _rel(got, want)


# gate x expert (slope, constant) x d in {1, 3, 5}, k in {1, 2, 3} cycled so that every d meets
# every k, R in {1, 3}; n = 37..86 (odd and even) is never a multiple of the 16-sample block.
@pytest.mark.parametrize("gate,expert,d,k,R,n", [
    (gate, expert, d, (1, 2, 3)[(i + i // 3) % 3], (1, 3)[i % 2], 37 + 7 * (i % 8))
    for i, (gate, expert, d) in enumerate(
        itertools.product(models.GATES, ("relu", "constant"), (1, 3, 5))
    )
])
def test_gram_kernel_layouts(gate, expert, d, k, R, n, poisoned):
    """Both Gram layouts on the reference's coefficients against its explicit-J J^T J, float64
    (1e-12), each with few sample splits (many tiles per program; one under the interpreter) and
    with one split per tile."""
    (X, Y, gp, ep), ex = _problem(gate, "linear", expert, d, k, R, n, torch.float64,
                                  _seed("gram layouts", gate, expert, d, k, R, n))
    U = reference_jacobian_coefficients(X, gp, ep, gate=gate, score="linear", expert=ex)
    want = reference_moe_pass(X, Y, gp, ep, gate=gate, score="linear", expert=ex,
                              structured=False).jtj
    for layout, waves in itertools.product(("per_feature", "pairs"), (1, 10**6)):
        cfg = triton_gram.GramConfig(block_a=16, block_q=16, block_n=16, num_warps=1,
                                     num_stages=1, waves=waves, layout=layout)
        poisoned.clear()
        got = triton_gram.gram_jtj(U, X, gate=gate, expert=expert, k=k, config=cfg)
        assert len(poisoned) == 1 and not poisoned[0].isnan().any(), (layout, waves)
        assert waves == 1 or poisoned[0].shape[1] == -(-n // 16), "one split per tile"
        assert got.shape == want.shape and got.dtype == torch.float64
        assert _rel(got, want) <= TOLERANCE[torch.float64], (layout, waves, _rel(got, want))


@pytest.mark.parametrize("layout", ["per_feature", "pairs"])
def test_gram_kernel_float32(layout, poisoned):
    """float32 data (ieee products under the interpreter), 1e-5 against the float64 reference."""
    (X, Y, gp, ep), ex = _problem("softmax", "linear", "gelu", 5, 3, 2, 61, torch.float64,
                                  _seed("gram f32", layout))
    U = reference_jacobian_coefficients(X, gp, ep, gate="softmax", score="linear", expert=ex)
    want = reference_moe_pass(X, Y, gp, ep, gate="softmax", score="linear", expert=ex,
                              structured=False).jtj
    # ieee: on a GPU the default is tf32 (11-bit operands), which this tolerance does not cover
    got = triton_gram.gram_jtj(U.float(), X.float(), gate="softmax", expert="gelu", k=3,
                               precision="ieee",
                               config=triton_gram.GramConfig(block_a=16, block_q=16, block_n=16,
                                                             num_warps=1, layout=layout))
    assert poisoned and not poisoned[0].isnan().any()
    assert got.dtype == torch.float32
    assert _rel(got, want) <= TOLERANCE[torch.float32], _rel(got, want)


def test_gram_rejects_unknown_layout():
    X = torch.zeros(1, 5, 3, dtype=torch.float64, device=DEVICE)
    U = torch.zeros(1, 4, 5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="layout"):
        triton_gram.gram_jtj(U, X, gate="sigmoid", expert="relu", k=2,
                             config=triton_gram.GramConfig(layout="gathered"))


@pytest.mark.parametrize("gate", models.GATES)
@pytest.mark.parametrize("expert", EXPERTS)
def test_reference_gram_route_matches_explicit_jacobian(gate, expert):
    """The reference's structured route (J^T r, J^T J from the coefficients; kernels/moe/gram.py)
    against explicit chunks of J, float64, 1e-12 (only the summation order differs)."""
    (X, Y, gp, ep), ex = _problem(gate, "linear", expert, 3, 3, 2, 57, torch.float64,
                                  _seed("structured", gate, expert))
    got = reference_moe_pass(X, Y, gp, ep, gate=gate, score="linear", expert=ex)
    want = reference_moe_pass(X, Y, gp, ep, gate=gate, score="linear", expert=ex,
                              structured=False)
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert _rel(a, b) <= 1e-12, (name, _rel(a, b))


@pytest.mark.parametrize("score,jacobian,kept,one_by_one", [
    ("linear", True, True, False), ("linear", True, True, True), ("linear", True, False, False),
    ("linear", False, False, False), ("quadratic", True, False, False)])
def test_rows_read_in_place(score, jacobian, kept, one_by_one, poisoned, monkeypatch):
    """``rows``: the problems X[rows] (repeated, out of order) with their own parameters, against
    the reference on copies of those rows, float64 (1e-12). Linear scores read X and the kept
    feature pairs in place, batched or one problem per product (``one_by_one``); quadratic ones
    take copies."""
    R_all, R, d, k, n = 5, 3, 3, 2, 83
    (X, Y, _, _), ex = _problem("sigmoid", score, "relu", d, k, R_all, n, torch.float64,
                                _seed("rows", score, jacobian, kept))
    (_, _, gp, ep), _ = _problem("sigmoid", score, "relu", d, k, R, n, torch.float64,
                                 _seed("rows params", score))
    rows = torch.tensor([3, 0, 3], device=DEVICE)
    V = gram.feature_pairs(X) if kept else None
    monkeypatch.setattr(gram, "GATHER_BYTES", 0 if one_by_one else 2**40)
    config = tp.LaunchConfig(block_n=16, num_warps=1, num_stages=1, waves=2)
    got = tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score=score, expert=ex,
                             jacobian=jacobian, gram_features=V, rows=rows, config=config)
    want = reference_moe_pass(X[rows], Y[rows], gp, ep, gate="sigmoid", score=score, expert=ex,
                              jacobian=jacobian, structured=False)
    assert poisoned and all(not buf.isnan().any() for buf in poisoned), "unwritten buffers"
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.shape == b.shape and _rel(a, b) <= TOLERANCE[torch.float64], (name, _rel(a, b))


def test_rows_must_be_indices():
    (X, Y, gp, ep), ex = _problem("sigmoid", "linear", "relu", 3, 2, 2, 20, torch.float64, 6)
    with pytest.raises(ValueError, match="rows"):
        tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert=ex,
                           rows=torch.tensor([0.0, 1.0], dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("m,start,stop", [(1, 0, 45), (3, 7, 45), (7, 16, 39)])
def test_role_pair_products(m, start, stop, poisoned):
    """The Triton role-pair kernel against the PyTorch gathers on a sample range (exact: one
    product per entry)."""
    g = torch.Generator().manual_seed(m)
    U = torch.randn(3, m, 45, generator=g, dtype=torch.float64).to(DEVICE)
    got = triton_gram.role_pair_products(U, start, stop)
    assert poisoned and not poisoned[0].isnan().any()
    assert torch.equal(got, gram.role_pairs(U[:, :, start:stop]))


@pytest.mark.parametrize("kept,rows", [(False, None), (True, [2, 0, 2, 1])])
def test_gram_route_streams_over_samples(kept, rows, poisoned, monkeypatch):
    """Past ``U_BYTES`` of coefficients the Gram route runs in sample chunks (here 9 samples of
    n = 40, rows and kept feature pairs read in place): the same outputs as the reference on
    copies of the rows, float64 1e-12 (only the summation order differs)."""
    R, d, k, n = 3, 2, 2, 40
    (X, Y, gp, ep), ex = _problem("softmax", "linear", "relu", d, k, R, n, torch.float64,
                                  _seed("stream", kept))
    idx = None if rows is None else torch.tensor(rows, device=DEVICE)
    if idx is not None:
        gp, ep = gp[idx.cpu() % R].to(DEVICE), ep[idx.cpu() % R].to(DEVICE)
    V = gram.feature_pairs(X) if kept else None
    B = R if idx is None else len(rows)
    monkeypatch.setattr(tp, "U_BYTES", B * (n_free_gates("softmax", k) + k) * 8 * 9)
    calls = []
    real = tp._moe_grad_kernel
    monkeypatch.setattr(tp, "_moe_grad_kernel", type("Spy", (), {
        "__getitem__": lambda self, grid: (lambda *a, **kw: calls.append(a[0].shape[1])
                                           or real[grid](*a, **kw))})())
    config = tp.LaunchConfig(block_n=16, num_warps=1, num_stages=1, waves=2)
    got = tp.triton_moe_pass(X, Y, gp, ep, gate="softmax", score="linear", expert=ex,
                             gram_features=V, rows=idx, config=config)
    want = reference_moe_pass(X if idx is None else X[idx], Y if idx is None else Y[idx], gp, ep,
                              gate="softmax", score="linear", expert=ex, structured=False)
    assert calls == [9, 9, 9, 9, 4]
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert a.shape == b.shape and _rel(a, b) <= 1e-12, (name, _rel(a, b))


@pytest.mark.parametrize("score,jacobian,gauss_newton", [
    ("linear", True, True), ("quadratic", True, True), ("linear", True, False),
    ("linear", False, False)])
def test_samples_past_int32_offsets_run_in_chunks(score, jacobian, gauss_newton, poisoned,
                                                  monkeypatch):
    """The kernels index a problem's samples in int32 (row * d, atom row * n): past 2^31 - 1 the
    offsets would wrap into other rows (d = 32 from n = 6.7e7). Such a pass runs in sample
    chunks below the limit (here the limit shrunk to 36 and the tile margin to one row: n = 37,
    d = 3, k = 2 go as 11 + 11 + 11 + 4): the reference's outputs, float64 1e-12 (the summation
    order differs), with the outputs a pass without a Jacobian leaves out still None."""
    R, d, k, n = 3, 3, 2, 37
    (X, Y, gp, ep), ex = _problem("softmax", score, "relu", d, k, R, n, torch.float64,
                                  _seed("int32", score, jacobian, gauss_newton))
    monkeypatch.setattr(tp, "INT32_OFFSETS", 36)
    monkeypatch.setattr(tp, "MAX_TILE_ROWS", 1)
    sizes = []
    real = tp.triton_moe_pass
    monkeypatch.setattr(tp, "triton_moe_pass", lambda X, *a, **kw: sizes.append(X.shape[1])
                        or real(X, *a, **kw))
    config = tp.LaunchConfig(block_n=16, num_warps=1, num_stages=1, waves=2)
    got = tp.triton_moe_pass(X, Y, gp, ep, gate="softmax", score=score, expert=ex,
                             jacobian=jacobian, gauss_newton=gauss_newton, config=config)
    want = reference_moe_pass(X, Y, gp, ep, gate="softmax", score=score, expert=ex,
                              jacobian=jacobian, gauss_newton=gauss_newton, structured=False)
    assert sizes == [37, 11, 11, 11, 4]
    for name, a, b in zip(want._fields, got, want, strict=True):
        if b is None:
            assert a is None, name
        else:
            assert a.shape == b.shape and _rel(a, b) <= 1e-12, (name, _rel(a, b))


@pytest.mark.parametrize("score", ["linear", "quadratic"])
@pytest.mark.parametrize("jacobian,gauss_newton", [(False, False), (True, False), (True, True)])
def test_strided_rows_read_the_rows_they_name(score, jacobian, gauss_newton, poisoned):
    # (found by an audit) the gradient kernel read ROWS[r] at unit stride: rows[::2] named
    # [3, 0, 2] but the kernel read [3, 9, 0] (9 past the last problem: inf and NaN, or other
    # problems' data)
    g = torch.Generator().manual_seed(11)
    ex = models.get_expert("relu")
    R, n, d, k = 4, 21, 2, 2
    X = (torch.rand(R, n, d, generator=g, dtype=torch.float64) * 2 - 1).to(DEVICE)
    Y = torch.randn(R, n, generator=g, dtype=torch.float64).to(DEVICE)
    rows = torch.tensor([3, 9, 0, 9, 2, 9], device=DEVICE)[::2]
    assert rows.stride() == (2,)
    gp = torch.randn(3, k, models.gate_dim(score, d), generator=g, dtype=torch.float64).to(DEVICE)
    ep = torch.randn(3, k, d + 1, generator=g, dtype=torch.float64).to(DEVICE)
    out = tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score=score, expert=ex, rows=rows,
                             jacobian=jacobian, gauss_newton=gauss_newton)
    want = reference_moe_pass(X[rows], Y[rows], gp, ep, gate="sigmoid", score=score, expert=ex,
                              jacobian=jacobian, gauss_newton=gauss_newton, structured=False)
    assert poisoned and all(not buf.isnan().any() for buf in poisoned), "unwritten partial sums"
    for name, got, ref in zip(want._fields, out, want, strict=True):
        if ref is None:
            assert got is None, name
            continue
        assert got.shape == ref.shape, name
        assert _rel(got, ref) <= 1e-12, (name, _rel(got, ref))


#: The routes a pass can take: (score, jacobian, gauss_newton, structured). Linear scores with
#: J^T J take the Gram route (and the reference's structured Gram pass); quadratic ones the pair
#: programs (a copy of the rows); without J^T J the gradient kernel, and without J the loss alone.
ROUTES = [("linear", True, True, True), ("linear", True, True, False),
          ("quadratic", True, True, True), ("linear", True, False, True),
          ("linear", False, False, True)]


def _both_paths(X, Y, gp, ep, score, ex, jacobian, gauss_newton, structured, rows=None):
    """The reference's and the Triton pass's calls on the same inputs (each a thunk)."""
    kw = dict(gate="sigmoid", score=score, expert=ex, jacobian=jacobian,
              gauss_newton=gauss_newton, rows=rows)
    return {"reference": lambda: reference_moe_pass(X, Y, gp, ep, structured=structured, **kw),
            "dispatch torch": lambda: moe_pass(X, Y, gp, ep, backend="torch", **kw),
            "triton": lambda: tp.triton_moe_pass(X, Y, gp, ep, **kw)}


@pytest.mark.parametrize("score,jacobian,gauss_newton,structured", ROUTES)
@pytest.mark.parametrize("R,n", [(0, 37), (3, 0), (0, 0)])
def test_empty_batch_is_refused_alike(R, n, score, jacobian, gauss_newton, structured):
    # (found by an audit) the reference failed deep in a reshape for R = 0 ("cannot reshape
    # tensor of 0 elements") and returned zero loss, J^T r and J^T J for n = 0, where the Triton
    # pass refused both with a ValueError: both now refuse with the same message naming X
    (X, Y, gp, ep), ex = _problem("sigmoid", score, "relu", 3, 2, max(R, 1), max(n, 1),
                                  torch.float64, _seed("empty", score, R, n))
    X, Y, gp, ep = X[:R, :n], Y[:R, :n], gp[:R], ep[:R]
    for call in _both_paths(X, Y, gp, ep, score, ex, jacobian, gauss_newton,
                            structured).values():
        with pytest.raises(ValueError, match=r"X: needs at least one problem \(R >= 1\) and one "
                                             r"sample \(n >= 1\), got shape"):
            call()


@pytest.mark.parametrize("score,jacobian,gauss_newton,structured", ROUTES)
def test_empty_rows_are_refused_alike(score, jacobian, gauss_newton, structured):
    # empty rows: no problem to evaluate (the reference used to fail in a reshape)
    (X, Y, _, _), ex = _problem("sigmoid", score, "relu", 3, 2, 4, 29, torch.float64,
                                _seed("empty rows", score))
    gp = torch.zeros(0, 2, models.gate_dim(score, 3), dtype=torch.float64, device=DEVICE)
    ep = torch.zeros(0, 2, 4, dtype=torch.float64, device=DEVICE)
    rows = torch.zeros(0, dtype=torch.long, device=DEVICE)
    for call in _both_paths(X, Y, gp, ep, score, ex, jacobian, gauss_newton, structured,
                            rows).values():
        with pytest.raises(ValueError, match="rows: needs at least one problem"):
            call()


@pytest.mark.parametrize("score,jacobian,gauss_newton,structured", ROUTES)
@pytest.mark.parametrize("bad", [5, 6, -1, -5])
def test_rows_out_of_range_are_refused(bad, score, jacobian, gauss_newton, structured):
    # (found by an audit) rows past the last data set (or negative) were not checked: the
    # gradient kernel read another tensor's memory (under the interpreter a finite loss for
    # rows = [0, 5] with 2 data sets), the reference wrapped negative entries round to other
    # data sets or failed in bincount. Both paths now refuse them, naming rows
    R_all, n = 5, 29
    (X, Y, _, _), ex = _problem("sigmoid", score, "relu", 3, 2, R_all, n, torch.float64,
                                _seed("bad rows", score))
    (_, _, gp, ep), _ = _problem("sigmoid", score, "relu", 3, 2, 3, n, torch.float64,
                                 _seed("bad rows params", score))
    rows = torch.tensor([0, bad, R_all - 1], device=DEVICE)
    for call in _both_paths(X, Y, gp, ep, score, ex, jacobian, gauss_newton, structured,
                            rows).values():
        with pytest.raises(ValueError, match=rf"rows: entries must index X's {R_all} data sets "
                                             rf"\(0 <= rows < {R_all}\), got entries from "
                                             rf"{min(bad, 0)} to {max(bad, R_all - 1)}"):
            call()


@pytest.mark.parametrize("score,jacobian,gauss_newton,structured", ROUTES)
def test_rows_at_both_ends_pass_the_check(score, jacobian, gauss_newton, structured, poisoned):
    """The range check is not off by one: rows naming the first and the last data set (R - 1)
    give the reference's outputs on copies of those rows (float64, 1e-12, outputs poisoned)."""
    R_all, n = 5, 43
    (X, Y, _, _), ex = _problem("sigmoid", score, "relu", 3, 2, R_all, n, torch.float64,
                                _seed("end rows", score))
    (_, _, gp, ep), _ = _problem("sigmoid", score, "relu", 3, 2, 3, n, torch.float64,
                                 _seed("end rows params", score))
    rows = torch.tensor([R_all - 1, 0, R_all - 1], device=DEVICE)
    got = tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score=score, expert=ex, rows=rows,
                             jacobian=jacobian, gauss_newton=gauss_newton)
    assert poisoned and all(not buf.isnan().any() for buf in poisoned), "unwritten buffers"
    own = reference_moe_pass(X, Y, gp, ep, gate="sigmoid", score=score, expert=ex, rows=rows,
                             jacobian=jacobian, gauss_newton=gauss_newton, structured=structured)
    want = reference_moe_pass(X[rows], Y[rows], gp, ep, gate="sigmoid", score=score, expert=ex,
                              jacobian=jacobian, gauss_newton=gauss_newton, structured=False)
    for name, a, b, c in zip(want._fields, got, own, want, strict=True):
        assert (a is None) == (b is None) == (c is None), name
        if c is not None:
            assert a.shape == c.shape and _rel(a, c) <= 1e-12, (name, _rel(a, c))
            assert b.shape == c.shape and _rel(b, c) <= 1e-12, (name, _rel(b, c))
