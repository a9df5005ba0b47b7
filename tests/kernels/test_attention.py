"""Sigmoid attention kernels against the float64 dense reference.

Without a GPU these run the Triton kernels through the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), on CPU tensors; with one, on CUDA tensors. Sizes are odd on purpose: they
cross several tiles, a causal diagonal band and a ragged tail with both the interpreter's tiles
(16/32) and the GPU's (64/128).

Tolerances are relative Frobenius errors ||out - ref|| / ||ref|| against the float64 reference
evaluated on the same (rounded) inputs; they are set by the unit roundoff of the arithmetic:
float64 sums of <= 130 terms sit near 1e-15 (bound 1e-12); float32 with IEEE dots near 1e-7
(bound 2e-5 allows ex2.approx's 2^-22 relative error on GPU); float16 and bfloat16 round the
weights P and dS to 11 and 8 bits before the second product, errors near 2^-11 and 2^-8 times a
small factor (bounds 1e-2 and 3e-2).
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from kernels.attention import sigmoid_attention, sigmoid_attention_reference
from kernels.attention.args import check_attention_args
from kernels.attention.sigmoid_attention import (
    HAS_CUSTOM_OP,
    KernelConfigs,
    TileConfig,
    attention_backward,
    attention_forward,
    uses_kernel,
)

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# float64 runs the kernel only under the interpreter; bfloat16 only on the GPU.
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float64, torch.float32]
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}

# (B, H, N_q, N_k, D, causal, bias, alibi, gate); bias: None (default -log N_k), "scalar", "head".
CASES = [
    (1, 2, 1, 1, 16, False, None, False, "sigmoid"),
    (2, 2, 17, 17, 16, True, "scalar", False, "sigmoid"),
    (1, 2, 77, 77, 64, False, "head", True, "sigmoid"),
    (1, 2, 77, 77, 64, True, None, True, "sigmoid"),
    (1, 1, 130, 130, 16, True, "head", False, "sigmoid"),
    (2, 1, 17, 130, 16, True, None, False, "sigmoid"),
    (1, 2, 130, 17, 16, True, "scalar", True, "sigmoid"),
    (1, 2, 77, 130, 64, False, None, False, "sigmoid"),
    (1, 2, 1, 17, 16, True, None, False, "softmax"),
    (1, 2, 77, 77, 64, True, "head", True, "softmax"),
    (2, 1, 17, 130, 16, True, None, False, "softmax"),
    (1, 2, 130, 17, 16, True, "scalar", False, "softmax"),
    (1, 2, 77, 130, 64, False, None, True, "softmax"),
]


def _case_id(case: tuple) -> str:
    b, h, nq, nk, d, causal, bias, alibi, gate = case
    flags = "-causal" * causal + f"-bias{bias}" + "-alibi" * alibi
    return f"{gate}-B{b}H{h}-{nq}x{nk}-D{d}{flags}"


def _inputs(case: tuple, dtype: torch.dtype, seed: int) -> tuple:
    b, h, nq, nk, d, causal, bias, alibi, gate = case
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)

    q, k, v = rand(b, h, nq, d), rand(b, h, nk, d), rand(b, h, nk, d)
    if bias == "scalar":
        bias = -1.7
    elif bias == "head":
        bias = torch.linspace(-3.0, 0.5, h, dtype=torch.float64)
    slopes = torch.rand(h, generator=gen, dtype=torch.float64) * 0.2 if alibi else None
    options = dict(bias=bias, causal=causal, alibi_slopes=slopes, gate=gate)
    return q, k, v, rand(b, h, nq, d), options


def _reference_with_grads(q, k, v, grad_out, options) -> list[torch.Tensor]:
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = sigmoid_attention_reference(*leaves, **options)
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return [out.detach(), *grads]


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert not torch.isnan(got).any(), f"{name}: NaN (an unwritten or poisoned element)"
    err = (got.double() - want).norm().item()
    # abs floor: softmax with one key has dQ = dK = 0 exactly, where only rounding remains.
    bound = rtol * max(want.norm().item(), math.sqrt(want.numel()))
    assert err <= bound, f"{name}: ||err|| = {err:.3e} > {bound:.3e}"


def _poisoned(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device) for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernels_match_reference(case: tuple, dtype: torch.dtype) -> None:
    _check_forward_backward(case, dtype, seed=zlib.crc32(_case_id(case).encode()))


def _check_forward_backward(case: tuple, dtype: torch.dtype, seed: int) -> None:
    """Both kernels' outputs (written into NaN-poisoned buffers) against the float64 reference."""
    q, k, v, grad_out, options = _inputs(case, dtype, seed=seed)
    args = check_attention_args(q, k, v, scale=None, precise=True, **options)
    (out,) = _poisoned(q)
    out, lse = attention_forward(q, k, v, args, out=out)
    grads = attention_backward(grad_out, q, k, v, out, lse, args, grads=tuple(_poisoned(q, k, v)))
    want = _reference_with_grads(q, k, v, grad_out, options)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), want, strict=True):
        _assert_close(name, got, ref, RTOL[dtype])


def _variant_configs(tma: bool) -> KernelConfigs:
    # Tiles streamed through tensor descriptors (TMA on Hopper; the interpreter reads them too)
    # or through pointers with arbitrary strides.
    if ON_GPU:
        fwd, dkdv, dq = (64, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 3)
    else:
        fwd, dkdv, dq = (32, 16, 4, 1), (16, 32, 4, 1), (32, 16, 4, 1)
    return KernelConfigs(*(TileConfig(*t, tma=tma) for t in (fwd, dkdv, dq)))


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("case", [CASES[i] for i in (3, 5, 6, 10)], ids=_case_id)
def test_kernel_variants_match_reference(case: tuple, tma: bool) -> None:
    if tma:
        pytest.importorskip("triton.tools.tensor_descriptor")
    dtype = DTYPES[-1]
    q, k, v, grad_out, options = _inputs(case, dtype, seed=zlib.crc32(_case_id(case).encode()))
    # A (B, N, H, D) layout viewed as (B, H, N, D): the descriptors carry its strides.
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    args = check_attention_args(q, k, v, scale=None, precise=True, **options)
    configs = _variant_configs(tma)
    (out,) = _poisoned(q)
    out, lse = attention_forward(q, k, v, args, out=out, configs=configs)
    grads = attention_backward(
        grad_out, q, k, v, out, lse, args, grads=tuple(_poisoned(q, k, v)), configs=configs
    )
    want = _reference_with_grads(q, k, v, grad_out, options)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), want, strict=True):
        _assert_close(name, got, ref, RTOL[dtype])


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
def test_broadcast_grad_output(tma: bool) -> None:
    # A gradient broadcast over (B, H) has stride 0 there: no descriptor, pointers read it.
    dtype = DTYPES[-1]
    case = (2, 2, 37, 45, 16, True, None, False, "sigmoid")
    q, k, v, grad_out, options = _inputs(case, dtype, seed=13)
    grad_out = grad_out[:1, :1].expand_as(grad_out)
    args = check_attention_args(q, k, v, scale=None, precise=True, **options)
    out, lse = attention_forward(q, k, v, args, configs=_variant_configs(tma))
    grads = attention_backward(grad_out, q, k, v, out, lse, args, configs=_variant_configs(tma))
    want = _reference_with_grads(q, k, v, grad_out, options)
    for name, got, ref in zip(("dq", "dk", "dv"), grads, want[1:], strict=True):
        _assert_close(name, got, ref, RTOL[dtype])


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_public_autograd_and_custom_op_agree(gate: str) -> None:
    dtype = DTYPES[-1]
    q, k, v, grad_out, options = _inputs((2, 3, 33, 40, 32, True, "head", True, gate), dtype, 7)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sigmoid_attention(*leaves, **options)
    grads = torch.autograd.grad(out, leaves, grad_out)
    want = _reference_with_grads(q, k, v, grad_out, options)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), want, strict=True):
        _assert_close(name, got, ref, RTOL[dtype])
    if not HAS_CUSTOM_OP:
        return
    # Eager calls skip the custom op; called directly, its registered autograd agrees.
    args = check_attention_args(q, k, v, scale=None, precise=True, **options)
    op_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    op_out, _ = torch.ops.moe_theory.sigmoid_attention_fwd(
        *op_leaves, args.bias, args.alibi_slopes, args.scale, args.causal, True, gate
    )
    op_grads = torch.autograd.grad(op_out, op_leaves, grad_out)
    for got, ref in zip((op_out, *op_grads), (out, *grads), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.skipif(ON_GPU, reason="float64 runs the kernel only under the interpreter")
@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_gradcheck(gate: str) -> None:
    gen = torch.Generator().manual_seed(3)
    slopes = torch.tensor([0.3])

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    def fn(q, k, v):
        return sigmoid_attention(q, k, v, causal=True, alibi_slopes=slopes, gate=gate)

    assert uses_kernel(torch.empty(0, dtype=torch.float64))
    assert torch.autograd.gradcheck(fn, (rand(1, 1, 3, 16), rand(1, 1, 5, 16), rand(1, 1, 5, 16)))
    # Random projections of the Jacobian on a problem that crosses several tiles.
    big = (rand(2, 1, 37, 16), rand(2, 1, 45, 16), rand(2, 1, 45, 16))
    assert torch.autograd.gradcheck(fn, big, fast_mode=True)


@pytest.mark.skipif(not HAS_CUSTOM_OP, reason="torch.library.custom_op needs PyTorch >= 2.4")
def test_torch_compile_traces_the_custom_op() -> None:
    dtype = DTYPES[-1]
    q, k, v, grad_out, options = _inputs((1, 2, 20, 20, 16, True, None, False, "sigmoid"), dtype, 5)

    def fn(q, k, v):
        return sigmoid_attention(q, k, v, causal=True) * 2.0

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    results = []
    for f in (fn, compiled):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = f(*leaves)
        results.append([out, *torch.autograd.grad(out, leaves, grad_out)])
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_causal_masked_weights_are_exactly_zero(gate: str) -> None:
    # Rows i < 40 must not change, bit for bit, when keys and values j >= 40 change.
    dtype = DTYPES[-1]
    q, k, v, _, options = _inputs((1, 1, 70, 70, 16, True, None, False, gate), dtype, 11)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 40:] *= 3.0
    v2[:, :, 40:] = 1e4
    out = sigmoid_attention(q, k, v, causal=True, gate=gate)
    out2 = sigmoid_attention(q, k2, v2, causal=True, gate=gate)
    assert torch.equal(out[:, :, :40], out2[:, :, :40])


def test_noncontiguous_inputs() -> None:
    # (B, N, H, D) storage viewed as (B, H, N, D), as attention layers usually hold it.
    dtype = DTYPES[-1]
    gen = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(2, 19, 3, 16, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
        .transpose(1, 2)
        for _ in range(3)
    )
    got = sigmoid_attention(q, k, v, causal=True)
    want = sigmoid_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif(ON_GPU, reason="checks the CPU fallbacks")
def test_cpu_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    case = (1, 2, 21, 21, 16, True, "head", True, "sigmoid")
    q, k, v, _, options = _inputs(case, torch.float64, 4)
    # tanh.approx is GPU-only: precise=False falls back to the accurate sigmoid.
    torch.testing.assert_close(
        sigmoid_attention(q, k, v, precise=False, **options),
        sigmoid_attention(q, k, v, precise=True, **options),
        rtol=0, atol=0,
    )
    # Without the interpreter, CPU tensors go to the reference.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not uses_kernel(q)
    torch.testing.assert_close(
        sigmoid_attention(q, k, v, **options), sigmoid_attention_reference(q, k, v, **options)
    )


def test_empty_key_sequence_gives_zeros() -> None:
    dtype = DTYPES[-1]
    q = torch.randn(1, 2, 5, 16, dtype=dtype, device=DEVICE)
    kv = torch.randn(1, 2, 0, 16, dtype=dtype, device=DEVICE)
    assert torch.equal(sigmoid_attention(q, kv, kv), torch.zeros_like(q))


@pytest.mark.skipif(not ON_GPU, reason="tanh.approx.f32 exists only on the GPU")
def test_fast_sigmoid_is_close() -> None:
    # tanh.approx.f32 has ~2^-11 relative error; on weights near 1/N the error of 0.5 + 0.5 tanh is
    # a few percent, but the output, a sum over N weights, stays within 1e-2 in Frobenius norm.
    case = (1, 2, 300, 300, 64, False, None, False, "sigmoid")
    q, k, v, _, options = _inputs(case, torch.bfloat16, 9)
    got = sigmoid_attention(q, k, v, precise=False, **options)
    want = sigmoid_attention_reference(q.double(), k.double(), v.double(), **options)
    _assert_close("out", got, want, 2e-2)


def _bad(**changes):
    base = dict(
        q=torch.randn(1, 2, 8, 16), k=torch.randn(1, 2, 9, 16), v=torch.randn(1, 2, 9, 16),
    )
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (_bad(q=torch.randn(2, 8, 16)), "q must have shape"),
        (_bad(k=torch.randn(1, 3, 9, 16)), "k and v must have the"),
        (_bad(v=torch.randn(1, 2, 7, 16)), "same N_k"),
        (_bad(k=torch.randn(1, 2, 9, 32)), "head dimension"),
        (
            _bad(q=torch.randn(1, 2, 8, 48), k=torch.randn(1, 2, 9, 48),
                 v=torch.randn(1, 2, 9, 48)),
            r"D must be one of \(16, 32, 64, 128\)",
        ),
        (_bad(k=torch.randn(1, 2, 9, 16, dtype=torch.float64)), "share one dtype"),
        (_bad(q=torch.randint(0, 3, (1, 2, 8, 16))), "q.dtype must be one of"),
        (_bad(bias=torch.zeros(3)), r"bias must be a scalar or a tensor of shape \(\) or \(H,\)"),
        (_bad(bias="x"), "bias must be a float"),
        (_bad(alibi_slopes=torch.zeros(1, 2)), r"alibi_slopes must be None or a tensor of shape"),
        (_bad(alibi_slopes=torch.zeros(5)), r"alibi_slopes must be a scalar or a tensor"),
        (_bad(gate="relu"), r"gate must be one of \('sigmoid', 'softmax'\)"),
        (_bad(scale=float("nan")), "scale must be a finite float"),
        (_bad(causal=1), "causal must be True or False"),
    ],
)
def test_bad_input_raises_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sigmoid_attention(**kwargs)


@pytest.mark.skipif(not ON_GPU, reason="needs a second device")
def test_mixed_devices_raise_value_error() -> None:
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="one device"):
        sigmoid_attention(q, torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_batch_head_pairs_fold_past_the_grid_limit(monkeypatch: pytest.MonkeyPatch,
                                                    gate: str) -> None:
    """More (batch, head) pairs than a grid axis takes (CUDA: 65535; here lowered to 2) fold over
    two axes; 5 pairs leave one program of the fold with no pair, which must write nothing."""
    import importlib

    monkeypatch.setattr(importlib.import_module("kernels.attention.sigmoid_attention"),
                        "GRID_YZ_MAX", 2)
    _check_forward_backward((5, 1, 19, 23, 16, True, "scalar", True, gate), torch.float32, seed=11)


def test_a_head_past_int32_offsets_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels index a head's rows in int32: a head whose rows span past that (here the limit
    lowered to a few thousand elements) is refused, naming the tensor, before any launch, in the
    forward and the backward; one just inside it still matches the reference."""
    import importlib

    module = importlib.import_module("kernels.attention.sigmoid_attention")
    case = (1, 2, 40, 40, 16, True, "scalar", False, "sigmoid")
    q, k, v, grad_out, options = _inputs(case, torch.float32, seed=5)
    args = check_attention_args(q, k, v, scale=None, precise=True, **options)
    configs = KernelConfigs(*(TileConfig(16, 16, 4, 1),) * 3)
    # rows 40 + a 16-row tile past the last, at D = 16, plus D: 912 elements
    monkeypatch.setattr(module, "INT32_OFFSETS", 911)
    with pytest.raises(ValueError, match=r"^q: 40 rows of stride 16 .* int32 offsets \(911\)"):
        attention_forward(q, k, v, args, configs=configs)
    with pytest.raises(ValueError, match="int32 offsets"):
        attention_backward(grad_out, q, k, v, _poisoned(q)[0], torch.empty(0), args,
                           configs=configs)
    # a strided key tensor (rows 3 x D apart) spans farther than its contiguous twin
    wide = torch.randn(1, 2, 40, 48, dtype=torch.float32, device=DEVICE)[..., :16]
    monkeypatch.setattr(module, "INT32_OFFSETS", 912)
    with pytest.raises(ValueError, match=r"^k: 40 rows of stride 48"):
        attention_forward(q, wide, v, args, configs=configs)
    got, _ = attention_forward(q, k, v, args, out=_poisoned(q)[0], configs=configs)
    want = sigmoid_attention_reference(q.double(), k.double(), v.double(), **options)
    _assert_close("out", got, want, RTOL[torch.float32])
