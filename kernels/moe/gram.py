"""``J^T J`` for linear scores as a Gram matrix of coefficient pairs and feature pairs.

With linear scores every column of the Jacobian is one per-atom coefficient times one feature of
``v = [x, 1]``: column ``(i, f)`` of ``J`` is ``U_i * v_f``, where ``U = [df/ds of the free gates;
df/dz]`` holds ``m = k_free + k`` "roles" per sample. Hence

    (J^T J)[(i, f), (j, g)] = sum_t U_i(t) U_j(t) v_f(t) v_g(t) = (W^T V)[(i, j), (f, g)],

with ``W`` the products of role pairs ``i <= j`` and ``V`` those of feature pairs ``f <= g``: a
product of ``m(m+1)/2 x (d+1)(d+2)/2`` entries, about a quarter of the ``p^2`` of ``J^T J``
(``p = m (d + 1)``) and half of its upper triangle. At (R, n, d, k) = (20, 10^5, 32, 9), sigmoid:
171 x 561 = 96k products per sample instead of 353k.

This module holds the pair tables and the gather into the reference layout (shared with the Triton
Gram kernel, ``kernels/moe/triton_gram.py``) and the PyTorch version, which forms ``W`` and ``V``
one sample chunk at a time and multiplies them with one batched matrix product per chunk (cuBLAS
on a GPU): ``J`` itself never exists.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
import torch

from kernels.memory import available_cuda_memory
from kernels.moe.model import Expert, check_expert, n_free_gates, score_has_quadratic

#: Bytes a chunk of samples may take: on a GPU the ``W`` and ``V`` chunks of all the batch's
#: problems together (as ``JACOBIAN_CHUNK_BYTES`` for ``J``), where fewer, larger products run
#: closer to its peak; on a CPU each problem's (:data:`PER_PROBLEM`). A CPU chunk stays in cache:
#: its gathers and products are memory-bound there, and chunks of this size made a Gauss-Newton
#: pass up to 3.6x faster than the 256 MiB (all problems together) used before, on a 2-core
#: machine (2026-12-04, benchmarks/README.md "CPU chunk size").
CHUNK_BYTES = {"cpu": 128 * 2**10, "cuda": 2 * 2**30}
#: Device types whose budget is per problem: there a chunk's samples do not depend on how many
#: problems share the batch, so each problem's sums are taken over the same chunks in any batch
#: (a refit of a subsample, the accepted rows of an iteration). Not every last bit follows:
#: torch.sigmoid on a CPU rounds an element by where it falls in the vectorised loop, so sigmoid
#: fits of one replication in batches of other sizes differ by about 1e-16 relative (2026-12-07);
#: the sweep keeps each shard's block at the config's. On a GPU the sweep plans its memory with
#: the batch's total.
PER_PROBLEM = frozenset({"cpu"})
#: Fewest samples a CPU chunk takes whatever its bytes: a wide problem (d = 32, p = 594) would
#: otherwise be streamed a few samples at a time, and the per-chunk calls would cost more than the
#: arithmetic. On a GPU the byte budget alone bounds a chunk.
MIN_CHUNK_SAMPLES = {"cpu": 32, "cuda": 1}


def chunk_samples(budget: int, problems: int, bytes_per_sample: int, n: int,
                  device: torch.device) -> int:
    """Samples per chunk of n: as many as ``budget`` bytes hold, per problem where the device
    type's budget is (:data:`PER_PROBLEM`), else for the ``problems`` together, at
    ``bytes_per_sample`` bytes per sample of one problem; at least the device type's
    :data:`MIN_CHUNK_SAMPLES`, at most n."""
    kind = device.type
    per_sample = bytes_per_sample if kind in PER_PROBLEM else problems * bytes_per_sample
    floor = MIN_CHUNK_SAMPLES.get(kind, MIN_CHUNK_SAMPLES["cpu"])
    return max(1, min(n, max(floor, budget // max(1, per_sample))))


#: docs/kernels.md#mixed-precision-gauss-newton: the precision of the ``W^T V`` products.
#: ``float64``: the data's own (unchanged); ``float32``: W and V in float32, each chunk's product
#: in float32 (cuBLAS SGEMM on a GPU), the chunks summed in the data's dtype; ``tf32``: the same
#: with the GPU's tf32 tensor cores (float32 on a CPU); ``tf32x3``: each float32 factor split into
#: a tf32 head and its remainder, three tf32 products (``hi hi + hi lo + lo hi``), about float32's
#: accuracy at a third of tf32's speed. Loss and ``J^T r`` never change precision:
#: Levenberg-Marquardt's fixed points and stopping tests depend on those alone.
GRAM_DTYPES = ("float64", "float32", "tf32", "tf32x3")


def check_gram_dtype(gram_dtype: str) -> str:
    if gram_dtype not in GRAM_DTYPES:
        raise ValueError(f"gram_dtype: must be one of {', '.join(GRAM_DTYPES)}, got "
                         f"{gram_dtype!r}")
    return gram_dtype


def product_dtype(gram_dtype: str, data_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``W`` and ``V`` are formed in: never above the data's."""
    return data_dtype if check_gram_dtype(gram_dtype) == "float64" else torch.float32


@contextlib.contextmanager
def _matmul_precision(gram_dtype: str, device: torch.device):
    """tf32 matrix products for the tf32 precisions on a GPU, the flag restored after."""
    if not gram_dtype.startswith("tf32") or device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def applies(score: str) -> bool:
    """Whether ``J^T J`` takes the Gram route: scores without quadratic features, whose gate and
    expert columns share the features ``[x, 1]``."""
    return not score_has_quadratic(score)


def n_roles(gate: str, k: int) -> int:
    """Rows of ``U``: the free gates' ``df/ds``, then every atom's ``df/dz``."""
    return n_free_gates(gate, k) + k


@dataclass(frozen=True)
class Tables:
    d: int
    m: int  # roles: free gates, then experts
    A: int  # role pairs i <= j, row-major
    Q: int  # feature pairs f <= g, row-major; feature d is the constant 1
    ia: tuple[int, ...]
    ja: tuple[int, ...]
    fa: tuple[int, ...]
    ga: tuple[int, ...]
    columns: tuple[tuple[int, int], ...]  # (role, feature) of each reference column

    def index(self, QP: int) -> torch.Tensor:
        """``(p, p)`` offsets of ``J^T J`` into a row-major ``(A or more, QP)`` product
        (vectorised: a Python double loop over the p^2 entries took 1 s at p = 594)."""
        role, feature = self.column_arrays()
        return torch.from_numpy(pair_positions(role, self.m) * QP
                                + pair_positions(feature, self.d + 1))

    def column_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Role and feature of each reference column, as arrays."""
        role, feature = np.array(self.columns, dtype=np.int64).T
        return role, feature

    def jtr_index(self) -> torch.Tensor:
        """``(p,)`` offsets of ``J^T r`` into a row-major ``(m, d + 1)`` product ``(U r) V``."""
        return torch.tensor([i * (self.d + 1) + f for i, f in self.columns], dtype=torch.long)


def pair_positions(v: np.ndarray, size: int) -> np.ndarray:
    """``(len(v), len(v))``: row-major position of the pair ``(min, max)`` of ``v[a], v[b]``
    among the pairs ``i <= j`` of ``size`` items (the rows of ``W``, the columns of ``V``)."""
    i, j = np.minimum(v[:, None], v[None, :]), np.maximum(v[:, None], v[None, :])
    return i * size - i * (i - 1) // 2 + (j - i)


@functools.lru_cache(maxsize=64)
def tables(gate: str, expert: str, d: int, k: int) -> Tables:
    ex = Expert(check_expert(expert))
    m = n_roles(gate, k)
    kf = m - k
    # Reference layout (kernels/moe/torch_pass.py): gate atom i = [beta0, beta1 (d)], expert atom
    # i = [a (d), b] with a slope, [b] without.
    columns = []
    for i in range(kf):
        columns += [(i, d)] + [(i, u) for u in range(d)]
    for i in range(k):
        columns += ([(kf + i, u) for u in range(d)] if ex.has_slope else []) + [(kf + i, d)]
    ia, ja = _role_pair_list(m)
    fa, ga = _feature_pair_list(d)
    return Tables(d, m, len(ia), len(fa), ia, ja, fa, ga, tuple(columns))


def _role_pair_list(m: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Role pairs ``i <= j`` of ``m`` roles, row-major (the rows of ``W``)."""
    ia, ja = zip(*[(i, j) for i in range(m) for j in range(i, m)], strict=True)
    return ia, ja


def _feature_pair_list(d: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Feature pairs ``f <= g`` of ``[x, 1]``, row-major; feature d is the constant."""
    fa, ga = zip(*[(f, g) for f in range(d + 1) for g in range(f, d + 1)], strict=True)
    return fa, ga


@functools.lru_cache(maxsize=64)
def device_tables(gate: str, expert: str, d: int, k: int, device: torch.device):
    """On ``device``: role pairs ``ia, ja``, the ``(p, p)`` gather of ``J^T J`` out of ``W^T V``
    and the ``(p,)`` gather of ``J^T r`` out of ``(U r)^T [x, 1]``."""
    tab = tables(gate, expert, d, k)
    ia, ja = _role_tables(tab.m, device)
    return ia, ja, tab.index(tab.Q).to(device), tab.jtr_index().to(device)


@functools.lru_cache(maxsize=64)
def _feature_tables(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_feature_pair_list` on ``device``."""
    return tuple(torch.tensor(t, dtype=torch.long, device=device) for t in _feature_pair_list(d))


def with_constant(Xc: torch.Tensor) -> torch.Tensor:
    """``[x, 1]``: the features every Jacobian column of a linear-score model multiplies."""
    return torch.cat([Xc, Xc.new_ones(Xc.shape[:2] + (1,))], dim=-1)


def _feature_pairs(Xc: torch.Tensor) -> torch.Tensor:
    """``V (R, c, Q)``: the products of the feature pairs of ``[x, 1]`` on a chunk."""
    fa, ga = _feature_tables(Xc.shape[-1], Xc.device)
    v = with_constant(Xc)
    # index_select copies a contiguous gather; advanced indexing was slower (lm_parts benchmark)
    return torch.index_select(v, 2, fa) * torch.index_select(v, 2, ga)


def feature_pairs(X: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``V (R, n, (d+1)(d+2)/2)`` for all samples: it depends on X alone, so a solver may compute it
    once and pass it to every :func:`gram_jtj` of a fit (see :func:`cache_fits`). ``dtype``: that
    of the products (:func:`product_dtype`; default X's)."""
    R, n, d = X.shape
    Q = (d + 1) * (d + 2) // 2
    dtype = dtype or X.dtype
    out = X.new_empty(R, n, Q, dtype=dtype)
    step = chunk_samples(CHUNK_BYTES.get(X.device.type, CHUNK_BYTES["cpu"]), R,
                         3 * Q * X.element_size(), n, X.device)
    for s in range(0, n, step):
        out[:, s : s + step] = _feature_pairs(X[:, s : s + step].to(dtype))
    return out


#: Largest ``V`` a fit keeps across its iterations, per device type (none on the CPU, where
#: forming V is cheap next to the product); at most this fraction of the GPU's memory too.
CACHE_BYTES = {"cuda": 16 * 2**30, "cpu": 0}
CACHE_FRACTION = 0.25


def cache_fits(X: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether :func:`feature_pairs` of X (in ``dtype``, default X's) fits the cache budget of X's
    device (on a GPU also a quarter of its memory and half of what is available now)."""
    R, n, d = X.shape
    itemsize = (dtype or X.dtype).itemsize
    need = R * n * (d + 1) * (d + 2) // 2 * itemsize
    budget = CACHE_BYTES.get(X.device.type, 0)
    if X.is_cuda and need <= budget:
        total = torch.cuda.get_device_properties(X.device).total_memory
        budget = min(budget, CACHE_FRACTION * total, available_cuda_memory(X.device) / 2)
    return need <= budget


def role_pairs(Uc: torch.Tensor) -> torch.Tensor:
    """``W (R, A, c)``: the products of the role pairs ``i <= j`` of a chunk ``Uc (R, m, c)``."""
    R, m, _ = Uc.shape
    ia, ja = _role_tables(m, Uc.device)
    return torch.index_select(Uc, 1, ia) * torch.index_select(Uc, 1, ja)


@functools.lru_cache(maxsize=64)
def _role_tables(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tensor(t, dtype=torch.long, device=device) for t in _role_pair_list(m))


#: Above this many bytes a subset's rows of the kept ``V`` are multiplied in place, one problem
#: per product, instead of being gathered into a batch (a copy of ``len(rows) x n x Q`` numbers:
#: 4.5 GB per pass for 10 of 20 problems at n = 10^5, d = 32, more traffic than the product).
GATHER_BYTES = 64 * 2**20


def gram_jtj(U: torch.Tensor, X: torch.Tensor, *, gate: str, expert: str, k: int,
             V: torch.Tensor | None = None, rows: torch.Tensor | None = None,
             pair_products=None, gram_dtype: str = "float64") -> torch.Tensor:
    """``J^T J (R, p, p)`` in the reference layout from ``U (R, m, n)`` and the samples of X.

    ``V``: :func:`feature_pairs` of X, if the caller keeps it (then only ``W`` is formed here).
    ``rows``: problem r's samples are ``X[rows[r]]`` (and ``V[rows[r]]``); default ``X[r]``.
    ``pair_products(U, start, stop)``: forms ``W`` of a sample range (the Triton kernel on a
    GPU); default :func:`role_pairs`. ``gram_dtype``: see :data:`GRAM_DTYPES`.
    """
    R, m, n = U.shape
    d = X.shape[-1]
    tab = tables(gate, expert, d, k)
    if tuple(U.shape) != (R, tab.m, n) or X.shape[1] != n or (rows is None and X.shape[0] != R):
        raise ValueError(f"U: must have shape {(X.shape[0], tab.m, n)} for X of shape "
                         f"{tuple(X.shape)}, got {tuple(U.shape)}")
    if V is not None and tuple(V.shape) != (X.shape[0], n, tab.Q):
        raise ValueError(f"V: must have shape {(X.shape[0], n, tab.Q)}, got {tuple(V.shape)}")
    out = X.new_zeros(R, tab.A, tab.Q)
    accumulate_gram(out, U, X, 0, V=V, rows=rows, pair_products=pair_products,
                    gram_dtype=gram_dtype)
    return gather_jtj(out, gate=gate, expert=expert, d=d, k=k)


def gather_jtj(out: torch.Tensor, *, gate: str, expert: str, d: int, k: int) -> torch.Tensor:
    """``J^T J (R, p, p)`` in the reference layout out of the summed ``W^T V (R, A, Q)``."""
    index = device_tables(gate, expert, d, k, out.device)[2]
    return out.reshape(out.shape[0], -1)[:, index]


def accumulate_gram(out: torch.Tensor, U: torch.Tensor, X: torch.Tensor, start: int, *,
                    V: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                    pair_products=None, gram_dtype: str = "float64",
                    plan: RowPlan | None = None) -> None:
    """Add ``W^T V`` of the samples ``start .. start + U.shape[-1]`` of X to ``out (R, A, Q)``.

    ``U (R, m, c)`` holds those samples' coefficients; ``V``, ``rows``, ``pair_products`` as in
    :func:`gram_jtj` (``pair_products(U, s, e)`` indexes U's own columns). When ``rows`` names
    every data set equally often (:func:`_groups`), each data set's problems share one product.
    The samples are taken in sub-chunks of at most :data:`CHUNK_BYTES` of ``W`` and ``V``, so a
    caller may hand over a chunk of any length: nothing of size ``n x p`` is formed. ``out``
    keeps the data's dtype whatever ``gram_dtype`` (each sub-chunk's product is added to it in
    that dtype). ``plan``: :func:`row_plan` of ``rows``, made once by a caller that hands over
    many chunks of the same problems (it costs a host synchronisation).
    """
    R, m, c = U.shape
    d = X.shape[-1]
    A, Q = m * (m + 1) // 2, (d + 1) * (d + 2) // 2
    pdtype = product_dtype(gram_dtype, X.dtype)
    budget = CHUNK_BYTES.get(X.device.type, CHUNK_BYTES["cpu"])
    per_sample = A + (0 if V is not None and rows is None else Q + d + 1)
    step = chunk_samples(budget, R, per_sample * X.element_size(), c, X.device)
    if rows is not None and plan is None:
        plan = row_plan(rows, X.shape[0])
    grouped = None if rows is None else plan.grouped
    one_by_one = (V is not None and rows is not None and grouped is None
                  and R * min(c, step) * Q * V.element_size() > GATHER_BYTES)
    data_rows = None if rows is None else (plan.listed() if one_by_one else rows)
    mixed = pdtype != out.dtype
    product = functools.partial(_product, split=gram_dtype == "tf32x3")
    with _matmul_precision(gram_dtype, X.device):
        for s in range(0, c, step):
            e = min(c, s + step)
            a, b = start + s, start + e  # the sub-chunk's samples of X (and V)
            # W straight from the lower-precision U: a third of the conversions of W's
            W = (pair_products(U, s, e).to(pdtype) if pair_products
                 else role_pairs(U[:, :, s:e].to(pdtype)))
            if grouped is not None:
                # the problems of each data set stacked: one product per data set, with V read
                # in place or formed once per data set, instead of one per problem or a
                # gathered copy of V per problem (5 starts: a fifth of the feature pairs)
                sets = slice(None) if grouped.data is None else grouped.data
                Vc = (V[sets, a:b].to(pdtype) if V is not None
                      else _feature_pairs(X[sets, a:b].to(pdtype)))
                grouped.add(out, W, Vc, product)
            elif V is None:
                Xc = X[:, a:b] if rows is None else X[data_rows, a:b]
                _add_product(out, W, _feature_pairs(Xc.to(pdtype)), mixed, product)
            elif rows is None:
                _add_product(out, W, V[:, a:b].to(pdtype), mixed, product)
            elif not one_by_one:
                _add_product(out, W, V[data_rows, a:b].to(pdtype), mixed, product)
            else:
                for i, r in enumerate(data_rows):
                    if mixed:
                        out[i] += product(W[i : i + 1], V[r, a:b].to(pdtype)[None])[0].to(
                            out.dtype)
                    else:
                        out[i].addmm_(W[i], V[r, a:b])


@dataclass
class _Groups:
    """Problems stacked by data set: problem i fills slot ``slot[i]`` of a ``(G, per)`` table
    whose empty slots multiply zeros. ``data``: the G data sets (None: all, in order, read in
    place)."""

    slot: torch.Tensor
    per: int
    G: int
    data: torch.Tensor | None

    def add(self, out: torch.Tensor, W: torch.Tensor, Vc: torch.Tensor, product=torch.bmm
            ) -> None:
        """``out[i] += W[i] @ Vc[data set of problem i]`` with one batched product."""
        R, A, c = W.shape
        full = self.G * self.per == R  # every slot taken: no zeros to write
        Wp = (W.new_empty if full else W.new_zeros)(self.G * self.per, A, c)
        Wp.index_copy_(0, self.slot, W)
        prod = product(Wp.view(self.G, self.per * A, c), Vc)
        out += prod.view(self.G * self.per, A, -1).index_select(0, self.slot).to(out.dtype)


#: Most slots the stacked products may take per problem: past it (a subset of problems spread
#: unevenly over the data sets) the zeros would cost more than products one problem at a time.
GROUP_WASTE = 2


def _groups(rows: torch.Tensor, n_data: int) -> _Groups | None:
    """The stacking of the problems ``rows`` (data set of each) by data set, or None when it
    would multiply more than :data:`GROUP_WASTE` x as many slots as there are problems (one
    host synchronisation)."""
    counts = torch.bincount(rows, minlength=n_data)
    if counts.numel() != n_data:
        return None  # an index out of range: left for the gather to report
    present = counts > 0
    G, per = int(present.sum()), int(counts.max())
    if G * per > GROUP_WASTE * rows.numel():
        return None
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    first = torch.cumsum(counts, 0) - counts  # position of each data set's first problem
    group = torch.cumsum(present.long(), 0) - 1  # its number among the data sets present
    pos = torch.arange(rows.numel(), device=rows.device) - first[sorted_rows]
    slot = torch.empty_like(rows)
    slot[order] = group[sorted_rows] * per + pos
    data = None if G == n_data else present.nonzero().flatten()
    return _Groups(slot, per, G, data)


def _product(W: torch.Tensor, Vc: torch.Tensor, *, split: bool = False) -> torch.Tensor:
    """``W @ Vc`` (batched); ``split``: as three products of tf32 heads and remainders."""
    if not split:
        return torch.bmm(W, Vc)
    W_hi, V_hi = _tf32_head(W), _tf32_head(Vc)
    # the small cross terms first; lo lo (~2^-22 relative) is below float32's rounding anyway
    return torch.bmm(W_hi, V_hi) + (torch.bmm(W_hi, Vc - V_hi) + torch.bmm(W - W_hi, V_hi))


def _tf32_head(t: torch.Tensor) -> torch.Tensor:
    """A float32 tensor's values cut to tf32's 10 mantissa bits (exact in tf32; the remainder
    ``t - head`` is exact in float32)."""
    return (t.view(torch.int32) & -8192).view(torch.float32)  # clear the low 13 bits


@dataclass
class RowPlan:
    """How :func:`accumulate_gram` multiplies a subset ``rows`` of problems: stacked by data set
    (``grouped``) or problem by problem (``listed()``, the rows on the host)."""

    rows: torch.Tensor
    grouped: _Groups | None
    _listed: list[int] | None = None

    def listed(self) -> list[int]:
        if self._listed is None:
            self._listed = self.rows.tolist()
        return self._listed


def row_plan(rows: torch.Tensor, n_data: int) -> RowPlan:
    """The :class:`RowPlan` of ``rows`` over ``n_data`` data sets."""
    return RowPlan(rows, _groups(rows, n_data))


def _add_product(out: torch.Tensor, W: torch.Tensor, Vc: torch.Tensor, mixed: bool,
                 product=torch.bmm) -> None:
    """``out += W @ Vc``: fused in the data's dtype, else a lower-precision product added."""
    if mixed:
        out += product(W, Vc).to(out.dtype)
    else:
        out.baddbmm_(W, Vc)


__all__ = ["GRAM_DTYPES", "Tables", "accumulate_gram", "applies", "cache_fits", "check_gram_dtype",
           "chunk_samples", "device_tables", "feature_pairs", "gather_jtj", "gram_jtj", "n_roles",
           "product_dtype", "role_pairs", "row_plan", "tables", "with_constant"]
