"""PyTorch reference for sigmoid (and softmax) attention: the test oracle.

It materialises the ``(B, H, N_q, N_k)`` weights, so it is exact to the working precision
(float64 for float64 inputs) and differentiable by autograd, and it is only for small problems.
"""

from __future__ import annotations

import torch

from kernels.attention.args import AttentionArgs, check_attention_args


def attention_logits(q: torch.Tensor, k: torch.Tensor, args: AttentionArgs) -> torch.Tensor:
    """Gate logits ``Q K^T * scale + b - slope_h |i - j|`` with masked entries at ``-inf``.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, H, N_q, D)``, already in the working dtype.
    k : torch.Tensor
        ``(B, H, N_k, D)``, same dtype as ``q``.
    args : AttentionArgs
        Checked arguments.

    Returns
    -------
    torch.Tensor
        ``(B, H, N_q, N_k)`` logits.
    """
    n_q, n_k = q.shape[2], k.shape[2]
    logits = torch.matmul(q, k.transpose(-1, -2)) * args.scale
    logits = logits + args.bias.to(logits.dtype).view(1, -1, 1, 1)
    rows = torch.arange(n_q, device=q.device).view(-1, 1)
    cols = torch.arange(n_k, device=q.device).view(1, -1)
    if args.alibi_slopes is not None:
        distance = (rows - cols).abs().to(logits.dtype)
        logits = logits - args.alibi_slopes.to(logits.dtype).view(1, -1, 1, 1) * distance
    if args.causal:
        # Top-left alignment, as torch SDPA's is_causal: query i sees keys j <= i.
        logits = logits.masked_fill(cols > rows, float("-inf"))
    return logits


def sigmoid_attention_reference(
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
    """Sigmoid attention ``sigmoid(Q K^T * scale + b) V`` computed densely.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, H, N_q, D)`` queries, any D.
    k, v : torch.Tensor
        ``(B, H, N_k, D)`` keys and values.
    bias : float, torch.Tensor of shape () or (H,), or None
        Logit bias; ``-log(N_k)`` when None.
    scale : float or None
        Logit scale; ``1 / sqrt(D)`` when None.
    causal : bool
        Query i sees keys j <= i (masked weights are exactly 0).
    alibi_slopes : torch.Tensor of shape (H,) or None
        Adds ``-slope_h * |i - j|`` to the logits.
    precise : bool
        Accepted for signature parity with the kernel; the reference is always exact.
    gate : {"sigmoid", "softmax"}
        ``"softmax"`` gives ``softmax(logits) V`` over the same logits.

    Returns
    -------
    torch.Tensor
        ``(B, H, N_q, D)`` in the dtype of ``q``; float16/bfloat16 inputs are computed in float32.
    """
    args = check_attention_args(
        q, k, v, bias=bias, scale=scale, causal=causal, alibi_slopes=alibi_slopes,
        precise=precise, gate=gate, head_dims=None,
    )
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = attention_logits(q.to(work), k.to(work), args)
    if gate == "sigmoid":
        weights = torch.sigmoid(logits)
    else:
        weights = torch.softmax(logits, dim=-1)
    return torch.matmul(weights, v.to(work)).to(q.dtype)
