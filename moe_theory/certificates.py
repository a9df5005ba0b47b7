"""Certificates: evidence that a plotted slope is the least-squares estimator's
(docs/theory.md#certificates).

A rate is the LSE's only when four things hold for its curve:

- ``reference``: the reference measure the losses are taken against (``G*`` or ``G_bar``) is a
  strict local minimiser of the population loss, resolved by the data: its Fisher matrix is
  well conditioned and its Hessian positive definite, the predicted parameter error at the
  smallest ``n`` is small next to the distance between its atoms, and (``G_bar``) no refit of
  the population LSE from another start is better or equally good elsewhere, and the cached
  G_bar's own design error is small. Computed once per (setting, fitted gate) by
  :func:`reference_certificate`, which also predicts each plotted loss from the local normal
  limit (the asymptotic overlay). Per loss, an over-specified fit's reference also fails when a
  measure the data cannot tell from G* (same regression function) is far from it in that loss
  (:func:`unidentified_losses`).
- ``converged``: at least 95% of the fits at every ``n`` stopped on a tolerance, not on the cap.
- ``optimiser``: no fit is beaten by a known candidate (the reference, another start, the check
  refits) by more than ``SSR_GAP_MAX`` noise variances, and ``moe-theory check`` found the
  per-n means and the slope unmoved, within their uncertainty, by 10x max_iter and 10x jitter.
- ``overfit``: the drop in the sum of squared residuals from the reference to the fit, in units
  of the noise variance, is about the number of free parameters ``p`` (the chi^2_p law of a
  regular model), not far above it (a continuum of near-minimisers absorbing the noise) nor far
  below it (fits that stopped short of the LSE).

Each certificate is ``pass``, ``fail`` or ``not run`` (the results lack the columns or files it
needs: tables written before these certificates existed still load). The thresholds live here,
each with the reason it holds. This module reads results and computes the reference certificate;
:mod:`moe_theory.rates` turns the statuses into verdicts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kernels.moe import n_free_gates
from kernels.moe.torch_pass import jacobian_chunk
from moe_theory import models
from moe_theory.config import SweepConfig
from moe_theory.console import past_bound
from moe_theory.data import sample_inputs
from moe_theory.estimators import Bounds
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.identified_losses import UNIDENTIFIED_SHARE, unidentified_losses
from moe_theory.initialization import near_truth
from moe_theory.kept_values import kept_by_n
from moe_theory.layout import CHECK_FILE, REFERENCE_DIR
from moe_theory.measure import MixingMeasure
from moe_theory.population import (
    DESIGN_SEED,
    GBAR_MAX_ITER,
    GBAR_STARTS,
    design_size_for,
    fit_each,
    jittered_starts,
    reference_measure,
    screen,
)
from moe_theory.settings import Setting, get_setting, list_settings
from moe_theory.store import atomic_write, read_manifest
from moe_theory.sublevel import curve_summary
from moe_theory.voronoi import atom_distances, voronoi_loss

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
CERTIFICATES = ("reference", "converged", "optimiser", "overfit")

# ---- thresholds (docs/theory.md#certificates) ------------------------------------------------

#: converged: share of the fits at each n that must stop on a tolerance. With the usual 20
#: replications this allows one straggler per n: a fit stopped by the cap is not the estimator,
#: and one of 20 moves the per-n mean by a twentieth of its own deviation, below the resolution
#: of the mean (its 95% CI half-width is ~0.45 sd for 20 replications).
CONVERGED_SHARE_MIN = 0.95
#: converged: largest drop of a fit's SSR, in noise variances nu, that a restart from its end
#: with a fresh damping may find for an ``ftol`` or ``xtol`` stop to count as a stationary point
#: (the results' ``restart_drop``): the optimiser certificate's unit, for the same reason
#: (SSR_GAP_MAX below).
RESTART_DROP_MAX = 1.0
#: optimiser: share of the fits at each n that must be no worse than their reference measure
#: (``certified``) and within SSR_GAP_MAX of the best candidate; the same one-straggler rule.
OPTIMISER_SHARE_MIN = 0.95
#: optimiser: largest gap, in noise variances nu, between a fit's sum of squared residuals (SSR)
#: and the best SSR any start or check refit found on the same data. Near a minimiser the SSR
#: gap of two parameter values is ``n |theta_1 - theta_2|_F^2`` (F the Fisher matrix), and the
#: statistical error has ``n |e|_F^2 ~ nu chi^2_p``: a gap of one nu is a displacement of
#: 1/sqrt(p) of the statistical error, invisible in the losses.
SSR_GAP_MAX = 1.0
#: optimiser check: the factors applied to max_iter and to the start's jitter.
CHECK_MAX_ITER_FACTOR = 10
CHECK_JITTER_FACTOR = 10
#: optimiser check: replications refitted per (setting, n), the first ones of the sweep. Two
#: variants of 2 replications refit 2 * 2 / reps of the sweep (50% at nguyen2024's CPU preset's
#: 8, 100% at the default preset's 4); a per-n mean or slope that moves under a changed
#: optimiser moves on any subsample.
CHECK_REPS = 2
#: overfit: accepted range of the mean over replications of ``Delta SSR / (nu p)`` at each n.
#: For a regular model ``Delta SSR / nu ~ chi^2_p`` (mean p, sd sqrt(2p)): with p >= 9 and 8
#: replications the mean ratio has sd <= 0.17, so the range is several sds wide either way; the
#: excess allowed above 1 absorbs the O(p / n) curvature of a non-linear model and the extra
#: freedom of over-specified atoms, whose likelihood-ratio statistic grows only like log log n.
OVERFIT_RATIO_MIN = 0.5
OVERFIT_RATIO_MAX = 2.0
#: overfit: the chi^2_p law needs n large next to p; smaller n are reported, not judged.
OVERFIT_MIN_N_PER_P = 10
#: reference: largest condition number of the Fisher matrix. Its inverse (the asymptotic
#: covariance) is computed in float64 with relative error about cond * 2.2e-16, 2e-6 at 1e10;
#: past ~1e13 no digit is left, and "identified" can no longer be told from "singular".
FISHER_COND_MAX = 1e10
#: ... and the condition number past which its digits are rounding: a report prints no number
#: there (two runs on one machine gave inf, 6.7e15 and 8.2e16 for the same singular matrices)
FISHER_COND_SINGULAR = 1e13


def fisher_cond_words(cond: float) -> str:
    """A failed Fisher condition number as a reason: its value where it has digits, else that the
    matrix is singular to rounding."""
    if cond <= FISHER_COND_SINGULAR:
        return f"Fisher condition number {cond:.1e} > {FISHER_COND_MAX:.0e}"
    return (f"Fisher condition number above {FISHER_COND_SINGULAR:.0e}: the Fisher matrix is "
            "singular to rounding")
#: reference: largest ratio of the predicted root-mean-square parameter error at the smallest n,
#: ``sqrt(tr(Sigma) / n_min)``, to the smallest distance between reference atoms. A fitted atom
#: changes Voronoi cell once its error exceeds half that distance, twice the rms error at this
#: ratio: for a Gaussian error that happens with probability at most P(|z| > 2) = 4.6% (all of
#: the variance in one direction is the worst case), so the local, cell-preserving asymptotics
#: the theory describes apply from n_min on.
ERROR_RATIO_MAX = 0.25
#: reference (G_bar): refits of the population LSE from other starts must agree with the one
#: started at the cached G_bar to within this fraction of the predicted mean D3 at the largest n
#: (the finest resolution of the curve): the reference's ambiguity then moves the plotted loss
#: by under 10% where it is smallest.
RESTART_RATIO_MAX = 0.1
#: reference (G_bar): largest predicted error of the cached G_bar (the LSE of a finite
#: noise-free design, whose misfit acts as noise) over the statistical error at the largest n.
#: The plotted loss measures the fit's error plus this offset: at 0.3 it inflates the rms error
#: at n_max by sqrt(1 + 0.3^2) - 1 = 4.4%, under the curve's resolution there.
DESIGN_ERROR_RATIO_MAX = 0.3
#: reference (G_bar): starts of the refits, their jitter (10x the sweep default, as the
#: optimiser check) and the design they are fitted on.
RESTARTS = 4
RESTART_JITTER = 0.1
#: reference (G_bar): the refits also search for deeper basins with starts drawn as G_bar's own
#: (population.GBAR_STARTS, seeds offset by this), screened, the SEARCH_REFINED best refitted
SEARCH_SEED_OFFSET = 100_000
SEARCH_REFINED = 4
#: Design of the certificate's Fisher matrix and refits: the Monte Carlo error of a mean over N
#: design points is relative ~ 1/sqrt(N) = 0.7%, and the whitened Fisher matrix's relative error
#: ~ sqrt(p / N), under 0.2 for p <= 600; 2e4 points keep it to seconds on a CPU.
CERT_DESIGN_SIZE = 20_000
CERT_DESIGN_SEED = 31_415
#: Asymptotic overlay: Monte Carlo draws of theta ~ N(theta_ref, Sigma / n) per n (common random
#: numbers across n). The mean loss has relative MC error ~ cv / sqrt(512) <= 4.5% for a
#: coefficient of variation <= 1.
OVERLAY_SAMPLES = 512
OVERLAY_SEED = 2718
#: Asymptotic overlay: the measured mean follows the prediction at n when their ratio lies in
#: [1 / OVERLAY_FACTOR, OVERLAY_FACTOR]. 1.5 is 0.41 in log: the 95% CI half-width of a log-mean
#: of 20 replications of a loss with log-sd 0.75 (relative sd sqrt((e^0.5625 - 1) / 20) = 0.19,
#: times t_19 = 2.09), the spread of the certified curves measured so far.
OVERLAY_FACTOR = 1.5
#: Bytes of autograd workspace the residual-Hessian term of the sandwich may take per chunk.
HESSIAN_CHUNK_BYTES = 256 * 2**20

#: What a "not run" reference or optimiser certificate tells the user to do.
HOW_TO_CERTIFY = "run moe-theory check DIR"
#: Bumped when a reference certificate gains a field its verdicts read (2: ``overfit_ratio``):
#: a sweep resumed on a folder recomputes older certificates instead of reading them.
#: 3: the refits of G_bar include a wide search for deeper basins (SEARCH_REFINED).
CERTIFICATE_VERSION = 3


@dataclass(frozen=True)
class Status:
    """One certificate of one curve: ``pass``, ``fail`` or ``not run``, and why."""

    status: str
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS


# ---- the reference certificate ----------------------------------------------------------------


@dataclass
class ReferenceCertificate:
    """Whether the reference measure of one (setting, fitted gate) is identified.

    Attributes
    ----------
    setting, fit_gate : the curve family it covers
    kind : ``G*`` or ``G_bar``
    model : gate, score, expert and atoms of the model whose Fisher matrix is computed: the
        fitted one at ``G_bar``, the truth's own k*-atom model at ``G*``
    p : its free parameters
    noise_var : nu
    design_size : N, design points of the Fisher matrix
    fisher_min_eig, fisher_cond : of ``F = J^T J / N`` at the reference
    hessian_min_eig : of the population loss's Hessian ``H = F - (1/N) sum_t m_t grad^2 f``
        (``m = f_G* - f_ref``; equals F at G*)
    covariance : ``inverse Fisher`` (G*: ``Sigma = nu F^-1``) or ``sandwich`` (G_bar:
        ``Sigma = H^-1 (nu F + M) H^-1``, ``M = J^T diag(m^2) J / N``): the covariance of
        ``sqrt(n) (theta_hat - theta_ref)``
    error_scale : ``sqrt(tr(Sigma) / n_min)``, the predicted rms parameter error at ``n_min``
    min_atom_distance : smallest ``|omega_i - omega_j|`` between reference atoms
    misspecification : mean of ``m^2`` on the design; ``misspecification_scale = nu p / n_max``
    design_error_ratio : predicted error of the cached G_bar from its finite design, over the
        statistical error at ``n_max`` (G_bar only)
    g_bar_design_size : the size of that design (G_bar only; None in certificates made before
        it was recorded)
    overfit_ratio : the predicted mean of ``Delta SSR / (nu p)`` for fits against this reference,
        ``tr(H^-1 (F + M / nu)) / p`` (G_bar with a positive definite Hessian; None otherwise,
        where the over-fit certificate takes the chi^2_p law's 1)
    restarts : :class:`Refits` of the population LSE as a dict, each rival start's outcome
        included (``moe-theory certify --rivals-from``); G_bar only, and only when the other
        criteria pass (they are the expensive part); ``restart_tolerance`` the bound on
        their spread
    unidentified : ``{loss: {"value", "reason"}}`` for the losses of an over-specified fit of
        G* that a measure indistinguishable from G* by the data puts away from it
        (:func:`unidentified_losses`); ``{}`` when none, None where not tested (a certificate
        made before the test, or a reference without over-specified atoms)
    identified_tested : the losses that test was run on (None in certificates made before it
        was recorded); a sweep that measures a loss outside it runs the test again
    n_min, n_max : the sweep's grid ends
    overlay : ``{loss: {"n": [...], "mean": [...], "median": [...], "sd": [...]}}``, the loss
        of ``theta ~ N(theta_ref, Sigma / n)`` against the reference (``sd``: one replication's
        standard deviation; certificates made before 2026-12-05 lack it); empty where no local
        normal limit exists, with the reason in ``overlay_note``
    status, reasons : ``pass`` or ``fail`` and what failed
    config_hash : of the sweep it was computed for (a rerun with another config recomputes it)
    wall_s : computing time
    """

    setting: str
    fit_gate: str
    kind: str
    model: dict
    p: int
    noise_var: float
    design_size: int
    n_min: int
    n_max: int
    fisher_min_eig: float
    fisher_cond: float
    hessian_min_eig: float
    covariance: str
    error_scale: float
    min_atom_distance: float
    misspecification: float
    misspecification_scale: float
    design_error_ratio: float | None = None
    g_bar_design_size: int | None = None
    overfit_ratio: float | None = None
    restarts: dict | None = None
    restart_tolerance: float | None = None
    unidentified: dict | None = None
    identified_tested: list[str] | None = None
    overlay: dict = field(default_factory=dict)
    overlay_note: str = ""
    status: str = PASS
    reasons: list[str] = field(default_factory=list)
    config_hash: str = ""
    wall_s: float = 0.0
    #: CERTIFICATE_VERSION when computed; older files (0) are recomputed by a resumed sweep
    version: int = 0

    @property
    def error_ratio(self) -> float:
        return self.error_scale / self.min_atom_distance

    def to_dict(self) -> dict:
        return {key: json_ready(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceCertificate:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (_float(v) if k in _FLOAT_FIELDS else v)
                      for k, v in data.items() if k in known})


_FLOAT_FIELDS = ("noise_var", "fisher_min_eig", "fisher_cond", "hessian_min_eig", "error_scale",
                 "min_atom_distance", "misspecification", "misspecification_scale")


def json_ready(value: Any) -> Any:
    """``value`` with every NaN replaced by None and every infinity by the string ``inf`` or
    ``-inf`` (JSON has neither), through nested dicts and lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def _float(value: Any) -> float:
    """Inverse of :func:`json_ready` for one number."""
    return math.nan if value is None else float(value)


def design(setting: Setting, size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The certificate's design ``X: (1, N, d)``, fixed by ``CERT_DESIGN_SEED``."""
    rng = np.random.default_rng([CERT_DESIGN_SEED, size])
    return torch.as_tensor(sample_inputs(size, setting.d, rng, setting.x_dist),
                           dtype=torch.float64, device=device)[None]


def fisher_blocks(problem: LeastSquaresProblem, theta: torch.Tensor, m: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``F = J^T J / N`` and ``M = J^T diag(m^2) J / N`` at ``theta: (1, p)``, with J the
    Jacobian of ``f`` in the estimator's free-parameter layout, formed a chunk of samples at a
    time. ``m: (1, N)`` the misspecification residuals."""
    gp, ep = problem.unpack(theta)
    expert = models.get_expert(problem.expert)
    N, p = problem.n, problem.p
    F = theta.new_zeros(p, p)
    M = theta.new_zeros(p, p)
    step = max(1, min(N, (64 * 2**20) // (8 * p)))
    for start in range(0, N, step):
        Xc = problem.X[:, start:start + step]
        _, J = jacobian_chunk(Xc, gp, ep, problem.gate, problem.score, expert)
        J = J[0]
        F += J.T @ J
        M += J.T @ (J * m[0, start:start + step, None] ** 2)
    return F / N, M / N


def residual_hessian(problem: LeastSquaresProblem, theta: torch.Tensor, m: torch.Tensor
                     ) -> torch.Tensor:
    """``S = (1/N) sum_t m_t grad^2 f(x_t)``, the part of the population loss's Hessian that the
    Gauss-Newton matrix leaves out (zero where the model reproduces the truth): the Jacobian of
    ``J(theta)^T m / N``, one reverse-mode pass per parameter over sample chunks that bound the
    autograd graph (plain autograd: ``torch.func`` would import torch's compiler stack, seconds
    on a CPU, for a matrix of a few hundred rows). Second derivatives are taken almost
    everywhere: a ReLU kink's point mass is left out (docs/theory.md#over-fit measures what that
    omits, and why central differences on this design would not restore it)."""
    expert = models.get_expert(problem.expert)
    N, p, k = problem.n, problem.p, problem.k
    per_sample = 8 * 8 * k * (problem.pg + problem.pe)
    step = max(1, min(N, HESSIAN_CHUNK_BYTES // per_sample))
    S = theta.new_zeros(p, p)
    for start in range(0, N, step):
        t = theta[0].detach().clone().requires_grad_(True)
        gp, ep = problem.unpack(t[None])
        _, J = jacobian_chunk(problem.X[:, start:start + step], gp, ep, problem.gate,
                              problem.score, expert)
        jtm = (J[0] * m[0, start:start + step, None]).sum(0)
        for i in range(p):
            if jtm[i].requires_grad:
                (row,) = torch.autograd.grad(jtm[i], t, retain_graph=i < p - 1, allow_unused=True,
                                             materialize_grads=True)
                S[i] += row
    S = S / N
    return 0.5 * (S + S.T)


def min_atom_distance(measure: MixingMeasure) -> float:
    """Smallest distance between two atoms of ``measure`` in ``omega``, as Voronoi cells measure
    it (a poly2 expert and its negative are one: the plain distance overstated how far an atom
    may stray before it changes cell, 2.3 against 0.076 in a constructed case); infinite for a
    single atom."""
    omega = measure.omega[:1]
    if omega.shape[1] < 2:
        return math.inf
    dist = atom_distances(measure, omega, omega)[0][0].clone()
    dist.fill_diagonal_(math.inf)
    return float(dist.min())


def overlay_losses(problem: LeastSquaresProblem, theta: torch.Tensor, reference: MixingMeasure,
                   cov: torch.Tensor, n_grid: Sequence[int], losses: Sequence[str],
                   samples: int = OVERLAY_SAMPLES) -> dict:
    """The plotted losses of ``theta ~ N(theta_ref, cov / n)`` against ``reference``, by Monte
    Carlo (docs/theory.md#asymptotic-overlay): mean, median and standard deviation per n, the
    same normal draws at every n. This is the local asymptotic prediction mapped exactly onto
    each plotted loss; the standard deviation predicts a sweep's CI before it runs
    (docs/theory.md#planning)."""
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0).sqrt()
    gen = torch.Generator(device="cpu").manual_seed(OVERLAY_SEED)
    z = torch.randn(samples, theta.shape[-1], generator=gen, dtype=torch.float64).to(theta.device)
    out: dict[str, dict] = {loss: {"n": [], "mean": [], "median": [], "sd": []}
                            for loss in losses}
    for n in n_grid:
        draws = problem.measure(theta + z @ root.T / math.sqrt(n)).to(device="cpu")
        for loss in losses:
            values = voronoi_loss(draws, reference.to(device="cpu"), loss).numpy()
            values = values[np.isfinite(values)]
            out[loss]["n"].append(int(n))
            out[loss]["mean"].append(float(values.mean()) if values.size else math.nan)
            out[loss]["median"].append(float(np.median(values)) if values.size else math.nan)
            # one replication's spread: what a sweep's CI will be, before it is run
            out[loss]["sd"].append(float(values.std(ddof=1)) if values.size > 1 else math.nan)
    return out


@dataclass(frozen=True)
class Refits:
    """Refits of the population LSE on the certificate design (see :func:`refit_population`).

    Attributes
    ----------
    spread : largest D3 to the anchor among refits whose population loss ties with it
    better, tied, worse : refits whose loss is below, level with or above the anchor's
    drift : D3 of the anchor (the refit started at the cached G_bar) to the cached G_bar
    rivals : per rival start, by where it was found: its refit's ``outcome`` (``better``,
        ``tied`` or ``worse``), its ``d3`` to the anchor and ``gap``, its mean squared misfit
        minus the anchor's
    """

    spread: float
    better: int
    tied: int
    worse: int
    drift: float
    rivals: dict = field(default_factory=dict)


def refit_population(setting: Setting, fit_gate: str, g_bar: MixingMeasure, X: torch.Tensor,
                     Y: torch.Tensor, tie: float, *, backend: str = "auto",
                     restarts: int = RESTARTS, rivals: Mapping[str, MixingMeasure] | None = None
                     ) -> Refits:
    """Refit the population LSE on the design ``X`` (noise-free ``Y = f_G*``) from the cached
    ``G_bar`` (the anchor), from ``restarts`` jittered near-truth starts and from the
    SEARCH_REFINED best of a screen of wide starts (drawn as G_bar's own, other seeds) and from
    ``rivals`` (population minimisers by where they were found, e.g. another folder's G_bar of
    the same setting on another design), in one batch, and compare the refits' population
    losses and positions with the anchor's.

    A refit *ties* with the anchor when their mean squared misfits differ by at most ``tie``
    plus twice the design's standard error of that difference (a paired comparison on the same
    points; the design's Monte Carlo error must not decide); it is *better* or *worse* beyond.
    A worse refit is a local minimum the optimiser found, no evidence against G_bar; a better
    one means G_bar is not the population LSE; a tied one far from the anchor means the data
    cannot tell two minimisers apart.
    """
    truth = setting.truth()
    starts = [g_bar] + [near_truth(truth, setting.k_fit, seed=DESIGN_SEED + 1 + i,
                                   jitter=RESTART_JITTER, split=setting.split)
                        for i in range(restarts)]
    # a search for deeper basins, as wide as G_bar's own but from other seeds: the refits near
    # the truth test ties, these whether G_bar is the population minimiser at all
    starts += screen(X, Y, setting, fit_gate,
                     jittered_starts(setting, GBAR_STARTS, DESIGN_SEED + SEARCH_SEED_OFFSET),
                     SEARCH_REFINED, backend)
    rivals = dict(rivals or {})
    starts += [rival.to(device=X.device) for rival in rivals.values()]
    fit = fit_each(X, Y, setting, fit_gate, starts, GBAR_MAX_ITER, backend)
    R = fit.measure.R
    with torch.no_grad():
        sq = ((Y - fit.measure(X.repeat(R, 1, 1))) ** 2).cpu()
    diff = sq[1:] - sq[:1]
    gap = diff.mean(-1)
    # no other start: no spread to take (torch warns on the std of no rows)
    spread = diff.std(-1) if R > 1 else torch.zeros(0, dtype=diff.dtype)
    margin = tie + 2 * spread / math.sqrt(X.shape[1])
    fitted = fit.measure.to(device="cpu")
    anchor = fitted.select(0)
    d3 = (repinned_d3(fitted.select(slice(1, R)), anchor) if R > 1
          else torch.zeros(0, dtype=gap.dtype))  # no other start: nothing to compare
    tied = gap.abs() <= margin
    outcome = ["tied" if t else "better" if g < 0 else "worse"
               for t, g in zip(tied.tolist(), gap.tolist(), strict=True)]
    first = R - 1 - len(rivals)  # the rivals' refits come last
    return Refits(
        spread=float(d3[tied].max()) if bool(tied.any()) else 0.0,
        better=int((gap < -margin).sum()), tied=int(tied.sum()), worse=int((gap > margin).sum()),
        drift=float(repinned_d3(anchor, g_bar)[0]),
        rivals={where: {"outcome": outcome[first + i], "d3": float(d3[first + i]),
                        "gap": float(gap[first + i])} for i, where in enumerate(rivals)},
    )


def repinned_d3(fitted: MixingMeasure, reference: MixingMeasure) -> torch.Tensor:
    """D3 of ``fitted`` (R measures) against ``reference``, the least over the writings of each
    fit with another of its atoms pinned (softmax: the same regression function; a sigmoid
    measure has one writing). A refit that ends on G_bar with its atoms relabelled is the same
    function, not a second minimiser: in the pinned gauge it read D3 = 5.1 away, and tied, it
    failed the certificate."""
    if fitted.gate != "softmax":
        return voronoi_loss(fitted, reference, "D3")
    k = fitted.k
    writings = []
    for j in range(k):
        order = [i for i in range(k) if i != j] + [j]  # atom j last: the constructor pins it
        writings.append(voronoi_loss(fitted.replace(fitted.gate_params[:, order],
                                                    fitted.expert_params[:, order]),
                                     reference, "D3"))
    return torch.stack(writings).amin(0)


def local_model(setting: Setting, ref: MixingMeasure, X: torch.Tensor, kind: str) -> tuple:
    """The model about a reference on the design ``X``: ``(problem, theta, m, F, M, H)``, the
    least-squares problem of the noise-free truth, the reference's packed parameters, the misfit
    ``m = f_G* - f_ref``, the Fisher blocks and the population loss's Hessian (F at G*). Its
    model is the fitted k-atom one at G_bar; at G* the truth's own k*-atom model (an
    over-specified fit is singular at G*, where its rates are not n^-1/2)."""
    f_star = setting.truth().to(device=X.device)(X)
    model = ref.to(device=X.device)
    problem = LeastSquaresProblem(X, f_star, model.gate, model.score, model.expert, model.k,
                                  "torch")
    theta = problem.pack(model)
    with torch.no_grad():
        m = f_star - model(X)
    F, M = fisher_blocks(problem, theta, m)
    H = F - residual_hessian(problem, theta, m) if kind == "G_bar" else F
    return problem, theta, m, F, M, H


def limit_covariance(kind: str, nu: float, F: torch.Tensor, M: torch.Tensor,
                     H_inv: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The covariance of ``sqrt(n) (theta_hat - theta_ref)`` and its name: ``nu F^-1`` at G*,
    the sandwich ``H^-1 (nu F + M) H^-1`` at a misspecified G_bar."""
    if kind == "G*":
        cov, covariance = nu * H_inv, "inverse Fisher"
    else:
        cov, covariance = H_inv @ (nu * F + M) @ H_inv, "sandwich"
    return 0.5 * (cov + cov.T), covariance


def normal_limit(setting: Setting, fit_gate: str, ref: MixingMeasure, n_grid: Sequence[int],
                 losses: Sequence[str], *, design_size: int = CERT_DESIGN_SIZE,
                 device: str = "cpu") -> dict:
    """The reference certificate's overlay alone (:func:`overlay_losses`: each loss's mean,
    median and sd per n in the local normal limit about ``ref``), without its criteria and
    G_bar's refits: for a reference already certified, e.g. the predicted CIs of committed
    sweeps (docs/theory.md#planning)."""
    kind = setting.reference_kind(fit_gate)
    X = design(setting, design_size, device)
    problem, theta, _, F, M, H = local_model(setting, ref, X, kind)
    cov, _ = limit_covariance(kind, float(setting.noise_var), F, M,
                              torch.linalg.pinv(H, hermitian=True))
    return overlay_losses(problem, theta, ref.to(device="cpu"), cov, n_grid, losses)


def over_specified_g_star(setting: Setting, fit_gate: str) -> bool:
    """Are ``fit_gate`` fits of ``setting`` over-specified fits measured against G* (the
    references whose losses :func:`unidentified_losses` tests)?"""
    return setting.reference_kind(fit_gate) == "G*" and setting.k_fit > setting.k_true


def reference_certificate(
    setting: Setting, fit_gate: str, n_grid: Sequence[int], losses: Sequence[str], *,
    design_size: int = CERT_DESIGN_SIZE, device: str = "cpu", backend: str = "auto",
    restarts: int = RESTARTS, g_bar: tuple[MixingMeasure, int] | None = None,
    box: Bounds | None = None, rivals: Mapping[str, MixingMeasure] | None = None,
) -> ReferenceCertificate:
    """Is the reference of ``fit_gate`` fits of ``setting`` identified at the grid ``n_grid``?

    Parameters
    ----------
    setting, fit_gate : the truth recipe and the fitted gate
    n_grid : the sweep's sample sizes (their ends set the scales the criteria compare with)
    losses : the losses the sweep measures against this reference (for the overlay)
    design_size : design points of the Fisher matrix and of the refits
    device, backend : where the computation runs (the cached G_bar is read or computed there)
    restarts : jittered refits of G_bar (ignored for G*)
    g_bar : a G_bar already fitted and the size of the design it was fitted on (a folder's
        recorded reference, :func:`certify_references`); default the cached G_bar of
        ``device``'s design size (fitted if not cached)
    box : the fits' box (G* only: the measures :func:`unidentified_losses` weighs must lie in
        it); None for no box
    rivals : other population minimisers of this (setting, gate) by where they were found (G_bar
        only): the refits start from them too, so that a basin found once, on another design,
        counts against every G_bar that has not beaten it
    """
    kind = setting.reference_kind(fit_gate)
    if kind == "G_bar" and g_bar is not None:
        ref, cache_size = g_bar[0].to(device=device), int(g_bar[1])
    else:
        kind, ref = reference_measure(setting, fit_gate, device=device, backend=backend)
        cache_size = design_size_for(device)
    # sorted: the overlay follows the grid's order, and its last entry is read as n_max's
    n_grid = sorted({int(n) for n in n_grid})
    n_min, n_max = n_grid[0], n_grid[-1]
    nu = float(setting.noise_var)
    X = design(setting, design_size, device)
    problem, theta, m, F, M, H = local_model(setting, ref, X, kind)
    f_star = problem.Y
    model = ref.to(device=X.device)
    eig_F = torch.linalg.eigvalsh(F)
    eig_H = torch.linalg.eigvalsh(H)
    fisher_min, fisher_max = float(eig_F[0]), float(eig_F[-1])
    cond = fisher_max / fisher_min if fisher_min > 0 else math.inf
    reasons: list[str] = []
    if not cond <= FISHER_COND_MAX:
        reasons.append(fisher_cond_words(cond))
    if not float(eig_H[0]) > 0:
        reasons.append(f"population-loss Hessian not positive definite (smallest eigenvalue "
                       f"{float(eig_H[0]):.1e}): the reference is not a strict local minimiser")
    H_inv = torch.linalg.pinv(H, hermitian=True)
    cov, covariance = limit_covariance(kind, nu, F, M, H_inv)
    trace = float(torch.trace(cov))
    error_scale = math.sqrt(trace / n_min) if trace >= 0 else math.inf
    distance = min_atom_distance(model.to(device="cpu"))
    if not error_scale <= ERROR_RATIO_MAX * distance:
        reasons.append(f"predicted parameter error at n={n_min} ({error_scale:.2g}) exceeds "
                       f"{ERROR_RATIO_MAX} x the smallest distance between reference atoms "
                       f"({distance:.2g})")
    misspecification = float((m * m).mean())
    misspecification_scale = nu * problem.p / n_max
    overfit_ratio = None
    if kind == "G_bar" and float(eig_H[0]) > 0:
        # about a misspecified G_bar, n (L_n(G_bar) - L_n(theta_hat)) / nu has mean
        # tr(H^-1 (F + M / nu)) (docs/theory.md#over-fit): p when M = 0 and H = F, more as the
        # misfit m grows
        overfit_ratio = float(torch.trace(H_inv @ (F + M / nu))) / problem.p
    design_error_ratio = None
    if kind == "G_bar" and not reasons:
        # G_bar is the LSE of a finite noise-free design: the misfit m plays the noise, and the
        # cached G_bar is off the population one by ~ N(0, H^-1 M H^-1 / N_cache)
        design_var = float(torch.trace(H_inv @ M @ H_inv)) / cache_size
        design_error_ratio = math.sqrt(max(design_var, 0.0) / (trace / n_max))
        if not design_error_ratio <= DESIGN_ERROR_RATIO_MAX:
            reasons.append(f"the cached G_bar, fitted on {cache_size} design points, is off the "
                           f"population LSE by ~{design_error_ratio:.2f} x the statistical error "
                           f"at n={n_max} (> {DESIGN_ERROR_RATIO_MAX}): use a larger design")
    overlay: dict = {}
    note = ""
    if setting.k_fit != model.k:
        note = (f"no local normal limit: the {setting.k_fit}-atom fit over-specifies the "
                f"{model.k}-atom G*, where it is singular")
    elif reasons:
        note = "no local normal limit: the reference is not identified"
    else:
        overlay = overlay_losses(problem, theta, ref.to(device="cpu"), cov, n_grid, losses)
    refits = None
    restart_tolerance = None
    # the refits cost hundreds of population-fit iterations: only worth it while the reference
    # may still pass
    if kind == "G_bar" and not reasons:
        refits = refit_population(setting, fit_gate, ref, X, f_star, SSR_GAP_MAX * nu / n_max,
                                  backend=backend, restarts=restarts, rivals=rivals)
        d3 = overlay.get("D3") or overlay_losses(problem, theta, ref.to(device="cpu"), cov,
                                                 [n_max], ["D3"])["D3"]
        restart_tolerance = RESTART_RATIO_MAX * d3["mean"][-1]
        where = "near the truth and screened wide ones" + (
            f", and {len(rivals)} found elsewhere" if rivals else "")

        def rivals_that(outcome: str) -> str:
            named = [f"{place}'s G_bar at D3 = {r['d3']:.2g}"
                     for place, r in refits.rivals.items() if r["outcome"] == outcome]
            return f" (among them {', '.join(named)})" if named else ""

        if refits.better:
            reasons.append(f"{refits.better} of {refits.better + refits.tied + refits.worse} "
                           f"refits from other starts ({where}) reach a lower "
                           "population loss than G_bar" + rivals_that("better")
                           + ": G_bar is not the population LSE")
        if not refits.spread <= restart_tolerance:
            reasons.append(f"refits of G_bar with the same population loss end up D3 = "
                           f"{refits.spread:.2g} apart" + rivals_that("tied") + ", above "
                           f"{RESTART_RATIO_MAX} x the predicted D3 at n={n_max} "
                           f"({restart_tolerance:.2g})")
    degenerate = not (cond <= FISHER_COND_MAX and float(eig_H[0]) > 0) or (
        refits is not None and not refits.spread <= restart_tolerance)
    if degenerate and kind == "G_bar" and misspecification < misspecification_scale:
        reasons.append(f"the {setting.k_fit}-atom {fit_gate} fit reproduces f_G* to "
                       f"{misspecification:.1e} in mean square, below nu p / n_max = "
                       f"{misspecification_scale:.1e}: the data cannot single out G_bar")
    unidentified = tested = None
    if over_specified_g_star(setting, fit_gate):
        unidentified = unidentified_losses(ref, setting.k_fit, losses, X, n_max, nu, box)
        tested = list(losses)
    return ReferenceCertificate(
        setting=setting.name, fit_gate=fit_gate, kind=kind,
        model={"gate": model.gate, "score": model.score, "expert": model.expert, "k": model.k},
        p=problem.p, noise_var=nu, design_size=design_size, n_min=n_min, n_max=n_max,
        fisher_min_eig=fisher_min, fisher_cond=cond, hessian_min_eig=float(eig_H[0]),
        covariance=covariance, error_scale=error_scale, min_atom_distance=distance,
        misspecification=misspecification, misspecification_scale=misspecification_scale,
        design_error_ratio=design_error_ratio, overfit_ratio=overfit_ratio,
        g_bar_design_size=cache_size if kind == "G_bar" else None,
        restarts=None if refits is None else asdict(refits),
        restart_tolerance=restart_tolerance, unidentified=unidentified,
        identified_tested=tested, overlay=overlay,
        overlay_note=note,
        status=FAIL if reasons else PASS, reasons=reasons, version=CERTIFICATE_VERSION,
    )


def fixed_failure(cert: ReferenceCertificate) -> str | None:
    """The first failed criterion of ``cert`` that no range of n mends, or None: a singular or
    ill-conditioned Fisher matrix, a reference that is no strict local minimiser, or (G_bar)
    refits that reach a lower population loss. The truth, the model or the design must change."""
    if not cert.fisher_cond <= FISHER_COND_MAX:
        return fisher_cond_words(cert.fisher_cond)
    if not cert.hessian_min_eig > 0:
        return "the population loss's Hessian is not positive definite"
    if cert.restarts and cert.restarts.get("better"):
        return f"{cert.restarts['better']} refits reach a lower population loss than G_bar"
    return None


def allowed_n(cert: ReferenceCertificate) -> tuple[float, float]:
    """The sample sizes over which the n-dependent criteria of ``cert`` hold, as far as it
    measured them: ``(n_from, n_to)``. Every error they compare scales as n^-1/2 in the local
    limit: the predicted parameter error at the grid's smallest n must stay under
    ERROR_RATIO_MAX of the atoms' distance (from below), and, for G_bar, the cached G_bar's
    design error (fixed) under DESIGN_ERROR_RATIO_MAX of the statistical error at the largest n
    and the refits' spread (fixed) under RESTART_RATIO_MAX of the predicted D3 there (from
    above; ``inf`` where the certificate did not get that far: it skips both once another
    criterion fails)."""
    n_from = cert.n_min * (cert.error_ratio / ERROR_RATIO_MAX) ** 2
    n_to = math.inf
    if cert.design_error_ratio:
        n_to = cert.n_max * (DESIGN_ERROR_RATIO_MAX / cert.design_error_ratio) ** 2
    spread = (cert.restarts or {}).get("spread")
    if spread and cert.restart_tolerance is not None:
        n_to = min(n_to, cert.n_max * (cert.restart_tolerance / spread) ** 2)
    return n_from, n_to


def reference_path(folder: str | Path, setting: str, fit_gate: str) -> Path:
    return Path(folder) / REFERENCE_DIR / f"reference-{setting}-{fit_gate}.json"


def write_reference_certificate(folder: str | Path, cert: ReferenceCertificate) -> Path:
    """Save ``cert`` beside the sweep's shards (written whole or not at all)."""
    path = reference_path(folder, cert.setting, cert.fit_gate)
    # a temporary file of this writer's own: two sweeps sharing a folder certify the same
    # reference at once, and a shared temporary name let one rename the other's away
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(cert.to_dict(), indent=1)))
    return path


def _identified_tested_on(cert: ReferenceCertificate, losses: Sequence[str]) -> bool:
    """Whether ``cert``'s identified-losses test was run, on exactly ``losses``."""
    return cert.unidentified is not None and set(cert.identified_tested or ()) == set(losses)


def certify_references(
    config: SweepConfig, out: str | Path, *, losses: Callable[[Setting, str], Sequence[str]],
    device: str = "cpu", backend: str = "auto", log: Callable[[str], None] | None = None,
    force: bool = False, box: Callable[[Setting, str, MixingMeasure], Bounds] | None = None,
) -> list[ReferenceCertificate]:
    """The reference certificate of every (setting, fitted gate) of ``config``, saved in
    ``out/certificates/``; one already there for this config is read, not recomputed (unless
    ``force``).

    A G_bar the folder's manifest records (the one its shards were measured against) is
    certified as recorded, with the design size recorded beside it (the design ``device`` fits
    where the manifest predates that record: a sweep checks its G_bar against the recorded one
    first, and ``moe-theory certify`` asks for the size), so that a folder fitted on a GPU is
    certified on a CPU against its own G_bar. Other references are those
    of :func:`~moe_theory.population.reference_measure` on ``device``, G_bar on the config's
    ``g_bar_design_size`` design points where it sets one.
    ``losses(setting, reference_kind, gate=gate)`` lists the losses the sweep measures (the
    overlay's);
    ``box(setting, gate, reference)`` is the fits' box (None: no box). The manifest's
    ``rival_references`` (``"<setting>/<gate>"`` -> {where found: measure JSON}, recorded by
    ``moe-theory certify --rivals-from``) are further starts of G_bar's refits.
    """
    done = load_reference_certificates(out)
    manifest = read_manifest(Path(out)) or {}
    recorded = manifest.get("references", {})
    sizes = manifest.get("reference_design_sizes", {})
    rivals = manifest.get("rival_references", {})
    certs = []

    def g_star_and_box(setting: Setting, gate: str) -> tuple[MixingMeasure, Bounds | None]:
        _, ref = reference_measure(setting, gate, device=device, backend=backend)
        return ref, None if box is None else box(setting, gate, ref)

    for setting in config.setting_objects():
        for gate in config.gates_for(setting):
            cert = done.get((setting.name, gate))
            if (force or cert is None or cert.config_hash != config.hash
                    or cert.version != CERTIFICATE_VERSION):
                key = f"{setting.name}/{gate}"
                g_bar = None
                if setting.reference_kind(gate) == "G_bar":
                    size = design_size_for(device, config.g_bar_design_size)
                    if key in recorded:
                        g_bar = (MixingMeasure.from_json(recorded[key]), sizes.get(key) or size)
                    else:
                        g_bar = (reference_measure(setting, gate, device=device, backend=backend,
                                                   design_size=size)[1], size)
                fit_box = (g_star_and_box(setting, gate)[1]
                           if over_specified_g_star(setting, gate) else None)
                start = time.perf_counter()
                cert = reference_certificate(
                    setting, gate, config.n,
                    losses(setting, setting.reference_kind(gate), gate=gate),
                    device=device, backend=backend, g_bar=g_bar, box=fit_box,
                    rivals={where: MixingMeasure.from_json(text)
                            for where, text in rivals.get(key, {}).items()})
                cert.config_hash, cert.wall_s = config.hash, time.perf_counter() - start
                write_reference_certificate(out, cert)
                if log is not None:
                    log(f"reference certificate {setting.name} / {gate}: {cert.status}"
                        + (f" ({'; '.join(cert.reasons)})" if cert.reasons else "")
                        + f" ({cert.wall_s:.1f} s)")
            elif over_specified_g_star(setting, gate) and not _identified_tested_on(
                    cert, measured := losses(setting, "G*", gate=gate)):
                # made before the identified-losses test, or on other losses than the sweep
                # measures today (D1_matched came later): run it on today's, the rest stands
                # as computed
                ref, fit_box = g_star_and_box(setting, gate)
                cert.unidentified = unidentified_losses(
                    ref, setting.k_fit, measured, design(setting, cert.design_size, device),
                    cert.n_max, cert.noise_var, fit_box)
                cert.identified_tested = list(measured)
                write_reference_certificate(out, cert)
                if log is not None:
                    log(f"reference certificate {setting.name} / {gate}: losses not identified: "
                        + (", ".join(f"{loss} (up to {e['value']:.2g})"
                                     for loss, e in cert.unidentified.items()) or "none"))
            certs.append(cert)
    return certs


def load_reference_certificates(folder: str | Path) -> dict[tuple[str, str], ReferenceCertificate]:
    """Every ``DIR/certificates/reference-*.json``, keyed by (setting, fit_gate)."""
    out = {}
    for path in sorted((Path(folder) / REFERENCE_DIR).glob("reference-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):  # `[]` or `null`: .items() was an AttributeError
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            cert = ReferenceCertificate.from_dict(data)
        except (ValueError, TypeError) as err:  # UnicodeDecodeError and JSONDecodeError too
            raise ValueError(f"DIR: {path} is not a reference certificate ({err})") from None
        out[(cert.setting, cert.fit_gate)] = cert
    return out


def load_check(folder: str | Path) -> dict | None:
    """``DIR/check.json`` as ``moe-theory check`` wrote it, or None."""
    path = Path(folder) / CHECK_FILE
    if not path.exists():
        return None
    try:
        check = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError: the file named
        raise ValueError(f"DIR: {path} is not valid JSON ({err})") from None
    if not isinstance(check, dict):  # its readers ask for keys: `[]` was an AttributeError
        raise ValueError(f"DIR: {path} is not an optimiser check (a JSON "
                         f"{type(check).__name__}, not an object)")
    return check


# ---- per-curve certificates from the results table --------------------------------------------


def fits_of(curve: pd.DataFrame) -> pd.DataFrame:
    """One row per fit ``(n, rep)`` of a curve (per-fit columns repeat over its loss rows)."""
    return curve.drop_duplicates(["n", "rep"])


def stationary_stops(fits: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
    """Per fit (one row each), whether it stopped on a tolerance (``stop_reason ==
    "tolerance"``, or the older ``converged`` column) at a stationary point, and whether it
    stopped on one but a restart from its end lowered its SSR by more than RESTART_DROP_MAX nu
    (``restart_drop``: a short step, not a stationary point; a table without the column, or
    NaN, is read by the stop alone). None without a stop column."""
    if "stop_reason" in fits.columns:
        reason = fits["stop_reason"]
        stopped = reason.astype(str) == "tolerance"
        if "converged" in fits.columns:
            # row by row: a table merged from shards written before the stop_reason column
            # has NaN there, and those fits' own converged flag says how they stopped
            stopped = stopped.where(reason.notna(), fits["converged"].astype(bool))
    elif "converged" in fits.columns:
        stopped = fits["converged"].astype(bool)
    else:
        return None
    if "restart_drop" in fits.columns:
        moved = stopped & (fits["restart_drop"].astype(float) > RESTART_DROP_MAX)
    else:
        moved = pd.Series(False, index=fits.index)
    return stopped & ~moved, moved


def converged_certificate(curve: pd.DataFrame) -> Status:
    """``converged``: at least CONVERGED_SHARE_MIN of the fits at every n stopped on a
    tolerance at a stationary point (:func:`stationary_stops`)."""
    fits = fits_of(curve)
    stops = stationary_stops(fits)
    if stops is None:
        return Status(NOT_RUN, "no stop_reason or converged column")
    ok, moved = stops
    share = ok.groupby(fits["n"]).mean()
    bad = share[share < CONVERGED_SHARE_MIN]
    unchecked = _unrestarted(fits, ok, moved)
    if bad.empty:
        return Status(PASS, unchecked)
    worst = bad.idxmin()
    detail = (f"{bad.size} n with < {CONVERGED_SHARE_MIN:.0%} of fits stopped on tolerance "
              f"(n={worst}: {past_bound(share[worst], CONVERGED_SHARE_MIN, '%', 0)})")
    restarted = int(moved.sum())
    if restarted:
        # name the restarts apart: "stopped on tolerance" alone would contradict the stop
        # column a reader checks
        detail += (f"; counted as not stopped: {restarted} fit(s) whose ftol or xtol stop a "
                   f"restart lowered by > {RESTART_DROP_MAX:g} nu, a short step, not a "
                   f"stationary point")
    return Status(FAIL, "; ".join(filter(None, [detail, unchecked])))


def _unrestarted(fits: pd.DataFrame, ok: pd.Series, moved: pd.Series) -> str:
    """What the converged certificate says of a table whose tolerance stops are read two ways:
    a sweep resumed across the restarts' introduction keeps its older shards, whose fits have
    no restart record (NaN ``restart_drop`` beside a stop on tolerance) and are counted by their
    stop alone; a reader must see how many. "" where every fit was checked alike (all with
    the record, or a table without the column)."""
    if "restart_drop" not in fits.columns:
        return ""
    missing = ok & fits["restart_drop"].astype(float).isna()
    if not missing.any():
        return ""
    # of every stop on tolerance, as the stop column counts them (restarted ones included)
    return (f"{int(missing.sum())} of {int((ok | moved).sum())} tolerance stop(s) have no "
            f"restart record "
            f"(fitted before restarts were recorded), read by their stop alone")


def free_parameters(fit_gate: str, score: str, expert: str, d: int, k: int) -> int:
    """Free parameters p of a k-atom model in the estimator's layout."""
    pg = models.gate_dim(score, d)
    pe = models.get_expert(expert).dim(d)
    return n_free_gates(fit_gate, k) * pg + k * pe


def overfit_ratios(curve: pd.DataFrame, noise_var: float) -> pd.Series:
    """Mean over replications, per n, of ``Delta SSR / (nu p)``: the drop in the sum of squared
    residuals from the reference measure to the fit, ``n (ref_loss - fit_loss)``, in noise
    variances per free parameter."""
    fits = fits_of(curve)
    row = fits.iloc[0]
    p = free_parameters(row["fit_gate"], row["score"], row["expert"], int(row["d"]),
                        int(row["k_fit"]))
    delta = fits["n"] * (fits["ref_loss"].astype(float) - fits["fit_loss"].astype(float))
    ratio = delta / (noise_var * p)
    # NaN where a fit has no SSR: the mean of the fits that have one would be a selected subset
    return ratio.groupby(fits["n"]).mean().where(~ratio.isna().groupby(fits["n"]).any())


def overfit_certificate(curve: pd.DataFrame, noise_var: float | None,
                        expected: float | None = None) -> Status:
    """``overfit``: the mean ``Delta SSR / (nu p)`` lies in [OVERFIT_RATIO_MIN,
    OVERFIT_RATIO_MAX] times ``expected`` at every n >= OVERFIT_MIN_N_PER_P p.

    ``expected`` is the reference certificate's predicted ratio (``overfit_ratio``: above 1 about
    a misspecified G_bar); None takes the chi^2_p law's 1."""
    if noise_var is None or not {"fit_loss", "ref_loss"} <= set(curve.columns):
        return Status(NOT_RUN, "noise variance or fit_loss/ref_loss unknown")
    row = curve.iloc[0]
    p = free_parameters(row["fit_gate"], row["score"], row["expert"], int(row["d"]),
                        int(row["k_fit"]))
    ratios = overfit_ratios(curve, noise_var)
    judged = ratios[ratios.index >= OVERFIT_MIN_N_PER_P * p]
    if judged.empty:
        return Status(NOT_RUN, f"every n < {OVERFIT_MIN_N_PER_P} p = {OVERFIT_MIN_N_PER_P * p}")
    if judged.isna().any():
        # a fit without an SSR (a diverged fit, or a reference whose loss was not computed) is
        # not left out of the mean: the fits that remain would be a selected subset
        fits = fits_of(curve)
        missing = fits["fit_loss"].isna() | fits["ref_loss"].isna()
        m = judged.index[judged.isna()][0]
        return Status(FAIL, f"{int(missing[fits['n'] == m].sum())} fit(s) at n={m} have no SSR "
                            "(fit_loss or ref_loss NaN)")
    scale = 1.0 if expected is None or not math.isfinite(expected) else float(expected)
    low, high = OVERFIT_RATIO_MIN * scale, OVERFIT_RATIO_MAX * scale
    bad = judged[~judged.between(low, high)]
    if bad.empty:
        return Status(PASS)
    n = bad.index[np.argmax(np.abs(np.log(np.abs(bad.to_numpy() / scale) + 1e-300)))]
    side = "above" if judged[n] > high else "below"
    # the band's ends, like the ratio, printed on their own side of the ratio
    band = (f"[{OVERFIT_RATIO_MIN}, {OVERFIT_RATIO_MAX}]" if scale == 1.0 else
            f"[{past_bound(low, judged[n])}, {past_bound(high, judged[n])}] (= "
            f"[{OVERFIT_RATIO_MIN}, {OVERFIT_RATIO_MAX}] x the "
            f"{scale:.2g} predicted about the misspecified reference)")
    ratio = past_bound(judged[n], high if side == "above" else low)
    return Status(FAIL, f"Delta SSR / (nu p) = {ratio} at n={n}, {side} {band}")


def optimiser_certificate(curve: pd.DataFrame, check: Mapping | None,
                          missing: str = HOW_TO_CERTIFY) -> Status:
    """``optimiser``: per n, at least OPTIMISER_SHARE_MIN of the fits are all at once no worse than their
    reference (``certified``), with several starts had their best SSR reached by a second
    start (``starts_near_best >= 2``: within nu, hence within SSR_GAP_MAX, of the best), and lie
    inside the parameter box (``bound_active`` false: the LSE is the box's interior minimiser,
    and at-bound fits are dropped from the slope); and
    the curve's entry of the optimiser check (``moe-theory check``) passed. ``check`` is None
    when the check was not run."""
    fits = fits_of(curve)
    tests = []
    # a test the table lacks the column for is not run, never passed (a table without
    # `certified`, or multi-start fits without `starts_near_best`, passed on the check alone)
    unrun = []
    if "certified" in fits.columns:
        tests.append(("fits worse than the reference measure", fits["certified"].astype(bool)))
    else:
        unrun.append("certified")
    if "n_starts" in fits.columns and (fits["n_starts"] > 1).any():
        if "starts_near_best" not in fits.columns:
            unrun.append("starts_near_best")
        else:
            # a curve of multi-start fits: a fit from one start has no second start to confirm
            # its SSR either, and counts against the share rather than switching the test off
            tests.append(("fits whose best SSR no second start reached",
                          fits["starts_near_best"] >= 2))
    if "bound_active" in fits.columns:
        # their losses are dropped from the slope: more than a straggler's share would leave a
        # selected subset of the replications to carry the rate
        tests.append(("fits on a face of the parameter box", ~fits["bound_active"].astype(bool)))
    if len(tests) > 1:
        # one straggler in all: three fits each failing another test would pass them one by one
        joint = np.logical_and.reduce([ok.to_numpy() for _, ok in tests])
        names = "; ".join(what for what, _ in tests)
        tests.append((f"fits failing one of the tests, each within its share ({names})",
                      pd.Series(joint, index=fits.index)))
    for what, ok in tests:
        share = ok.groupby(fits["n"]).mean()
        bad = share[share < OPTIMISER_SHARE_MIN]
        if not bad.empty:
            n = bad.idxmin()
            failing = past_bound(1 - share[n], 1 - OPTIMISER_SHARE_MIN, "%", 0)
            return Status(FAIL, f"{what} at {bad.size} n (n={n}: {failing} of fits)")
    if unrun:
        return Status(NOT_RUN, f"the results lack the column(s) {', '.join(unrun)}")
    if check is None:
        return Status(NOT_RUN, f"no optimiser check ({missing})")
    if check.get("status") != PASS:
        return Status(check.get("status", FAIL), "; ".join(check.get("reasons", [])))
    return Status(PASS)


def overlay_agreement(n: Sequence[float], values: Sequence[np.ndarray],
                      overlay: Mapping | None) -> float:
    """The smallest sample size from which the measured mean stays within a factor
    OVERLAY_FACTOR of the asymptotic overlay's mean at every larger n the slope uses (an n
    without usable values is passed over, as the slope drops it); NaN without an overlay or
    when the last such n disagrees already.

    Parameters
    ----------
    n : (P,) sample sizes of the curve
    values : P arrays of usable losses (:func:`~moe_theory.kept_values.kept_by_n`)
    overlay : the reference certificate's entry for this loss, ``{"n", "mean", "median"}``
    """
    if not overlay:
        return math.nan
    predicted = dict(zip(overlay["n"], overlay["mean"], strict=True))
    start = math.nan
    for m, v in sorted(zip(n, values, strict=True), key=lambda item: -item[0]):
        if not v.size:
            continue  # a dropped n: it neither agrees nor disagrees
        pred = predicted.get(int(m))
        if pred is None or not (pred and np.isfinite(pred) and pred > 0):
            break
        if abs(math.log(float(np.mean(v)) / pred)) > math.log(OVERLAY_FACTOR):
            break
        start = float(m)
    return start


def reference_status(cert: ReferenceCertificate | None, missing: str = HOW_TO_CERTIFY,
                     loss: str | None = None, smallest: float | None = None,
                     over_specified: bool = False) -> Status:
    """The reference certificate of one curve: the (setting, gate)'s, failed for a ``loss``
    the certificate found not identified at a value of at least UNIDENTIFIED_SHARE of
    ``smallest``, the curve's smallest per-n median (any value where it is unknown); for an
    ``over_specified`` fit against G* (the fits whose losses can be unidentified), not run
    where that test never ran on ``loss``."""
    if cert is None:
        return Status(NOT_RUN, f"no reference certificate ({missing})")
    reasons = list(cert.reasons)
    untested = (over_specified and cert.kind == "G*" and loss is not None and (
        cert.unidentified is None or loss not in (cert.identified_tested or ())))
    if untested and not reasons and cert.status == PASS:
        # a certificate older than the test, or one made for other losses: silence about this
        # loss is no evidence that the data identify it
        return Status(NOT_RUN, f"the identified-losses test was not run on {loss} ({missing})")
    entry = (cert.unidentified or {}).get(loss) if loss is not None else None
    if entry is not None:
        # an entry without its value (a bare reason) fails at any scale
        # the value as JSON holds it: an infinite one is the string "inf" after a round trip
        # (json_ready), which compared with a float raised TypeError; an unknown one (None)
        # reads NaN and fails at any scale
        value, why = ((_float(entry["value"]), entry["reason"]) if isinstance(entry, Mapping)
                      else (math.inf, str(entry)))
        if smallest is None or not value < UNIDENTIFIED_SHARE * smallest:
            reasons.append(why if smallest is None else
                           f"{why}, against the curve's smallest median {smallest:.2g}")
    return Status(FAIL if reasons else cert.status, "; ".join(reasons))


def _over_specified(curve: pd.DataFrame) -> bool:
    """Does the curve fit more atoms than the truth has (from its table's columns)?"""
    if not {"k_fit", "k_true"} <= set(curve.columns) or curve.empty:
        return False
    return int(curve["k_fit"].iloc[0]) > int(curve["k_true"].iloc[0])


def smallest_median(curve: pd.DataFrame) -> float | None:
    """The smallest per-n median of the loss values a curve's slope uses
    (:func:`~moe_theory.kept_values.kept_by_n`: a fit on the box, dropped from the slope, does not
    set the scale its unidentified values are judged against); None if it has none."""
    medians = [float(np.median(v)) for v in kept_by_n(curve)[1] if v.size]
    return min(medians) if medians else None


def noise_variance(curve: pd.DataFrame, cert: ReferenceCertificate | None) -> float | None:
    """nu of a curve: its ``noise_var`` column, else its reference certificate's, else the named
    setting's; None when none of them is known."""
    if "noise_var" in curve.columns:
        nu = float(curve["noise_var"].iloc[0])
        # a NaN or non-positive nu is as good as none: every test in its units would pass or
        # fail on the comparison's accident; the certificate's or the setting's may stand
        if math.isfinite(nu) and nu > 0:
            return nu
    if cert is not None:
        return cert.noise_var
    name = str(curve["setting"].iloc[0])
    return get_setting(name).noise_var if name in list_settings() else None


@dataclass(frozen=True)
class FolderCertificates:
    """What a results folder holds for certification: reference certificates per (setting,
    fit_gate) and the optimiser check's per-curve entries, keyed ``setting/fit_gate/loss``."""

    reference: Mapping[tuple[str, str], ReferenceCertificate] = field(default_factory=dict)
    check: Mapping[str, Any] | None = None
    #: why a missing certificate is missing, in its "not run" reason (a study that computes
    #: none says so instead of pointing to `moe-theory check`)
    missing: str = HOW_TO_CERTIFY

    @classmethod
    def load(cls, folder: str | Path) -> FolderCertificates:
        return cls(load_reference_certificates(folder), load_check(folder))

    def curve_check(self, setting: str, fit_gate: str, loss: str) -> Mapping | None:
        if self.check is None:
            return None
        return self.check.get("curves", {}).get(f"{setting}/{fit_gate}/{loss}")

    def current_check(self, curve: pd.DataFrame, name: tuple[str, str, str]) -> Mapping | None:
        """The optimiser check's entry of the curve ``name``; None where the check was not run
        or was computed for another config than the curve's (``config_hash``)."""
        check = self.curve_check(*name)
        hashes = set(curve["config_hash"].astype(str)) if "config_hash" in curve else None
        # a check that records no config cannot be shown to be of this curve's
        if check is not None and hashes and self.check.get("config_hash") not in hashes:
            return None
        return check

    def sublevel(self, curve: pd.DataFrame, name: tuple[str, str, str]) -> dict | None:
        """The curve's sublevel reading (:func:`moe_theory.sublevel.curve_summary`): its sweep's
        recorded starts joined with the current optimiser check's data sets."""
        return curve_summary(curve, (self.current_check(curve, name) or {}).get("sublevel"))

    def evaluate(self, curve: pd.DataFrame, name: tuple[str, str, str]) -> dict[str, Status]:
        """The four certificates of the curve ``name = (setting, fit_gate, loss_name)``.

        A reference certificate or check computed for another config than the curve's
        (``config_hash``; a folder rerun with ``--force``) counts as not run."""
        setting, fit_gate, loss = name
        hashes = set(curve["config_hash"].astype(str)) if "config_hash" in curve else None
        cert = self.reference.get((setting, fit_gate))
        if cert is not None and hashes and cert.config_hash not in hashes:
            cert = None  # of another config, or of none recorded (then not shown to be current)
        check = self.current_check(curve, name)
        return {
            "reference": reference_status(cert, self.missing, loss, smallest_median(curve),
                                          _over_specified(curve)),
            "converged": converged_certificate(curve),
            "optimiser": optimiser_certificate(curve, check, self.missing),
            "overfit": overfit_certificate(curve, noise_variance(curve, cert),
                                           None if cert is None else cert.overfit_ratio),
        }
