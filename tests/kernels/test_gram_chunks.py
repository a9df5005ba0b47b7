"""The reference pass's Gram route streams over the samples, and its mixed-precision ``J^T J``
(docs/kernels.md#mixed-precision-gauss-newton). PyTorch only: no Triton, no GPU."""

from __future__ import annotations

import zlib

import pytest
import torch

from kernels.moe import gram, moe_pass, torch_pass
from kernels.moe.torch_pass import moe_pass as reference_moe_pass
from kernels.moe.torch_pass import n_free_gates
from moe_theory import models


def _problem(gate: str, d: int, k: int, R: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(R, n, d, generator=g, dtype=torch.float64) * 2 - 1
    Y = torch.randn(R, n, generator=g, dtype=torch.float64)
    gp = torch.randn(R, k, d + 1, generator=g, dtype=torch.float64)
    ep = torch.randn(R, k, d + 1, generator=g, dtype=torch.float64) / d**0.5
    gp[:, n_free_gates(gate, k):] = 0
    return X, Y, gp, ep


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("gate", models.GATES)
@pytest.mark.parametrize("kept,rows", [(False, False), (True, False), (False, True), (True, True)])
def test_small_chunks_equal_one_chunk(gate, kept, rows, monkeypatch):
    """Chunk budgets of a few hundred bytes (chunks of 1-3 samples, n = 61) against one chunk:
    float64, 1e-12 normwise (only the summation order differs; observed ~1e-16). No array of the
    pass may hold all n samples' coefficients: every ``U`` handed to the Gram product is one
    chunk. ``rows`` (repeated, out of order) gathers each chunk of X and of the kept feature
    pairs; the answer is that of copies of those rows."""
    d, k, n = 3, 3, 61
    X, Y, gp, ep = _problem(gate, d, k, 4, n, seed=zlib.crc32(repr((gate, kept, rows)).encode()))
    ex = models.get_expert("relu")
    idx = torch.tensor([2, 0, 2]) if rows else None
    if rows:
        gp, ep = gp[idx], ep[idx]
    V = gram.feature_pairs(X) if kept else None
    want = reference_moe_pass(X if idx is None else X[idx], Y if idx is None else Y[idx], gp, ep,
                              gate=gate, score="linear", expert=ex, structured=False)
    widths = []
    real = gram.accumulate_gram

    def spy(out, U, *args, **kw):
        widths.append(U.shape[-1])
        return real(out, U, *args, **kw)

    monkeypatch.setattr(gram, "accumulate_gram", spy)
    monkeypatch.setitem(torch_pass.JACOBIAN_CHUNK_BYTES, "cpu", 4 * 3 * (2 * k + d) * 8 * 3)
    monkeypatch.setitem(gram.CHUNK_BYTES, "cpu", 3 * 1000)
    # budgets for all problems together and no floor: these alone size the chunks
    monkeypatch.setitem(gram.MIN_CHUNK_SAMPLES, "cpu", 1)
    monkeypatch.setattr(gram, "PER_PROBLEM", frozenset())
    got = reference_moe_pass(X, Y, gp, ep, gate=gate, score="linear", expert=ex, gram_features=V,
                             rows=idx)
    assert 1 < len(widths) and max(widths) <= 3 and sum(widths) == n
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert a.shape == b.shape and _rel(a, b) <= 1e-12, (name, _rel(a, b))


def test_rows_gather_each_chunk_only(monkeypatch):
    """With ``rows`` the reference no longer copies X whole: every gather it makes is one chunk of
    samples (here chunks of 3 of n = 40)."""
    X, Y, gp, ep = _problem("sigmoid", 2, 2, 3, 40, seed=5)
    idx = torch.tensor([1, 1, 0, 2, 1])
    gp, ep = gp[idx % 3], ep[idx % 3]
    monkeypatch.setitem(torch_pass.JACOBIAN_CHUNK_BYTES, "cpu", 4 * 5 * 8 * 8 * 3)
    monkeypatch.setitem(gram.MIN_CHUNK_SAMPLES, "cpu", 1)
    monkeypatch.setattr(gram, "PER_PROBLEM", frozenset())
    seen = []
    real = torch_pass._chunk
    monkeypatch.setattr(torch_pass, "_chunk",
                        lambda *a: (lambda c: seen.append(c[0].shape[1]) or c)(real(*a)))
    for jacobian in (False, True):
        got = reference_moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear",
                                 expert=models.get_expert("relu"), jacobian=jacobian, rows=idx)
        want = reference_moe_pass(X[idx], Y[idx], gp, ep, gate="sigmoid", score="linear",
                                  expert=models.get_expert("relu"), jacobian=jacobian)
        assert torch.equal(got.loss, want.loss)
    assert seen and max(seen) < 40


@pytest.mark.parametrize("gram_dtype", ["float32", "tf32", "tf32x3"])
@pytest.mark.parametrize("kept", [False, True])
def test_mixed_gram_changes_jtj_only(gram_dtype, kept):
    """A float32 Gram product (tf32 is float32 on a CPU; tf32x3 three float32 products of heads
    and remainders that sum to about the float32 product) leaves loss and ``J^T r`` bit for bit
    (they never change precision) and ``J^T J`` within 1e-5 normwise of float64: each entry is a
    sum of n = 500 products of float32-rounded factors (relative error <= ~3 * 6e-8 per product),
    accumulated by float32 dot products (error growth ~ sqrt(n) * 6e-8 relative to the sum of
    magnitudes); the largest entries, the diagonal ones, have no cancellation, so the normwise
    error is a few 1e-7 (observed ~1e-7)."""
    X, Y, gp, ep = _problem("softmax", 4, 3, 2, 500, seed=9)
    ex = models.get_expert("gelu")
    V64 = gram.feature_pairs(X) if kept else None
    V32 = gram.feature_pairs(X, torch.float32) if kept else None
    ref = moe_pass(X, Y, gp, ep, gate="softmax", score="linear", expert=ex, backend="torch",
                   gram_features=V64)
    got = moe_pass(X, Y, gp, ep, gate="softmax", score="linear", expert=ex, backend="torch",
                   gram_features=V32, gram_dtype=gram_dtype)
    assert torch.equal(got.loss, ref.loss) and torch.equal(got.jtr, ref.jtr)
    assert got.jtj.dtype == torch.float64
    assert 0 < _rel(got.jtj, ref.jtj) <= 1e-5


def test_gram_dtype_is_checked():
    X, Y, gp, ep = _problem("sigmoid", 2, 2, 1, 10, seed=1)
    with pytest.raises(ValueError, match="gram_dtype"):
        moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert=models.get_expert("relu"),
                 backend="torch", gram_dtype="bfloat16")


@pytest.mark.parametrize("gram_dtype", ["float64", "float32"])
@pytest.mark.parametrize("kept", [True, False])
@pytest.mark.parametrize("rows", [[0, 1, 2, 0, 1, 2], [2, 0, 2, 2], [1, 1]],
                         ids=["all-starts", "uneven", "one-set"])
def test_starts_sharing_data_take_one_product_per_data_set(gram_dtype, kept, rows, monkeypatch):
    """Problems on shared data sets (all starts of all replications; a subset spread unevenly,
    padded with zero slots; a subset on one data set, its V gathered), in chunks of 4 samples:
    one product per data set, V read in place if kept, else formed once per data set, against
    copies of the rows formed per problem (float64 1e-12: only the summation order differs;
    float32 products 1e-5 as in :func:`test_mixed_gram_changes_jtj_only`)."""
    R, n = 3, 50
    X, Y, _, _ = _problem("sigmoid", 2, 2, R, n, seed=11)
    rows = torch.tensor(rows)
    g = torch.Generator().manual_seed(12)
    gp = torch.randn(len(rows), 2, 3, generator=g, dtype=torch.float64)
    ep = torch.randn(len(rows), 2, 3, generator=g, dtype=torch.float64)
    ex = models.get_expert("relu")
    pdtype = gram.product_dtype(gram_dtype, X.dtype)
    want = reference_moe_pass(X[rows], Y[rows], gp, ep, gate="sigmoid", score="linear",
                              expert=ex, structured=False)
    used = []
    real = gram._groups
    monkeypatch.setattr(gram, "_groups", lambda *a: (lambda r: used.append(r) or r)(real(*a)))
    monkeypatch.setitem(gram.CHUNK_BYTES, "cpu", len(rows) * (10 + 6 + 3) * 8 * 4)
    monkeypatch.setitem(gram.MIN_CHUNK_SAMPLES, "cpu", 1)
    monkeypatch.setattr(gram, "PER_PROBLEM", frozenset())
    got = reference_moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert=ex, rows=rows,
                             gram_features=gram.feature_pairs(X, pdtype) if kept else None,
                             gram_dtype=gram_dtype)
    assert used and all(u is not None for u in used)
    tol = 1e-12 if gram_dtype == "float64" else 1e-5
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert _rel(a, b) <= (tol if name == "jtj" else 1e-12), (name, _rel(a, b))


def test_groups_of_problems():
    """Slots by data set; too many empty slots (more than GROUP_WASTE per problem): None."""
    g = gram._groups(torch.tensor([2, 0, 2, 2]), 3)
    assert (g.G, g.per) == (2, 3) and g.data.tolist() == [0, 2]
    assert sorted(g.slot.tolist()) == [0, 3, 4, 5]  # data set 0 in row 0, data set 2 in row 1
    assert gram._groups(torch.arange(6) % 3, 3).data is None
    assert gram._groups(torch.tensor([0, 0, 0, 0, 0, 1, 2]), 3) is None  # 15 slots, 7 problems


def test_tf32_heads_and_remainders():
    """A head keeps 10 mantissa bits (relative cut < 2^-10) and head + remainder is exact; the
    split product (three float32 products on a CPU) is as accurate as one float32 product
    (normwise 1e-6 against float64 for K = 300 terms: each ~sqrt(K) * 6e-8)."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(2, 20, 300, generator=g)
    V = torch.randn(2, 300, 30, generator=g)
    head = gram._tf32_head(W)
    assert float(((W - head) / W).abs().max()) < 2**-10
    mant = torch.frexp(head.double())[0] * 2**11  # 1 implicit + 10 stored bits: an integer
    assert torch.equal(mant, mant.round()) and torch.equal(head + (W - head), W)
    want = torch.bmm(W.double(), V.double())
    got = gram._product(W, V, split=True).double()
    assert _rel(got, want) <= 1e-6


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_chunk_samples_floor_and_budget(device):
    """A chunk holds what its budget holds, per problem on a CPU and for all problems on a GPU,
    never fewer than the device type's floor (a CPU's 32 samples: a wide problem would
    otherwise be streamed a few samples at a time), never more than n, at least one sample."""
    dev = torch.device(device)
    floor = gram.MIN_CHUNK_SAMPLES[device]
    per_problem = device in gram.PER_PROBLEM
    assert per_problem == (device == "cpu")
    want = 2**20 // (1000 if per_problem else 10 * 1000)
    assert gram.chunk_samples(2**20, 10, 1000, 10**6, dev) == want
    assert gram.chunk_samples(2**20, 10, 10**9, 10**6, dev) == floor
    assert gram.chunk_samples(2**20, 10, 10**9, 5, dev) == min(floor, 5)
    assert gram.chunk_samples(2**20, 10, 1, 100, dev) == 100
    assert gram.chunk_samples(0, 10, 10, 100, dev) >= 1


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_a_problem_gives_the_same_pass_in_any_batch_on_a_cpu(gate):
    """On a CPU a chunk's samples do not depend on the batch (a budget per problem), so a
    problem's loss, J^T r and J^T J are the same bit for bit alone or in its whole batch, and as
    one of any subset of rows on shared data (a route of its own, which sums ``J^T J`` in
    another order), over n large enough to take several chunks."""
    R, n, d, k = 6, 5000, 3, 3
    X, Y, gp, ep = _problem(gate, d, k, R, n, seed=21)
    ex = models.get_expert("gelu")
    kw = dict(gate=gate, score="linear", expert=ex, backend="torch")
    assert gram.chunk_samples(gram.CHUNK_BYTES["cpu"], R, 8 * (2 * k + d), n,
                              torch.device("cpu")) < n  # several chunks
    whole = moe_pass(X, Y, gp, ep, **kw)
    rows = torch.tensor([4, 1])
    for i in (0, 4):
        alone = moe_pass(X[i:i + 1], Y[i:i + 1], gp[i:i + 1], ep[i:i + 1], **kw)
        for a, b in zip(alone, whole, strict=True):
            assert torch.equal(a[0], b[i])
    subset = moe_pass(X, Y, gp[rows], ep[rows], rows=rows, **kw)
    for more in ([4], [4, 1, 0, 5]):
        other = torch.tensor(more)
        again = moe_pass(X, Y, gp[other], ep[other], rows=other, **kw)
        for a, b in zip(again, subset, strict=True):
            assert torch.equal(a[0], b[0])  # problem 4
