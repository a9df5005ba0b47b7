"""Input checks shared by the public interface: every error names the field and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from moe_theory.errors import DeviceError


def check_choice(field: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def check_positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{field}: must be a positive integer, got {value!r}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{field}: must be a positive integer, got {value}")
    return value


def check_positive_float(field: str, value: Any) -> float:
    """:func:`check_number` ``> 0`` of anything ``float()`` reads (a NumPy or PyTorch scalar)."""
    if isinstance(value, bool):  # float(True) is 1.0: a flag is no number
        raise ValueError(f"{field}: must be a positive number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a positive number, got {value!r}") from None
    return check_number(field, value, 0, strict=True)


def check_number(field: str, value: Any, minimum: float = 0.0, *, strict: bool = False
                 ) -> float:
    """A finite real number ``>= minimum`` (``> minimum`` where ``strict``) as a float; a bool
    is no number, nor is a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and (value > minimum if strict else value >= minimum)):
        raise ValueError(f"{field}: must be a finite number {'>' if strict else '>='} "
                         f"{minimum:g}, got {value!r}")
    return float(value)


#: Seeds end up in numpy's and torch's generators, which take 63 and 64 bits, and
#: :func:`moe_theory.data.sample` masks its seed to 63 bits: a larger one would draw what a
#: smaller one draws.
MAX_SEED = 2**63 - 1


def check_seed(field: str, value: Any) -> int:
    """A seed: an integer in ``[0, 2^63)``, not a bool. A negative seed or a float would be
    silently folded onto another seed's numbers (``-1`` masked to ``2^63 - 1``, ``1.5``
    truncated to ``1``), so they are refused rather than converted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
            0 <= value <= MAX_SEED):
        raise ValueError(f"{field}: must be an integer in [0, 2**63 - 1], got {value!r}")
    return int(value)


def check_finite(field: str, tensor: torch.Tensor) -> torch.Tensor:
    if not torch.is_floating_point(tensor):
        raise ValueError(f"{field}: must be a floating-point tensor, got dtype {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{field}: contains {bad} NaN or infinite value(s)")
    return tensor


def check_data(X: torch.Tensor, Y: torch.Tensor | None = None, d: int | None = None) -> None:
    """Check a batch of data sets: ``X: (R, n, d)``, ``Y: (R, n)``; with ``Y`` (data to fit),
    also at least one replication and one sample, and one dtype for both."""
    if not isinstance(X, torch.Tensor) or X.dim() != 3:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X: must be a tensor of shape (R, n, d), got {shape}")
    check_finite("X", X)
    if d is not None and X.shape[-1] != d:
        raise ValueError(f"X: last dimension is {X.shape[-1]} but the measure has d = {d}")
    if Y is not None:
        if not isinstance(Y, torch.Tensor) or tuple(Y.shape) != tuple(X.shape[:2]):
            shape = tuple(Y.shape) if isinstance(Y, torch.Tensor) else type(Y).__name__
            raise ValueError(f"Y: must have shape (R, n) = {tuple(X.shape[:2])}, got {shape}")
        check_finite("Y", Y)
        # data to fit: an empty batch or sample gives NaN losses (0 / 0) or a division by zero,
        # and mixed precisions a torch error that names neither tensor
        if X.shape[0] == 0:
            raise ValueError(f"X: must hold at least one replication (R >= 1), got shape "
                             f"{tuple(X.shape)}")
        if X.shape[1] == 0:
            raise ValueError(f"X: must hold at least one sample (n >= 1), got shape "
                             f"{tuple(X.shape)}")
        if X.dtype != Y.dtype:
            raise ValueError(f"X, Y: must have the same dtype, got {X.dtype} and {Y.dtype}")


def available_devices() -> list[str]:
    """The devices this machine offers: ``cpu`` and each visible ``cuda:N``."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def check_device(field: str, device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that this machine has; a :class:`DeviceError` (a
    ``ValueError``) naming the device and the available ones otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{field}: {device!r} is not a device; expected 'cpu', 'cuda' or "
                         f"'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    available = available_devices()
    if dev.type != "cuda" or not torch.cuda.is_available() or (
            dev.index is not None and dev.index >= torch.cuda.device_count()):
        raise DeviceError(f"{field}: {str(dev)!r} is not available on this machine; available: "
                          f"{', '.join(available)}")
    return dev
