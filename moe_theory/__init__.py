"""moe-theory: verify by simulation that sigmoid-gated mixtures of experts estimate their experts
with fewer samples than softmax-gated ones (docs/theory.md#public-interface is the stable
interface).

The public names below, and the submodules they live in (``mt.models``, ``mt.measure``,
``mt.sweep``, ...), are imported here; the plotting and report modules, which load matplotlib, are
imported where used (``from moe_theory import plotting``).
"""

from moe_theory import attention_moe, models
from moe_theory.config import load_config, parse_config
from moe_theory.data import sample
from moe_theory.estimators import FitResult, SGDProtocol, fit_lse, objective
from moe_theory.estimators.bounds import Bounds, box_bounds
from moe_theory.initialization import multi_start, near_truth, random_init
from moe_theory.measure import MixingMeasure
from moe_theory.population import population_lse, reference_measure
from moe_theory.settings import Setting, get_setting, list_settings, register
from moe_theory.store import load_fits, load_results, merge
from moe_theory.sweep import run_sweep
from moe_theory.theory import predicted_rate, theory_table
from moe_theory.threads import apply_thread_default
from moe_theory.voronoi import voronoi_cells, voronoi_loss

# small batched fits run fastest on one torch thread: set once here, for the CLI, scripts and
# notebooks alike (moe_theory.threads says how to override it)
apply_thread_default()

__version__ = "0.1.0"

__all__ = [
    "attention_moe", "Bounds", "box_bounds", "fit_lse", "FitResult", "get_setting", "list_settings",
    "load_config", "load_fits", "load_results", "merge", "MixingMeasure", "models", "multi_start",
    "near_truth", "objective", "parse_config", "population_lse", "predicted_rate", "random_init",
    "reference_measure", "register", "run_sweep", "sample", "Setting", "SGDProtocol",
    "theory_table", "voronoi_cells", "voronoi_loss",
]
