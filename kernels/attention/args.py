"""Argument checks shared by the Triton kernel and the PyTorch reference.

Every public entry point calls :func:`check_attention_args` first, so that bad input raises the
same ``ValueError`` (naming the argument and the allowed values) whichever path computes the
result, and so that defaults (scale, bias) are decided in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GATES = ("sigmoid", "softmax")
KERNEL_HEAD_DIMS = (16, 32, 64, 128)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionArgs:
    """Checked and defaulted attention arguments.

    Attributes
    ----------
    scale : float
        Multiplier of ``Q K^T``; ``1 / sqrt(D)`` unless given.
    bias : torch.Tensor
        ``(H,)`` additive logit bias per head, on the device of ``q``, float64 for float64
        inputs and float32 otherwise; ``-log(N_k)`` unless given.
    alibi_slopes : torch.Tensor or None
        ``(H,)`` ALiBi slopes (same device and dtype rule as ``bias``), or None.
    causal : bool
    precise : bool
    gate : str
        ``"sigmoid"`` or ``"softmax"``.
    """

    scale: float
    bias: torch.Tensor
    alibi_slopes: torch.Tensor | None
    causal: bool
    precise: bool
    gate: str


def _bias_dtype(like: torch.Tensor) -> torch.dtype:
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def _per_head(name: str, value: torch.Tensor, num_heads: int, like: torch.Tensor) -> torch.Tensor:
    if value.dim() == 0:
        value = value.reshape(1).expand(num_heads)
    if value.shape != (num_heads,):
        raise ValueError(
            f"{name} must be a scalar or a tensor of shape () or (H,) = ({num_heads},); "
            f"got shape {tuple(value.shape)}"
        )
    if not (value.dtype.is_floating_point or value.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers; got dtype {value.dtype}")
    return value.detach().to(device=like.device, dtype=_bias_dtype(like)).contiguous()


def check_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: float | torch.Tensor | None,
    scale: float | None,
    causal: bool,
    alibi_slopes: torch.Tensor | None,
    precise: bool,
    gate: str,
    head_dims: tuple[int, ...] | None = KERNEL_HEAD_DIMS,
) -> AttentionArgs:
    """Validate attention inputs and fill in the defaults.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, H, N_q, D)`` queries.
    k, v : torch.Tensor
        ``(B, H, N_k, D)`` keys and values.
    bias, scale, causal, alibi_slopes, precise, gate
        As in :func:`kernels.attention.sigmoid_attention`.
    head_dims : tuple of int or None
        Allowed head dimensions D; None allows any.

    Returns
    -------
    AttentionArgs

    Raises
    ------
    ValueError
        If a shape, dtype, device or option is not one of the allowed values.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, H, N, D); got {type(t)}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have shape (B, H, N, D) (4 dims); got shape {tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{name}.dtype must be one of float16, bfloat16, float32, float64; got {t.dtype}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k, v must be on one device; got q {q.device}, k {k.device}, v {v.device}"
        )
    batch, heads, _, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or v.shape[:2] != (batch, heads):
        raise ValueError(
            "k and v must have the (B, H) of q = "
            f"{(batch, heads)}; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must have the same N_k; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[3] != head_dim or v.shape[3] != head_dim:
        raise ValueError(
            f"q, k, v must share the head dimension D; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if head_dims is not None and head_dim not in head_dims:
        raise ValueError(f"head dimension D must be one of {head_dims}; got D = {head_dim}")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}; got {gate!r}")
    for name, flag in (("causal", causal), ("precise", precise)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False; got {flag!r}")

    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None; got {scale!r}")

    n_keys = k.shape[2]
    if bias is None:
        # b = -log(N_k) keeps each sigmoid row's total weight O(1) at any length
        # (docs/theory.md#self-attention).
        bias = -math.log(n_keys) if n_keys > 0 else 0.0
    if isinstance(bias, bool):
        raise ValueError(f"bias must be a float, a tensor of shape () or (H,), or None; got {bias}")
    if isinstance(bias, (int, float)):
        if not math.isfinite(bias):
            raise ValueError(f"bias must be finite; got {bias}")
        # Made on the device: a host-to-device copy would synchronise every call.
        bias = torch.full((heads,), float(bias), dtype=_bias_dtype(q), device=q.device)
    if not isinstance(bias, torch.Tensor):
        raise ValueError(
            f"bias must be a float, a tensor of shape () or (H,), or None; got {type(bias)}"
        )
    bias = _per_head("bias", bias, heads, q)

    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor) or alibi_slopes.dim() != 1:
            got = (
                tuple(alibi_slopes.shape)
                if isinstance(alibi_slopes, torch.Tensor)
                else repr(alibi_slopes)
            )
            raise ValueError(
                f"alibi_slopes must be None or a tensor of shape (H,) = ({heads},); got {got}"
            )
        alibi_slopes = _per_head("alibi_slopes", alibi_slopes, heads, q)

    return AttentionArgs(
        scale=float(scale),
        bias=bias,
        alibi_slopes=alibi_slopes,
        causal=causal,
        precise=precise,
        gate=gate,
    )
