"""Least-squares estimators of mixing measures."""

from moe_theory.estimators.bounds import Bounds, box_bounds, groups_at_bound
from moe_theory.estimators.first_order import SGDProtocol
from moe_theory.estimators.lse import (
                                      ALGORITHMS,
                                      FIT_BACKENDS,
                                      FitResult,
                                      fit_lse,
                                      objective,
                                      starting_measures,
)

__all__ = ["ALGORITHMS", "FIT_BACKENDS", "Bounds", "FitResult", "SGDProtocol", "box_bounds",
           "fit_lse", "groups_at_bound", "objective", "starting_measures"]
