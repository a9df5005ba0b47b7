"""Sigmoid attention (FlashSigmoid-grade) in Triton, with its softmax twin and a dense reference."""

from kernels.attention.sigmoid_attention import sigmoid_attention
from kernels.attention.torch_attention import sigmoid_attention_reference

__all__ = ["sigmoid_attention", "sigmoid_attention_reference"]
