"""Sigmoid attention (FlashSigmoid-grade) in Triton, with its softmax twin and a dense reference."""

from kernels.attention.reference import sigmoid_attention_reference
from kernels.attention.sigmoid_attention import sigmoid_attention

__all__ = ["sigmoid_attention", "sigmoid_attention_reference"]
