"""Sweep configurations: TOML files under ``simulations/configs/``, validated before any work.

A sweep is the cross product settings x sample sizes x replications, each setting fitted with
every gate it names. Keys (all validated; unknown keys are rejected; each key's default and
bounds: docs/design.md#configs)::

    name = "nguyen2024"
    description = "..."
    settings = ["nguyen2024-dense-relu", ...]
    fit_gates = ["sigmoid", "softmax"]         # optional; default: each setting's own
    n = [1000, 2000]  or  n = {min = 1000, max = 100000, num = 15}   # num log-spaced sizes; n <= 2**40
    reps = 20
    gate_reps = {softmax = 8}                  # optional: fewer replications of a fitted gate
                                               # (a multiple of rep_block: whole shards)
    rep_block = 20                             # replications per shard (one batched fit)
    seed = 0
    algorithm = "lm"                           # lm | lbfgs | adam | sgd-paper
    max_iter = 200
    jitter = 0.01
    bound_scale = 10.0                         # box half-width per parameter group, in units of
                                               # the reference's scale (inf: no box), or one per
                                               # group: {beta0 = 10, beta1 = 3, a = 3, b = 3}
                                               # (groups not named: 10)
    starts = 4                                 # starts per replication beside the near-reference one
    start_jitter = 0.1                         # their jitter (default 10 x jitter)
    start_splits = "reference"                 # reference | every: the atoms they copy
    gram_dtype = "float64"                     # float64 | float32 | tf32 | tf32x3: the
                                               # precision of the Gram products of J^T J (LM's
                                               # path, not its fixed points; docs/kernels.md)
    g_bar_design_size = 1000000                # optional: G_bar's design (default: the device's)
    k_fit = 9                                  # optional override of the settings' k
    losses = ["D1", "D3", ...]                 # optional; default: all that apply (some fit
                                               # of each setting must have one, in every shard)
    sgd = {epochs = 10, lr = 0.1, batch_size = 64, seed = 0}
    [plot]                                     # loss(es) each fitted gate is drawn with
                                               # (a gate no setting fits is refused):
    sigmoid = ["D3", "D1"]                     # the first one a curve has
    softmax = [["err_eta_over"], ["D1"]]       # or one curve per list
    [fast]                                     # overrides applied by --fast (checked always)
    settings = [...]; n = {...}; reps = 8
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kernels.moe.gram import GRAM_DTYPES
from moe_theory import models
from moe_theory.data import MAX_N
from moe_theory.estimators import ALGORITHMS, SGDProtocol
from moe_theory.estimators.bounds import DEFAULT_BOUND_SCALE, group_scales, no_box
from moe_theory.initialization import DEFAULT_EXTRA_STARTS
from moe_theory.settings import Setting, get_setting
from moe_theory.voronoi import ALL_KINDS, applicable_losses, parameter_error_parts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent.parent / "simulations" / "configs"
#: values of ``start_splits`` (SweepConfig)
START_SPLITS = ("reference", "every")
_KEYS = {"name", "description", "settings", "fit_gates", "n", "reps", "rep_block", "seed",
         "algorithm", "max_iter", "jitter", "k_fit", "losses", "sgd", "plot", "fast", "panels",
         "bound_scale", "starts", "start_jitter", "start_splits", "gram_dtype",
         "g_bar_design_size", "gate_reps"}


@dataclass(frozen=True)
class SweepConfig:
    name: str
    settings: tuple[str, ...]
    n: tuple[int, ...]
    reps: int
    rep_block: int = 20
    seed: int = 0
    algorithm: str = "lm"
    max_iter: int = 200
    jitter: float = 0.01
    #: docs/theory.md#compact-parameter-set: the box's half-width per parameter group in units of
    #: the reference's scale (:func:`~moe_theory.estimators.bounds.box_bounds`); inf: no box; a
    #: dict (every group of :data:`~moe_theory.estimators.bounds.PARAMETER_GROUPS`): one per group
    bound_scale: float | dict = DEFAULT_BOUND_SCALE
    #: docs/theory.md#multi-start: starts per replication beside the near-reference one, and their
    #: jitter (None: :data:`~moe_theory.initialization.START_JITTER_FACTOR` x ``jitter``)
    starts: int = DEFAULT_EXTRA_STARTS
    start_jitter: float | None = None
    #: docs/theory.md#multi-start: which of the reference's atoms the extra starts copy where the
    #: fit has more atoms: ``reference`` (the setting's split, as the near-reference start) or
    #: ``every`` (they cycle through every split, and the box holds every split's start)
    start_splits: str = "reference"
    #: docs/kernels.md#mixed-precision-gauss-newton: precision of the Gram products of LM's
    #: ``J^T J`` (:data:`kernels.moe.gram.GRAM_DTYPES`); loss, gradient and stopping stay float64
    gram_dtype: str = "float64"
    #: docs/theory.md#the-reference-measure-g_bar: design points of the population fit G_bar
    #: (None: the device's, :data:`~moe_theory.population.DESIGN_SIZE`); a grid whose largest n
    #: approaches the default design needs more, or G_bar's own error fails its certificate
    g_bar_design_size: int | None = None
    fit_gates: tuple[str, ...] | None = None
    #: replications of a fitted gate where fewer than ``reps`` (whole shards: replications
    #: ``0..gate_reps[gate]-1``, the same data as the other gates' first ones); a gate that
    #: cannot be measured (the over-specified softmax fit, docs/theory.md#identified-losses)
    #: need not cost what a certified curve's CI does
    gate_reps: dict = field(default_factory=dict)
    k_fit: int | None = None
    losses: tuple[str, ...] | None = None
    sgd: dict = field(default_factory=dict)
    plot: dict = field(default_factory=dict)
    panels: tuple = ()
    description: str = ""

    # ---- derived -------------------------------------------------------------------------
    def setting(self, name: str) -> Setting:
        """The named setting, with this config's ``k_fit`` override applied."""
        setting = get_setting(name)
        return setting if self.k_fit is None else replace(setting, k_fit=self.k_fit)

    def setting_objects(self) -> list[Setting]:
        return [self.setting(name) for name in self.settings]

    def gates_for(self, setting: Setting) -> tuple[str, ...]:
        return self.fit_gates or setting.fit_gates

    def reps_of(self, gate: str) -> int:
        """Replications ``0..reps_of(gate)-1`` are fitted with ``gate``."""
        return self.gate_reps.get(gate, self.reps)

    def gates_in(self, setting: Setting, rep_start: int) -> tuple[str, ...]:
        """The gates fitted in a shard of ``setting`` whose replications start at ``rep_start``
        (``gate_reps`` is whole shards, so a gate fits a shard whole or not at all)."""
        return tuple(g for g in self.gates_for(setting) if rep_start < self.reps_of(g))

    def sgd_protocol(self) -> SGDProtocol:
        return SGDProtocol(**self.sgd)

    @property
    def has_box(self) -> bool:
        """Whether some parameter group is bounded (``bound_scale`` not inf everywhere)."""
        return not no_box(self.bound_scale)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @property
    def hash(self) -> str:
        """Identifies the results a config produces (the description and plot keys do not).

        A config without a box and with one start, or with the float64 Gram, hashes as it did
        before those keys existed: its fits are the same, bit for bit."""
        d = self.to_dict()
        for key in ("description", "plot", "panels", "name"):
            d.pop(key)
        if not self.has_box:
            d.pop("bound_scale")
        if self.starts == 0:
            d.pop("starts")
            d.pop("start_jitter")
        if self.gram_dtype == "float64":
            d.pop("gram_dtype")
        if self.start_splits == "reference":
            d.pop("start_splits")
        if self.g_bar_design_size is None:
            d.pop("g_bar_design_size")
        if not self.gate_reps:
            d.pop("gate_reps")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _err(key: str, msg: str) -> ValueError:
    return ValueError(f"config key {key!r}: {msg}")


#: Each shard is a file and a job of the sweep's plan: past this many the plan itself (listed in
#: memory, a folder of that many files) is the problem, not the fits (the committed figures plan
#: at most a few hundred). A grid of 10^9 replications failed late, out of memory while planning.
MAX_SHARDS = 100_000
#: Atoms of a fitted measure past which no fit runs: the Voronoi cells and the reference
#: certificate compare every atom with every other (k = 10^6 asked the CPU for 160 GB), and a
#: Levenberg-Marquardt Gram matrix grows as k^2 (the committed figures fit at most 9).
MAX_K_FIT = 256
#: Extra starts per fit past which the batch of starts is the problem, not the fit (the
#: committed studies use at most 256; 10^9 was reported as a sample size too large to fit).
MAX_STARTS = 4096
#: Bytes of a config's name: it names files and folders (``NAME-fast``, ``NAME.png``,
#: ``NAME.toml``) whose names the file system caps at 255 bytes; a name of 300 characters failed
#: after every fit, when the figure was to be named.
MAX_NAME_BYTES = 200


def _int(raw: dict, key: str, default: Any = None, minimum: int = 1, name: str | None = None,
         maximum: int | None = None, why: str = "") -> int:
    """``raw[key]``, an integer >= ``minimum`` (and <= ``maximum``, ``why`` saying why);
    ``name`` is the key as the config spells it (``n.num`` for ``num`` of the table ``n``).
    Without a default the key is required."""
    if key not in raw and default is None:
        raise _err(name or key, "missing")
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(name or key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise _err(name or key, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _err(name or key, f"must be at most {maximum}{why}, got {value}")
    return value


def _unique_strings(key: str, values: list) -> None:
    for v in values:
        if not isinstance(v, str):
            raise _err(key, f"entries must be strings, got {v!r}")
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise _err(key, f"{dup!r} is listed twice")


def _check_parameter_groups(key: str, losses: list, settings: list) -> None:
    """A per-parameter error ``err_<group>_<cell>`` must name a group that some setting's score
    has: ``beta1`` needs a linear term (linear, quadratic), ``A`` a quadratic one (quadratic,
    monomial)."""
    scores = sorted({get_setting(s).score for s in settings})
    has = {"eta": True, "beta1": any(models.score_has_linear(sc) for sc in scores),
           "A": any(models.score_has_quadratic(sc) for sc in scores)}
    for loss in losses:
        parts = parameter_error_parts(loss)
        group = parts[0] if parts is not None else None
        if group is not None and not has[group]:
            raise _err(key, f"{loss!r} needs a score with parameter group {group}, but the "
                       f"settings' scores are {', '.join(scores)}")


def _check_losses_measure_every_shard(losses: list, settings: list, fit_gates: list | None,
                                      gate_reps: dict, reps: int) -> None:
    """Every shard must have rows: a shard whose fitted gates none of ``losses`` measures (a
    dense truth's sigmoid fit, against G_bar, has no D1) failed after the sweep had written its
    folder ("No objects to concatenate"), and the corrected config was then refused there
    without --force. The last shard of a setting fits the gates of all ``reps`` replications
    (``gate_reps`` lowers a gate's), every other shard those and more."""
    for s in settings:
        setting = get_setting(s)
        gates = [g for g in fit_gates or setting.fit_gates if gate_reps.get(g, reps) == reps]
        if not any(applicable_losses(setting, setting.reference_kind(g), tuple(losses), g)
                   for g in gates):
            measured = "; ".join(
                f"{g} against its {setting.reference_kind(g)}: " + ", ".join(
                    applicable_losses(setting, setting.reference_kind(g), None, g)) for g in gates)
            raise _err("losses", f"none of {losses} measures a fit of setting {s!r} in every "
                       f"shard ({measured})")


def _n_grid(value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):
        unknown = set(value) - {"min", "max", "num"}
        if unknown:
            raise _err("n", f"unknown sub-key(s) {sorted(unknown)}; allowed: min, max, num")
        lo, hi, num = (_int(value, key, name=f"n.{key}") for key in ("min", "max", "num"))
        if hi < lo:
            raise _err("n.max", f"must be >= n.min = {lo}, got {hi}")
        if num > MAX_SHARDS:  # before the grid is drawn: 10^12 points were a MemoryError
            raise _err("n.num", f"must be at most {MAX_SHARDS} (each sample size is a shard at "
                       f"least), got {num}")
        if hi > MAX_N:
            raise _err("n.max", f"must be at most {MAX_N} (2**40: no machine holds one "
                       f"replication of more samples), got {hi}")
        if num == 1 and hi != lo:  # geomspace would give n.min alone, n.max dropped unsaid
            raise _err("n.num", f"must be at least 2 to span n.min = {lo} to n.max = {hi}, got 1 "
                       "(one sample size: n = [N])")
        grid = np.unique(np.round(np.geomspace(lo, hi, num)).astype(int))
        if len(grid) < num:  # sizes closer than 1 apart round onto one another
            raise _err("n.num", f"{num} log-spaced sizes from {lo} to {hi} round to "
                       f"{len(grid)} distinct integers; ask for at most {len(grid)}")
        return tuple(int(v) for v in grid)
    if not isinstance(value, list) or not value:
        raise _err("n", "must be a non-empty list of sample sizes or {min, max, num}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise _err("n", f"sample sizes must be positive integers, got {v!r}")
        if v > MAX_N:
            raise _err("n", f"sample sizes must be at most {MAX_N} (2**40: no machine holds one "
                       f"replication of more samples), got {v}")
    return tuple(sorted(set(value)))


def plot_curves(entry: Any) -> list:
    """A ``[plot]`` entry as its curves, each the list of its candidate losses: a loss, a list of
    candidates (one curve) or a list of such lists (one curve each). Anything else comes back as
    ``[entry]``, which validation rejects."""
    if isinstance(entry, str):
        return [[entry]]
    if isinstance(entry, list) and all(isinstance(c, str) for c in entry):
        return [entry]
    if isinstance(entry, list):
        return [[c] if isinstance(c, str) else c for c in entry]
    return [entry]


def parse_config(raw: dict, *, fast: bool = False, source: str = "config",
                 written: bool = False) -> SweepConfig:
    """Validate a raw config dict; ``fast`` applies its ``[fast]`` overrides.

    ``written``: the config of a finished sweep's manifest, read as it was run: rules that
    concern only what is drawn (a ``plot`` entry for a gate no setting fits) are checked when a
    config is written, not again on every read of results made before them.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: must be a TOML table")
    raw = copy.deepcopy(raw)
    unknown = set(raw) - _KEYS
    if unknown:
        raise _err(sorted(unknown)[0], f"unknown key; allowed: {', '.join(sorted(_KEYS))}")
    overrides = raw.pop("fast", None)
    if overrides is not None:
        # checked whether or not --fast is given: a broken [fast] table was found only by the
        # first run that asked for it, and its errors named the key without its table
        if not isinstance(overrides, dict) or not overrides:
            raise _err("fast", f"must be a non-empty table of overrides, got {overrides!r}")
        bad = set(overrides) - (_KEYS - {"fast", "name"})
        if bad:
            raise _err(f"fast.{sorted(bad)[0]}", "unknown key")
        try:
            fast_config = parse_config({**raw, **overrides}, source=source, written=written)
        except ValueError as err:
            key = re.match(r"config key '([^'.]+)", str(err))
            if key is None or key.group(1) not in overrides:
                raise
            raise ValueError(str(err).replace(f"config key '{key.group(1)}",
                                              f"config key 'fast.{key.group(1)}", 1)) from None
        if fast:
            return fast_config
    elif fast:
        raise _err("fast", "--fast needs a [fast] table of overrides in the config")
    for key in ("name", "settings", "n", "reps"):
        if key not in raw:
            raise _err(key, "missing")
    name = _plain_name(raw["name"])
    settings = raw["settings"]
    if not isinstance(settings, list) or not settings:
        raise _err("settings", "must be a non-empty list of setting names")
    _unique_strings("settings", settings)
    for s in settings:
        try:
            get_setting(s)
        except ValueError as err:
            raise _err("settings", str(err)) from None
    fit_gates = raw.get("fit_gates")
    if fit_gates is not None:
        if not isinstance(fit_gates, list) or not fit_gates:
            raise _err("fit_gates", "must be a non-empty list")
        _unique_strings("fit_gates", fit_gates)
        for g in fit_gates:
            if g not in models.GATES:
                raise _err("fit_gates", f"unknown gate {g!r}; allowed: {', '.join(models.GATES)}")
    algorithm = raw.get("algorithm", "lm")
    if algorithm not in ALGORITHMS:
        raise _err("algorithm", f"unknown {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    losses = raw.get("losses")
    if losses is not None:
        if not isinstance(losses, list) or not losses:
            raise _err("losses", "must be a non-empty list")
        _unique_strings("losses", losses)  # a loss listed twice changed the hash, not the run
        for loss in losses:
            if loss not in ALL_KINDS:
                raise _err("losses", f"unknown loss {loss!r}; allowed: {', '.join(ALL_KINDS)}")
        _check_parameter_groups("losses", losses, settings)
    k_fit = raw.get("k_fit")
    if k_fit is not None:
        k_fit = _int(raw, "k_fit", maximum=MAX_K_FIT,
                     why=" (every atom is compared with every other, and LM's Gram matrix grows "
                         "as k^2)")
        for s in settings:
            if k_fit < get_setting(s).k_true:
                raise _err("k_fit", f"k = {k_fit} < k* = {get_setting(s).k_true} of setting {s!r}")
    jitter = raw.get("jitter", 0.01)
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < math.inf:
        raise _err("jitter", f"must be a finite number >= 0, got {jitter!r}")
    bound_scale = _bound_scale(raw.get("bound_scale", DEFAULT_BOUND_SCALE))
    if algorithm == "lbfgs" and not no_box(bound_scale):
        raise _err("bound_scale", "algorithm 'lbfgs' takes no box: set bound_scale = inf")
    starts = _int(raw, "starts", DEFAULT_EXTRA_STARTS, minimum=0, maximum=MAX_STARTS,
                  why=" (every start is a fit of the batch)")
    start_jitter = raw.get("start_jitter")
    if start_jitter is not None and (isinstance(start_jitter, bool) or not isinstance(
            start_jitter, (int, float)) or not 0 < start_jitter < math.inf):
        raise _err("start_jitter", f"must be a positive finite number, got {start_jitter!r}")
    if starts and start_jitter is None and jitter == 0:
        raise _err("start_jitter", "jitter = 0 leaves the extra starts on the near-reference one "
                   "(their default jitter is 10 x jitter): set start_jitter, or starts = 0")
    start_splits = raw.get("start_splits", "reference")
    if start_splits not in START_SPLITS:
        raise _err("start_splits", f"must be one of {', '.join(START_SPLITS)}, got {start_splits!r}")
    gram_dtype = raw.get("gram_dtype", "float64")
    if gram_dtype not in GRAM_DTYPES:
        raise _err("gram_dtype", f"must be one of {', '.join(GRAM_DTYPES)}, got {gram_dtype!r}")
    g_bar_design_size = raw.get("g_bar_design_size")
    if g_bar_design_size is not None:
        # too small a design fails G_bar's certificate (its design error), which says so
        g_bar_design_size = _int(raw, "g_bar_design_size", maximum=MAX_N,
                                 why=" (2**40, as a sample size: no machine holds more)")
    sgd = raw.get("sgd", {})
    if not isinstance(sgd, dict):
        raise _err("sgd", f"must be a table (allowed sub-keys: "
                   f"{', '.join(SGDProtocol.__dataclass_fields__)}), got {sgd!r}")
    for key in ("epochs", "batch_size", "seed"):
        if key in sgd:
            _int(sgd, key, minimum=0 if key == "seed" else 1, name=f"sgd.{key}")
    try:  # the protocol checks the rest (its keys; lr finite and positive), naming sgd.<key>
        SGDProtocol.from_table(sgd)
    except ValueError as err:
        key, _, msg = str(err).partition(": ")
        raise _err(key, msg) from None
    panels = raw.get("panels", [])
    if panels != []:
        # no figure reads it (each setting is a panel; `plot` picks its losses): a config that
        # sets it would be drawn as if it had not, without a word. Manifests carry it empty.
        raise _err("panels", f"is not read by any figure (one panel per setting; choose the "
                   f"losses with `plot`): remove it, got {panels!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):  # it was str()'d: 1, [] and {a = 1} became its text
        raise _err("description", f"must be a string, got {description!r}")
    plot = raw.get("plot", {})
    if not isinstance(plot, dict):
        raise _err("plot", "must be a table mapping a fitted gate to a loss name")
    for gate, losses_ in plot.items():
        curves = plot_curves(losses_)
        if gate not in models.GATES or not curves or any(
                not isinstance(names, (list, tuple)) or not names
                or any(loss not in ALL_KINDS for loss in names) for names in curves):
            raise _err(f"plot.{gate}", f"{losses_!r}: keys are gates {models.GATES}, values a loss, "
                       f"a list of candidate losses from {ALL_KINDS} (the first a curve has is "
                       "drawn), or a list of such lists (one curve each)")
        _check_parameter_groups(f"plot.{gate}", [loss for names in curves for loss in names],
                                settings)
    fitted = fit_gates or sorted({g for s in settings for g in get_setting(s).fit_gates})
    unfitted = [gate for gate in plot if gate not in fitted]
    if unfitted and not written:
        # its curve would be missing from every panel without a word
        raise _err(f"plot.{unfitted[0]}", f"no setting fits the {unfitted[0]} gate (fitted: "
                   f"{', '.join(fitted)}): add it to fit_gates or remove the entry")
    reps = _int(raw, "reps")
    rep_block = min(_int(raw, "rep_block", 20), reps)
    gate_reps = _gate_reps(raw.get("gate_reps", {}), reps, rep_block, fitted)
    if losses is not None:
        _check_losses_measure_every_shard(losses, settings, fit_gates, gate_reps, reps)
    n = _n_grid(raw["n"])
    shards = len(settings) * len(n) * -(-reps // rep_block)
    if shards > MAX_SHARDS:
        raise _err("reps", f"{reps} replications in blocks of rep_block = {rep_block} over "
                           f"{len(n)} sample size(s) and {len(settings)} setting(s) make {shards} "
                           f"shards, more than {MAX_SHARDS}; raise rep_block or lower reps")
    return SweepConfig(
        name=name, settings=tuple(settings), n=n, reps=reps,
        rep_block=rep_block, gate_reps=gate_reps, seed=_int(raw, "seed", 0, minimum=0),
        algorithm=algorithm, max_iter=_int(raw, "max_iter", 200), jitter=float(jitter),
        bound_scale=bound_scale, starts=starts,
        start_jitter=None if start_jitter is None else float(start_jitter),
        start_splits=start_splits, gram_dtype=gram_dtype, g_bar_design_size=g_bar_design_size,
        fit_gates=tuple(fit_gates) if fit_gates else None, k_fit=k_fit,
        losses=tuple(losses) if losses else None, sgd=sgd, plot=plot,
        panels=tuple(panels), description=description,
    )


def _plain_name(name: Any) -> str:
    """The config's name, which names files inside ``--out`` (its figure, ``NAME.png``): a plain
    file name, or ``../run1/audit`` would write outside the folder, over another run's."""
    if (not isinstance(name, str) or name in ("", ".", "..") or name != name.strip()
            or any(c in name for c in "/\\\0")):
        raise _err("name", "must be a plain file name (no '/' or '\\', not '.' or '..', no "
                   f"leading or trailing space), got {name!r}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise _err("name", f"must be at most {MAX_NAME_BYTES} bytes (it names files, whose "
                   f"names the file system caps at 255), got {len(name.encode())}")
    return name


def _bound_scale(raw: Any) -> float | dict:
    """One multiple, or a table of them per parameter group (every group, in order); a table
    whose groups all take one multiple is that multiple, so that it hashes as the plain key.
    :func:`~moe_theory.estimators.bounds.group_scales` validates; its errors name the key."""
    try:
        scales = group_scales(raw)
    except ValueError as err:
        key, _, msg = str(err).partition(": ")
        raise ValueError(f"config key {key!r}: {msg}") from None
    values = set(scales.values())
    return values.pop() if len(values) == 1 else scales


def _gate_reps(raw: Any, reps: int, rep_block: int, gates: list[str]) -> dict:
    if not isinstance(raw, dict):
        raise _err("gate_reps", f"must be a table mapping a fitted gate to its replications, "
                   f"got {raw!r}")
    out = {}
    for gate, value in sorted(raw.items()):
        key = f"gate_reps.{gate}"
        if gate not in gates:
            raise _err(key, f"not a fitted gate of this config (fitted: {', '.join(gates)})")
        value = _int(raw, gate, name=key)
        if value > reps or value % rep_block:
            raise _err(key, f"{value} must be at most reps = {reps} and a multiple of "
                       f"rep_block = {rep_block} (a gate fits whole shards)")
        if value < reps:  # = reps is the default: the config hashes as without it
            out[gate] = value
    return out


def load_config(path_or_name: str | Path, *, fast: bool = False) -> SweepConfig:
    """Load a config by path, or by name from ``simulations/configs/``."""
    path = Path(path_or_name)
    # a bare name is a config's even where a folder of that name (a results folder) is at hand;
    # a folder that names no config is said to be one (it was "no file")
    named = CONFIG_DIR / f"{path_or_name}.toml"
    if not path.is_file() and not path.suffix and (named.exists() or not path.is_dir()):
        path = named
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise ValueError(f"config: no file {str(path_or_name)!r}; named configs: {known}")
    if path.is_dir():  # bad input, not the file system refusing ("Is a directory", exit 3)
        raise ValueError(f"config: {path} is a folder, not a config file")
    try:
        # TOML is UTF-8 whatever the locale; a decoding error alone would not say which file
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"config: {path} is not UTF-8 text (byte {err.start}: {err.reason})"
                         ) from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config: {path.name} is not valid TOML ({err})") from None
    return parse_config(raw, fast=fast, source=path.name)


def named_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def named_config(hashes: set[str], names) -> tuple[SweepConfig, str] | None:
    """The first of the named configs ``names`` (plain or ``--fast``) whose hash is one of
    ``hashes``, with where it comes from; None if none."""
    for name in names:
        # by file, never through load_config's name-or-path reading: a name with a dot
        # (nguyen2024-measurable-box1.5) would be read as a path, a results folder of that name
        path = CONFIG_DIR / f"{name}.toml"
        if not path.is_file():
            continue
        for fast in (False, True):
            try:
                config = load_config(path, fast=fast)
            except ValueError:
                continue  # a config without a [fast] table
            if config.hash in hashes:
                return config, f"simulations/configs/{name}.toml{' --fast' if fast else ''}"
    return None


def presented(config: SweepConfig) -> SweepConfig:
    """``config`` with its presentation (``plot``, ``description``) taken from the named config
    of the same name and hash, if there is one: a figure or table redrawn from a folder's
    recorded config follows the config file as it is now. Those keys do not change the results
    (:attr:`SweepConfig.hash`)."""
    named = named_config({config.hash}, [config.name])
    if named is None:
        return config
    return replace(config, plot=named[0].plot, description=named[0].description)
