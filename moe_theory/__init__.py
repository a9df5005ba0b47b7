"""moe-theory: verify by simulation that sigmoid-gated mixtures of experts estimate their experts
with fewer samples than softmax-gated ones (SPEC section 7 is the stable interface)."""

from moe_theory.config import load_config, parse_config
from moe_theory.data import sample
from moe_theory.estimators import FitResult, SGDProtocol, fit_lse, objective
from moe_theory.initialization import near_truth, random_init
from moe_theory.measure import MixingMeasure
from moe_theory.reference import population_lse, reference_measure
from moe_theory.settings import Setting, get_setting, list_settings, register
from moe_theory.sweep import load_results, merge, run_sweep
from moe_theory.theory import predicted_rate, theory_table
from moe_theory.voronoi import voronoi_cells, voronoi_loss

__version__ = "0.1.0"

__all__ = [
    "FitResult", "MixingMeasure", "SGDProtocol", "Setting", "fit_lse", "get_setting",
    "list_settings", "load_config", "load_results", "merge", "near_truth", "objective",
    "parse_config", "population_lse", "predicted_rate", "random_init", "reference_measure",
    "register", "run_sweep", "sample", "theory_table", "voronoi_cells", "voronoi_loss",
]
