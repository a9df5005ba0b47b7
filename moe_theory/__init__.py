"""moe-theory: verify by simulation that sigmoid-gated mixtures of experts estimate their experts
with fewer samples than softmax-gated ones (SPEC section 7 is the stable interface).

Names are resolved on first use, so that ``kernels`` can import ``moe_theory.models`` without
pulling in the estimators that import ``kernels`` back.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "config", "parse_config": "config",
    "sample": "data",
    "FitResult": "estimators", "SGDProtocol": "estimators", "fit_lse": "estimators",
    "objective": "estimators",
    "near_truth": "initialization", "random_init": "initialization",
    "MixingMeasure": "measure",
    "population_lse": "population", "reference_measure": "population",
    "Setting": "settings", "get_setting": "settings", "list_settings": "settings",
    "register": "settings",
    "load_results": "sweep", "merge": "sweep", "run_sweep": "sweep",
    "predicted_rate": "theory", "theory_table": "theory",
    "voronoi_cells": "voronoi", "voronoi_loss": "voronoi",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f"moe_theory.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    try:
        return import_module(f"moe_theory.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'moe_theory' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return __all__
