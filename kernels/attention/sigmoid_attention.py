"""Sigmoid attention: host launchers, autograd and the ``moe_theory::`` custom ops.

``sigmoid_attention`` dispatches to the Triton kernels of :mod:`kernels.attention.triton_kernels`
for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` (CI runs the real kernel code
through Triton's interpreter that way); otherwise, and for float64 on CUDA, to the dense
reference :func:`kernels.attention.torch_attention.sigmoid_attention_reference`.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from kernels.attention.args import AttentionArgs, check_attention_args
from kernels.attention.torch_attention import sigmoid_attention_reference

LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch parameters of one kernel.

    ``block_m`` tiles queries and ``block_n`` keys in all three kernels. ``tma`` streams the
    inner loop's tiles through tensor descriptors (Hopper's bulk copy engine; CUDA only).
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False


@dataclass(frozen=True)
class KernelConfigs:
    """Tile configurations of the forward, dK/dV and dQ kernels."""

    fwd: TileConfig
    dkdv: TileConfig
    dq: TileConfig


# The interpreter runs each program in numpy: tiny tiles keep CI fast and make the small test
# sizes cross several tiles, a causal diagonal band and a ragged tail.
_INTERPRETER_CONFIGS = KernelConfigs(
    fwd=TileConfig(32, 16, 4, 1), dkdv=TileConfig(16, 32, 4, 1), dq=TileConfig(32, 16, 4, 1)
)


def interpreting() -> bool:
    """Whether Triton runs through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_configs(head_dim: int, dtype: torch.dtype) -> KernelConfigs:
    """Tile configurations for a head dimension and input dtype on the current device.

    Parameters
    ----------
    head_dim : int
        D, one of 16, 32, 64, 128.
    dtype : torch.dtype
        Input dtype.

    Returns
    -------
    KernelConfigs
    """
    if interpreting():
        return _INTERPRETER_CONFIGS
    return _gpu_configs(head_dim, dtype)


@functools.cache
def _gpu_configs(head_dim: int, dtype: torch.dtype) -> KernelConfigs:
    if dtype == torch.float32:
        # Twice the bytes per tile: halve the tiles to stay inside 228 KB of shared memory.
        return KernelConfigs(
            fwd=TileConfig(64, 32, 4, 2),
            dkdv=TileConfig(32, 64, 4, 2),
            dq=TileConfig(64, 32, 4, 2),
        )
    # H100, bf16, N = 16384: kernels/attention/NOTES.md has the sweeps behind these. TMA paid
    # at D = 128 (forward +10%, dK/dV +2%) but cost the D = 64 forward 7%.
    if head_dim > 64:
        return KernelConfigs(
            fwd=TileConfig(64, 64, 4, 3, tma=True),
            dkdv=TileConfig(64, 128, 8, 3, tma=True),
            dq=TileConfig(128, 64, 8, 3),
        )
    return KernelConfigs(
        fwd=TileConfig(64, 64, 4, 3),
        dkdv=TileConfig(64, 64, 4, 3),
        dq=TileConfig(128, 64, 8, 3),
    )


def _fast_tanh(precise: bool) -> bool:
    # tanh.approx.f32 is inline PTX: no interpreter, no CPU.
    return not precise and not interpreting()


def _gate_unit(gate: str, fast: bool) -> float:
    # The factor G of the gate units u = G * logit (see kernels.attention.triton_kernels).
    if gate == "softmax":
        return LOG2E
    return 0.5 if fast else -LOG2E


@functools.lru_cache(maxsize=64)
def _coefficient_rows(
    device: torch.device, dtype: torch.dtype, g: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Made once per (device, dtype, G, scale): every call after that builds the table with one
    # or two device ops, and never with a synchronising host-to-device copy.
    rows = torch.tensor(
        [[g * scale, 0.0, 0.0, scale], [0.0, g, 0.0, 0.0], [0.0, 0.0, -g, 0.0]], dtype=dtype
    ).to(device)
    return rows[0], rows[1], rows[2]


def _coefficients(args: AttentionArgs, fast: bool) -> torch.Tensor:
    # (H, 4) table [G * scale, G * b_h, -G * slope_h, scale] read by every kernel.
    base, per_bias, per_slope = _coefficient_rows(
        args.bias.device, args.bias.dtype, _gate_unit(args.gate, fast), args.scale
    )
    coef = torch.addcmul(base, args.bias[:, None], per_bias)
    if args.alibi_slopes is not None:
        coef.addcmul_(args.alibi_slopes[:, None], per_slope)
    return coef


@functools.cache
def _triton() -> SimpleNamespace:
    """The Triton side: ``tl``, ``TensorDescriptor`` and :mod:`kernels.attention.triton_kernels`.

    The one place this module imports triton, on the first launch: it is optional (a CPU install
    runs the dense reference), and its import (~0.7 s) is paid only by a process that launches.
    """
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from kernels.attention import triton_kernels

    return SimpleNamespace(tl=tl, TensorDescriptor=TensorDescriptor, kernels=triton_kernels)


def _compute_dtype(dtype: torch.dtype) -> Any:
    tl = _triton().tl
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_precision(dtype: torch.dtype) -> str:
    # 16-bit operands ignore it; float32 takes tf32 only where PyTorch's own matmuls would.
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch, head and row strides but need contiguous rows.
    return t if t.stride(-1) == 1 else t.contiguous()


def _streamed(
    a: torch.Tensor, b: torch.Tensor, block_rows: int, cfg: TileConfig
) -> tuple[Any, Any, dict[str, Any]]:
    # The two tensors an inner loop streams, wrapped in (B, H, N, D) descriptors when the config
    # asks for TMA and both layouts allow it: 16-byte aligned base, positive 16-byte strides
    # (an expanded gradient, with stride 0, takes the pointer path).
    def aligned(t: torch.Tensor) -> bool:
        strides = [s * t.element_size() for s in t.stride()[:3]]
        return t.data_ptr() % 16 == 0 and all(s > 0 and s % 16 == 0 for s in strides)

    # The interpreter reads descriptors of CPU tensors too, which lets CI test this path.
    if not (cfg.tma and (a.is_cuda or interpreting()) and aligned(a) and aligned(b)):
        return a, b, {"USE_TMA": False}
    TensorDescriptor = _triton().TensorDescriptor
    block = [1, 1, block_rows, a.shape[-1]]
    return (
        TensorDescriptor.from_tensor(a, block_shape=block),
        TensorDescriptor.from_tensor(b, block_shape=block),
        {"USE_TMA": True},
    )


def _flags(args: AttentionArgs, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "CAUSAL": args.causal,
        "HAS_ALIBI": args.alibi_slopes is not None,
        "IS_SOFTMAX": args.gate == "softmax",
        "FAST": _fast_tanh(args.precise) and args.gate == "sigmoid",
        "COMPUTE": _compute_dtype(dtype),
        "DOT_PRECISION": _dot_precision(dtype),
    }


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    *,
    out: torch.Tensor | None = None,
    configs: KernelConfigs | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, H, N_q, D)``.
    k, v : torch.Tensor
        ``(B, H, N_k, D)``.
    args : AttentionArgs
        Checked arguments (:func:`kernels.attention.args.check_attention_args`).
    out : torch.Tensor, optional
        Contiguous ``(B, H, N_q, D)`` buffer to write into (tests pass one filled with NaN).
    configs : KernelConfigs, optional
        Tile configurations; :func:`default_configs` when None.

    Returns
    -------
    out : torch.Tensor
        ``(B, H, N_q, D)`` in the dtype of ``q``.
    lse : torch.Tensor
        ``(B, H, N_q)`` base-2 log-sum-exp in gate units for softmax; empty for sigmoid.
    """
    _attn_fwd_kernel = _triton().kernels._attn_fwd_kernel
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if args.gate == "softmax":
        lse = torch.empty((batch, heads, n_q), dtype=_work_dtype(q.dtype), device=q.device)
    else:
        lse = torch.empty(0, dtype=_work_dtype(q.dtype), device=q.device)
    if out.numel() == 0:
        return out, lse
    if n_k == 0:
        out.zero_()
        return out, lse.fill_(float("-inf"))
    flags = _flags(args, q.dtype)
    cfg = (configs or default_configs(head_dim, q.dtype)).fwd
    _check_head_spans(max(cfg.block_m, cfg.block_n), q=q, k=k, v=v)
    coef = _coefficients(args, flags["FAST"])
    k_src, v_src, stream = _streamed(k, v, cfg.block_n, cfg)
    _attn_fwd_kernel[_grid(_cdiv(n_q, cfg.block_m), batch * heads)](
        q, k_src, v_src, out, lse if lse.numel() else coef, coef,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        heads, batch * heads, n_q, n_k,
        HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags, **stream,
    )
    return out, lse


#: CUDA's limit on a launch grid's y and z extents.
GRID_YZ_MAX = 65535
#: The kernels index a head's rows in int32 (row offset times row stride, and row times D for
#: the outputs; the batch and head offsets are int64): a head whose rows span more elements
#: would wrap into other rows, so such inputs are refused (:func:`_check_head_spans`).
INT32_OFFSETS = 2**31 - 1


def _check_head_spans(block: int, **tensors: torch.Tensor) -> None:
    """Refuse a tensor whose rows within one head, padded by a tile of ``block`` rows past the
    last (the ragged tail's masked offsets are computed too), span past :data:`INT32_OFFSETS`
    elements, at its row stride or at D (the outputs' layout)."""
    for name, t in tensors.items():
        rows, head_dim = t.shape[2], t.shape[3]
        span = (rows + block) * max(t.stride(2), head_dim) + head_dim
        if span > INT32_OFFSETS:
            raise ValueError(
                f"{name}: {rows} rows of stride {t.stride(2)} (head dimension {head_dim}) span "
                f"{span} elements within one head, past the kernels' int32 offsets "
                f"({INT32_OFFSETS}); split the sequence, or use sigmoid_attention_reference")



def _grid(blocks: int, pairs: int) -> tuple[int, int, int]:
    """Tiles on axis 0; the (batch, head) pairs folded over axes 1 and 2 (each capped at
    :data:`GRID_YZ_MAX`; the kernels skip the pairs past the last)."""
    y = min(pairs, GRID_YZ_MAX)
    return blocks, y, _cdiv(pairs, y)


def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    args: AttentionArgs,
    *,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    configs: KernelConfigs | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the two backward kernels (dK/dV over query tiles, dQ over key tiles).

    Parameters
    ----------
    grad_out : torch.Tensor
        ``(B, H, N_q, D)`` gradient of the output.
    q, k, v : torch.Tensor
        Forward inputs.
    out, lse : torch.Tensor
        Forward outputs of :func:`attention_forward` (read only for softmax).
    args : AttentionArgs
        Checked arguments.
    grads : tuple of torch.Tensor, optional
        Contiguous ``(dq, dk, dv)`` buffers to write into (tests pass them filled with NaN).
    configs : KernelConfigs, optional
        Tile configurations; :func:`default_configs` when None.

    Returns
    -------
    tuple of torch.Tensor
        ``(dq, dk, dv)`` shaped like ``(q, k, v)``.
    """
    kernels = _triton().kernels
    q, k, v, grad_out = (_unit_last_stride(t) for t in (q, k, v, grad_out))
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    if grads is None:
        grads = tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dq, dk, dv = grads
    if dq.numel() == 0 or dk.numel() == 0:
        for g in grads:
            g.zero_()
        return dq, dk, dv
    flags = _flags(args, q.dtype)
    configs = configs or default_configs(head_dim, q.dtype)
    _check_head_spans(max(max(c.block_m, c.block_n) for c in (configs.dkdv, configs.dq)),
                      q=q, k=k, v=v, grad_out=grad_out)
    coef = _coefficients(args, flags["FAST"])
    if args.gate == "softmax":
        # rowsum(dO * O) = rowsum(P * dP): the softmax normaliser's share of dS.
        delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1).contiguous()
        lse_arg, delta_arg = lse, delta
    else:
        lse_arg = delta_arg = coef
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3])
    cfg = configs.dkdv
    q_src, do_src, stream = _streamed(q, grad_out, cfg.block_m, cfg)
    kernels._attn_bwd_dkdv_kernel[_grid(_cdiv(n_k, cfg.block_n), batch * heads)](
        q_src, k, v, do_src, lse_arg, delta_arg, dk, dv, coef, *strides, heads, batch * heads,
        n_q, n_k,
        HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags, **stream,
    )
    cfg = configs.dq
    k_src, v_src, stream = _streamed(k, v, cfg.block_n, cfg)
    kernels._attn_bwd_dq_kernel[_grid(_cdiv(n_q, cfg.block_m), batch * heads)](
        q, k_src, v_src, grad_out, lse_arg, delta_arg, dq, coef, *strides, heads, batch * heads,
        n_q, n_k,
        HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags, **stream,
    )
    return dq, dk, dv


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _args_from_op(
    bias: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    scale: float,
    causal: bool,
    precise: bool,
    gate: str,
) -> AttentionArgs:
    return AttentionArgs(
        scale=scale, bias=bias, alibi_slopes=alibi_slopes, causal=causal, precise=precise, gate=gate
    )


def _forward_op_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    scale: float,
    causal: bool,
    precise: bool,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = _args_from_op(bias, alibi_slopes, scale, causal, precise, gate)
    return attention_forward(q, k, v, args)


def _forward_op_fake(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    scale: float,
    causal: bool,
    precise: bool,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    lse_shape = q.shape[:3] if gate == "softmax" else (0,)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=_work_dtype(q.dtype))


def _backward_op_impl(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    bias: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    scale: float,
    causal: bool,
    precise: bool,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = _args_from_op(bias, alibi_slopes, scale, causal, precise, gate)
    return attention_backward(grad_out, q, k, v, out, lse, args)


def _backward_op_fake(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    bias: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    scale: float,
    causal: bool,
    precise: bool,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# torch.library.custom_op (PyTorch >= 2.4) makes the kernels opaque, traceable nodes for
# torch.compile. Eager calls skip its dispatch: on the H100 machine it cost 340 us of host time
# per forward (kernels/attention/NOTES.md), more than the whole kernel below N = 2048.
HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")
if HAS_CUSTOM_OP:
    _forward_op = torch.library.custom_op("moe_theory::sigmoid_attention_fwd", mutates_args=())(
        _forward_op_impl
    )
    _forward_op.register_fake(_forward_op_fake)
    _backward_op = torch.library.custom_op("moe_theory::sigmoid_attention_bwd", mutates_args=())(
        _backward_op_impl
    )
    _backward_op.register_fake(_backward_op_fake)


def _eager(t: torch.Tensor) -> bool:
    # Tracing (torch.compile, make_fx) hands over tensor subclasses (fake, functional): those
    # must meet the custom op; plain tensors can run the kernels directly.
    return not HAS_CUSTOM_OP or type(t) in (torch.Tensor, torch.nn.Parameter)


class SigmoidAttentionFunction(torch.autograd.Function):
    """Autograd of the kernel path: inputs ``(q, k, v, bias, alibi_slopes, scale, causal,
    precise, gate)`` as the forward custom op, outputs ``(out, lse)``.

    Eager calls run through it; its ``setup_context`` and ``backward`` are also the custom op's
    registered autograd. Only q, k and v receive gradients; the bias and the ALiBi slopes are
    treated as constants.
    """

    @staticmethod
    def forward(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        alibi_slopes: torch.Tensor | None,
        scale: float,
        causal: bool,
        precise: bool,
        gate: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        forward = _forward_op_impl if _eager(q) else _forward_op
        return forward(q, k, v, bias, alibi_slopes, scale, causal, precise, gate)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        q, k, v, bias, alibi_slopes, scale, causal, precise, gate = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, bias, alibi_slopes)
        ctx.options = (scale, causal, precise, gate)
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, grad_lse: torch.Tensor | None) -> tuple:
        q, k, v, out, lse, bias, alibi_slopes = ctx.saved_tensors
        backward = _backward_op_impl if _eager(grad_out) else _backward_op
        dq, dk, dv = backward(grad_out, q, k, v, out, lse, bias, alibi_slopes, *ctx.options)
        return dq, dk, dv, None, None, None, None, None, None


if HAS_CUSTOM_OP:
    _forward_op.register_autograd(
        SigmoidAttentionFunction.backward, setup_context=SigmoidAttentionFunction.setup_context
    )


def uses_kernel(t: torch.Tensor) -> bool:
    """Whether :func:`sigmoid_attention` runs the Triton kernels for inputs like ``t``.

    CUDA float16/bfloat16/float32 run the compiled kernels; CPU tensors run them through the
    interpreter when ``TRITON_INTERPRET=1`` (bfloat16 excepted: the interpreter lacks it).
    Everything else, float64 on CUDA included, goes to the dense reference.
    """
    if t.is_cuda:
        return t.dtype != torch.float64
    return t.device.type == "cpu" and interpreting() and t.dtype != torch.bfloat16


def sigmoid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: float | torch.Tensor | None = None,
    scale: float | None = None,
    causal: bool = False,
    alibi_slopes: torch.Tensor | None = None,
    precise: bool = True,
    gate: str = "sigmoid",
) -> torch.Tensor:
    """Sigmoid attention ``O = sigmoid(Q K^T * scale + b) V``, fused, with autograd
    (docs/kernels.md#sigmoid-attention).

    Parameters
    ----------
    q : torch.Tensor
        ``(B, H, N_q, D)`` queries; D in {16, 32, 64, 128}; float16, bfloat16, float32 (float64
        through the reference, or the interpreter).
    k, v : torch.Tensor
        ``(B, H, N_k, D)`` keys and values, same dtype and device as ``q``.
    bias : float, torch.Tensor of shape () or (H,), or None
        Logit bias; ``-log(N_k)`` when None. Treated as a constant by autograd.
    scale : float or None
        Logit scale; ``1 / sqrt(D)`` when None.
    causal : bool
        Query i sees keys j <= i (SDPA's alignment); masked weights are exactly 0.
    alibi_slopes : torch.Tensor of shape (H,) or None
        Adds ``-slope_h * |i - j|`` to the logits. Treated as a constant by autograd.
    precise : bool
        True: accurate sigmoid (``1 / (1 + 2^u)``, relative error ~3e-6 on the weights). False:
        ``0.5 + 0.5 tanh(x / 2)`` with ``tanh.approx.f32`` (GPU only, CPU falls back to precise):
        up to 5% relative error on weights near 1/N at N = 16384 (``kernels/attention/NOTES.md``).
    gate : {"sigmoid", "softmax"}
        ``"softmax"`` runs the softmax variant of the same kernels, for side-by-side experiments.

    Returns
    -------
    torch.Tensor
        ``(B, H, N_q, D)`` in the dtype of ``q``.

    Raises
    ------
    ValueError
        On mismatched shapes, dtypes or devices, unsupported D, or a bad option.
    """
    args = check_attention_args(
        q, k, v, bias=bias, scale=scale, causal=causal, alibi_slopes=alibi_slopes,
        precise=precise, gate=gate,
    )
    if not uses_kernel(q):
        return sigmoid_attention_reference(
            q, k, v, bias=args.bias, scale=args.scale, causal=causal,
            alibi_slopes=args.alibi_slopes, precise=precise, gate=gate,
        )
    inputs = (q, k, v, args.bias, args.alibi_slopes, args.scale, causal, precise, gate)
    if HAS_CUSTOM_OP and torch.compiler.is_compiling():
        out, _ = _forward_op(*inputs)
    else:
        out, _ = SigmoidAttentionFunction.apply(*inputs)
    return out
