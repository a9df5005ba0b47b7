"""Teacher-student attention (docs/theory.md#teacher-student-attention). EXPLORATORY: this goes
beyond N24, A24, Y25 and R25, none of which states a rate for it; the exponents drawn as guides
here are analogies, labelled so.

Sequences ``X`` (N tokens of dimension d) are labelled by a teacher of ``H*`` heads,

    ``Y = sum_h gate(X W_h X^T * scale + b) X V_h + eps``,  ``eps ~ N(0, noise_var)`` entrywise,

with ``W_h = W_Q W_K^T`` of the head (parametrised directly: ``Q = X W_h``, ``K = X``), sigmoid bias
``b = -log N`` (R25) and softmax normalising each row over the keys. A student of ``H >= H*`` heads
is fitted by least squares to each of R replications at once (the study that draws the figure:
:mod:`moe_theory.studies.attention_teacher`). Every (replication, sequence) pair
is one batch entry and every head one head of the attention kernels' ``(B, H, N, D)`` layout, so
one call of :func:`kernels.attention.sigmoid_attention` (forward and backward) evaluates all fits
on CUDA; on CPU the same computation runs through its dense PyTorch reference.

Fitted heads are assigned to teacher heads Voronoi-style, by the distance of their ``W`` (the
gate's location; a split head carries only part of ``V``), and the errors are reported per cell
type as in docs/theory.md#voronoi-losses: ``err_W_exact`` / ``err_V_exact`` (max over cells holding one head),
``err_W_over`` (max over the heads of cells holding several) and ``err_V_over`` (the error of the
cell's *summed* ``V``: heads sharing one ``W`` add their values, so only the sum is identified).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from kernels.attention import sigmoid_attention, sigmoid_attention_reference
from kernels.attention.sigmoid_attention import uses_kernel
from moe_theory import models
from moe_theory.data import stable_seed
from moe_theory.validation import check_finite, check_positive_int

#: Head dimensions the attention kernels take (kernels.attention.args.KERNEL_HEAD_DIMS); tokens,
#: queries and values are zero-padded to the smallest that holds them, which changes no logit.
KERNEL_HEAD_DIMS = (16, 32, 64, 128)
ERROR_NAMES = ("err_W_exact", "err_V_exact", "err_W_over", "err_V_over")
#: The default noise variance (docs/theory.md#regression-model), per output entry.
DEFAULT_NOISE_VAR = 0.01
DEFAULT_JITTER = 0.05


@dataclass(frozen=True)
class AttentionTeacher:
    """A multi-head attention teacher.

    Attributes
    ----------
    gate : ``sigmoid`` or ``softmax``
    W : (H*, d, d) per-head ``W_Q W_K^T``
    V : (H*, d, d_v) per-head value projections
    seq_len : N, tokens per sequence
    noise_var : variance of the label noise (0 gives noise-free labels)
    bias : logit bias; ``-log N`` when None (R25; cancels under softmax)
    scale : logit scale; ``1 / sqrt(d)`` when None
    """

    gate: str
    W: torch.Tensor
    V: torch.Tensor
    seq_len: int
    noise_var: float = DEFAULT_NOISE_VAR
    bias: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        models.check_gate(self.gate)
        check_heads(self.W, self.V)
        check_positive_int("seq_len", self.seq_len)
        if not math.isfinite(self.noise_var) or self.noise_var < 0:
            raise ValueError(f"noise_var: must be a finite number >= 0, got {self.noise_var}")
        if self.bias is None:
            object.__setattr__(self, "bias", -math.log(self.seq_len))
        if self.scale is None:
            object.__setattr__(self, "scale", 1.0 / math.sqrt(self.W.shape[-1]))

    @property
    def heads(self) -> int:
        return self.W.shape[0]

    @property
    def d(self) -> int:
        return self.W.shape[-1]

    @property
    def d_v(self) -> int:
        return self.V.shape[-1]


def check_heads(W: torch.Tensor, V: torch.Tensor, field: str = "W") -> None:
    """``W: (..., H, d, d)`` square per head, ``V: (..., H, d, d_v)`` with matching leading axes."""
    if not isinstance(W, torch.Tensor) or W.dim() < 3 or W.shape[-1] != W.shape[-2]:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise ValueError(f"{field}: every head's W_h = W_Q W_K^T must be a square (d, d) matrix, "
                         f"got shape {shape}")
    vfield = "V" if field == "W" else field.replace("W", "V")
    if not isinstance(V, torch.Tensor) or V.dim() != W.dim() or V.shape[:-1] != W.shape[:-1]:
        shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
        raise ValueError(f"{vfield}: must have shape {tuple(W.shape[:-1])} + (d_v,), got {shape}")
    check_finite(field, W)
    check_finite(vfield, V)


def head_dim(d: int, d_v: int) -> int:
    """The smallest kernel head dimension that holds both the tokens and the values."""
    for D in KERNEL_HEAD_DIMS:
        if max(d, d_v) <= D:
            return D
    raise ValueError(f"d: tokens of dimension {max(d, d_v)} exceed the kernels' largest head "
                     f"dimension {KERNEL_HEAD_DIMS[-1]}")


def attention_heads(X: torch.Tensor, W: torch.Tensor, V: torch.Tensor, *, gate: str, bias: float,
                    scale: float) -> torch.Tensor:
    """``sum_h gate(X W_h X^T * scale + b) X V_h`` for every replication and sequence.

    Parameters
    ----------
    X : (R, n, N, d) sequences
    W : (R, H, d, d), V : (R, H, d, d_v) heads of each replication

    Returns
    -------
    (R, n, N, d_v)
    """
    R, n, N, d = X.shape
    H, d_v = W.shape[1], V.shape[-1]
    D = head_dim(d, d_v)
    # CPU: the dense reference directly (the kernels' interpreter would be far slower)
    attention = sigmoid_attention if X.is_cuda else sigmoid_attention_reference

    def to_layout(t: torch.Tensor) -> torch.Tensor:
        # (R, n, H, N, e) -> (R n, H, N, D): one batch entry per (replication, sequence)
        return torch.nn.functional.pad(t, (0, D - t.shape[-1])).reshape(R * n, H, N, D)

    q = to_layout(torch.einsum("rsnd,rhde->rshne", X, W))
    k = to_layout(X[:, :, None].expand(R, n, H, N, d))
    v = to_layout(torch.einsum("rsnd,rhdc->rshnc", X, V))
    out = attention(q, k, v, bias=bias, scale=scale, gate=gate)
    return out.reshape(R, n, H, N, D)[..., :d_v].sum(2)


def sample_sequences(
    teacher: AttentionTeacher, n: int, reps: int, seed: int = 0, *, device: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reps`` data sets of ``n`` sequences with standard normal tokens, labelled by the teacher.

    Replication ``r`` is drawn from a generator seeded by ``(seed, n, r)`` alone (common random
    numbers across gates and head counts).

    Returns
    -------
    X : (reps, n, N, d)
    Y : (reps, n, N, d_v)
    """
    n = check_positive_int("n", n)
    reps = check_positive_int("reps", reps)
    N, d, d_v = teacher.seq_len, teacher.d, teacher.d_v
    xs, noises = [], []
    for r in range(reps):
        rng = np.random.default_rng([int(seed) & (2**63 - 1), n, r])
        xs.append(rng.standard_normal((n, N, d)))
        noises.append(rng.standard_normal((n, N, d_v)) * math.sqrt(teacher.noise_var))
    X = torch.as_tensor(np.stack(xs), dtype=dtype, device=device)
    eps = torch.as_tensor(np.stack(noises), dtype=dtype, device=device)
    W = teacher.W.to(X)[None].expand(reps, -1, -1, -1)
    V = teacher.V.to(X)[None].expand(reps, -1, -1, -1)
    with torch.no_grad():
        Y = attention_heads(X, W, V, gate=teacher.gate, bias=teacher.bias, scale=teacher.scale)
    return X, Y + eps


def near_teacher(teacher: AttentionTeacher, heads: int, reps: int, seed: int = 0, *,
                 jitter: float = DEFAULT_JITTER, split: tuple[int, ...] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting heads: the teacher's, the ``heads - H*`` extra ones copying ``split`` (default the
    first teacher heads, cycling) with the copied ``V`` shared equally (the function is unchanged),
    plus Gaussian jitter of scale ``jitter`` drawn per replication from ``(seed, rep)``.

    Returns
    -------
    W0 : (reps, heads, d, d), V0 : (reps, heads, d, d_v), float64 on the CPU
    """
    H0 = teacher.heads
    heads = check_positive_int("H", heads)
    if heads < H0:
        raise ValueError(f"H: the student needs H >= H* = {H0} heads, got {heads}")
    split = tuple(i % H0 for i in range(heads - H0)) if split is None else tuple(split)
    if len(split) != heads - H0 or any(not 0 <= s < H0 for s in split):
        raise ValueError(f"split: needs {heads - H0} teacher head indices in [0, {H0 - 1}], "
                         f"got {list(split)}")
    order = list(range(H0)) + list(split)
    copies = torch.as_tensor(np.bincount(order, minlength=H0)[order], dtype=torch.float64)
    W = teacher.W.double()[order]
    V = teacher.V.double()[order] / copies[:, None, None]
    Ws, Vs = [], []
    for rep in range(reps):
        gen = torch.Generator().manual_seed(stable_seed(seed, rep))
        Ws.append(W + jitter * torch.randn(W.shape, generator=gen, dtype=torch.float64))
        Vs.append(V + jitter * torch.randn(V.shape, generator=gen, dtype=torch.float64))
    return torch.stack(Ws), torch.stack(Vs)


@dataclass
class AttentionFit:
    """Per-replication outcome of :func:`fit_attention`.

    Attributes
    ----------
    W : (R, H, d, d), V : (R, H, d, d_v) fitted heads (float64, CPU)
    fit_loss : (R,) mean squared residual per output entry
    grad_norm : (R,) gradient norm of each replication's mean loss at the fit
    converged : (R,) ``grad_norm <= gtol``
    n_iter : L-BFGS iterations (shared by the replications: they are fitted as one sum)
    kernel : whether the Triton kernels ran (CUDA) rather than the dense reference
    """

    W: torch.Tensor
    V: torch.Tensor
    fit_loss: torch.Tensor
    grad_norm: torch.Tensor
    converged: torch.Tensor
    n_iter: int
    wall_s: float
    kernel: bool


def fit_attention(
    X: torch.Tensor, Y: torch.Tensor, W0: torch.Tensor, V0: torch.Tensor, *, gate: str,
    bias: float | None = None, scale: float | None = None, max_iter: int = 2000,
    gtol: float | None = None,
) -> AttentionFit:
    """Least-squares fit of multi-head attention to R data sets at once.

    The objective is the sum over replications of each one's mean squared residual, so its
    gradient with respect to a replication's heads is that replication's own gradient and the
    minimiser is the tuple of per-replication least-squares fits. It is minimised by L-BFGS
    (strong Wolfe line search) from ``(W0, V0)``, in the dtype of ``X``.

    Parameters
    ----------
    X : (R, n, N, d), Y : (R, n, N, d_v)
    W0 : (R, H, d, d), V0 : (R, H, d, d_v) starting heads
    gate : ``sigmoid`` or ``softmax``
    bias, scale : as in :class:`AttentionTeacher` (defaults ``-log N``, ``1/sqrt(d)``)
    max_iter : cap on L-BFGS iterations
    gtol : per-replication gradient-norm tolerance; default ``eps^(1/3)`` of the dtype (6e-6 in
        float64, 5e-3 in float32: L-BFGS stalls near ``sqrt(eps)`` relative accuracy of the loss)
    """
    models.check_gate(gate)
    if not isinstance(X, torch.Tensor) or X.dim() != 4:
        raise ValueError(f"X: must have shape (R, n, N, d), got "
                         f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
    R, n, N, d = X.shape
    if N < 1:
        raise ValueError("X: sequence length N must be >= 1, got 0")
    check_heads(W0, V0, "W0")
    if W0.shape[0] != R or W0.shape[-1] != d:
        raise ValueError(f"W0: must have shape (R, H, d, d) = ({R}, H, {d}, {d}), got "
                         f"{tuple(W0.shape)}")
    if not isinstance(Y, torch.Tensor) or tuple(Y.shape) != (R, n, N, V0.shape[-1]):
        raise ValueError(f"Y: must have shape (R, n, N, d_v) = {(R, n, N, V0.shape[-1])}, got "
                         f"{tuple(Y.shape) if isinstance(Y, torch.Tensor) else type(Y).__name__}")
    check_finite("X", X)
    check_finite("Y", Y)
    max_iter = check_positive_int("max_iter", max_iter)
    bias = -math.log(N) if bias is None else float(bias)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    gtol = torch.finfo(X.dtype).eps ** (1 / 3) if gtol is None else float(gtol)

    W = W0.to(X).clone().requires_grad_(True)
    V = V0.to(X).clone().requires_grad_(True)
    start = time.perf_counter()

    def per_rep_loss() -> torch.Tensor:
        resid = attention_heads(X, W, V, gate=gate, bias=bias, scale=scale) - Y
        return resid.square().mean(dim=(1, 2, 3))

    opt = torch.optim.LBFGS([W, V], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                            # stop on the loss's rounding, not on gtol: the optimisation error
                            # must stay well below the statistical one at every n
                            history_size=50, tolerance_grad=1e-3 * gtol / math.sqrt(R),
                            # float64's eps even for float32 data: a float32 loss stops changing
                            # (by its rounding) before the parameters are resolved
                            tolerance_change=torch.finfo(torch.float64).eps,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = per_rep_loss().sum()
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    opt.zero_grad()
    loss = per_rep_loss()
    loss.sum().backward()
    grad_norm = torch.sqrt(W.grad.square().sum(dim=(1, 2, 3)) + V.grad.square().sum(dim=(1, 2, 3)))
    if X.is_cuda:
        torch.cuda.synchronize(X.device)
    return AttentionFit(
        W=W.detach().double().cpu(), V=V.detach().double().cpu(),
        fit_loss=loss.detach().double().cpu(), grad_norm=grad_norm.detach().double().cpu(),
        converged=(grad_norm <= gtol).cpu(), n_iter=n_iter, wall_s=time.perf_counter() - start,
        kernel=X.is_cuda and uses_kernel(X),
    )


def head_errors(W: torch.Tensor, V: torch.Tensor, teacher: AttentionTeacher) -> dict[str, torch.Tensor]:
    """Voronoi-style head errors (module docstring) of R fits: name -> (R,), NaN without a cell
    of that type.

    Parameters
    ----------
    W : (R, H, d, d), V : (R, H, d, d_v) fitted heads
    """
    W, V = W.double(), V.double()
    Wt, Vt = teacher.W.double().to(W.device), teacher.V.double().to(W.device)
    R, H = W.shape[:2]
    H0 = teacher.heads
    dist = torch.cdist(W.reshape(R, H, -1), Wt.reshape(1, H0, -1).expand(R, -1, -1))
    assign = dist.argmin(-1)  # (R, H), ties to the lowest teacher head
    count = torch.nn.functional.one_hot(assign, H0).sum(1)  # (R, H0)
    over = torch.gather(count, 1, assign) > 1  # (R, H)
    err_W = (W - Wt[assign]).flatten(2).norm(dim=-1)  # (R, H)
    err_V = (V - Vt[assign]).flatten(2).norm(dim=-1)
    V_sum = torch.stack([torch.zeros_like(Vt).index_add_(0, assign[r], V[r]) for r in range(R)])
    err_V_cell = (V_sum - Vt).flatten(2).norm(dim=-1)  # (R, H0)
    over_cell = count > 1

    def masked_max(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        vals = torch.where(mask, err, torch.full_like(err, -1.0)).amax(-1)
        return torch.where(vals < 0, torch.full_like(vals, float("nan")), vals)

    return {"err_W_exact": masked_max(err_W, ~over), "err_V_exact": masked_max(err_V, ~over),
            "err_W_over": masked_max(err_W, over), "err_V_over": masked_max(err_V_cell, over_cell)}
