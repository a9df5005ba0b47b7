"""Starting points for the least-squares estimator (docs/theory.md#estimator)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moe_theory import models
from moe_theory.data import stable_seed
from moe_theory.measure import MixingMeasure, check_measure
from moe_theory.validation import (
    check_number,
    check_positive_float,
    check_positive_int,
    check_seed,
)

#: Default standard deviation of the Gaussian jitter added to every free parameter. Large enough
#: to separate split copies (identical copies get identical Gauss-Newton updates and would never
#: separate), small next to the N24 parameter scales so the fit starts in the truth's basin.
DEFAULT_JITTER = 0.01
#: Starts a sweep runs beside the near-reference one, per replication (docs/theory.md#multi-start).
DEFAULT_EXTRA_STARTS = 4
#: The extra starts' jitter in units of the near-reference start's: 10 x 0.01 = 0.1 by default,
#: the perturbation under which single-start medians were seen to move by up to e^3 (O(1) gate
#: scores, d = 32): large next to the parameters of weakly identified directions (N24's gate
#: parameters have sd 0.018), small next to the box (half-widths >= 10 by default), so every
#: start probes the reference's neighbourhood from a distinctly different point.
START_JITTER_FACTOR = 10.0


def convert_gate(measure: MixingMeasure, gate: str) -> MixingMeasure:
    """The same atoms under another gate, with matching average mixing weights.

    Softmax -> sigmoid gives atom i the weight ``sigma(beta0_i') = exp(beta0_i) / sum_j exp(beta0_j)``
    (its softmax share with the slopes switched off); sigmoid -> softmax takes
    ``exp(beta0_i') = sigma(beta0_i)``. Score slopes and experts are kept.
    """
    if models.check_gate(gate) == measure.gate:
        return measure
    gp = measure.gate_params.clone()
    if gate == "sigmoid":
        gp[..., 0] = torch.logit(torch.softmax(measure.beta0, dim=-1))
    else:
        gp[..., 0] = torch.log(torch.sigmoid(measure.beta0))
    return MixingMeasure(gate, measure.score, measure.expert, measure.d, gp, measure.expert_params)


def default_split(movable: int, n_extra: int) -> tuple[int, ...]:
    """The atoms copied by default: the first non-pinned ones, cycling."""
    return tuple(i % max(movable, 1) for i in range(n_extra))


def all_splits(k0: int, k: int) -> list[tuple[int, ...]]:
    """Every way to over-specify ``k0`` atoms to ``k``: the multisets of ``k - k0`` atoms to
    copy, each sorted, in lexicographic order (``[()]`` when ``k == k0``). An over-specified
    least-squares fit can put its extra atoms in any of the truth's Voronoi cells, and which
    one its minimum uses is decided by the data (docs/theory.md#multi-start)."""
    return list(itertools.combinations_with_replacement(range(k0), k - k0))


def resolved_split(measure: MixingMeasure, k: int, split: tuple[int, ...] | None) -> tuple[int, ...]:
    """The atoms :func:`split_atoms` copies: ``split``, or by default the first non-pinned ones
    (a softmax's last atom is pinned), cycling."""
    movable = measure.k - 1 if measure.gate == "softmax" else measure.k
    return tuple(split) if split is not None else default_split(movable, k - measure.k)


def split_order(measure: MixingMeasure, k: int, split: tuple[int, ...] | None = None) -> list[int]:
    """Which atom of ``measure`` each of the ``k`` atoms of :func:`split_atoms` copies, in its
    order: the movable atoms, then the copies ``split`` adds, then the softmax pinned atom."""
    movable = measure.k - 1 if measure.gate == "softmax" else measure.k
    split = resolved_split(measure, k, split)
    return list(range(movable)) + list(split) + list(range(movable, measure.k))


def split_atoms(measure: MixingMeasure, k: int, split: tuple[int, ...] | None = None) -> MixingMeasure:
    """Over-specify a measure to ``k`` atoms by copying designated atoms, splitting their weight.

    A sigmoid atom copied c times gives each copy ``logit(sigma(beta0)/c)``, a softmax atom
    ``beta0 - log c``, so that ``f_G`` is unchanged where the atom's gate is input-independent
    (exactly unchanged for softmax). ``split`` lists the atoms to copy (default: the first
    non-pinned ones, cycling). For softmax the pinned atom stays last; copying it (index
    ``k0 - 1``) adds movable copies with its zero gate parameters, and ``log c`` of the pinned
    atom to every ``beta0``, the softmax's free constant, so that the pinned atom keeps
    ``beta0 = 0`` and each of its c copies a c-th of its weight.
    """
    k0 = measure.k
    if k < k0:
        raise ValueError(f"k: the fitted number of atoms ({k}) must be >= k* = {k0}")
    n_extra = k - k0
    split = resolved_split(measure, k, split)
    if len(split) != n_extra or any(not 0 <= s < k0 for s in split):
        raise ValueError(f"split: needs {n_extra} atom indices in [0, {k0 - 1}], got {list(split)}")
    copies = np.bincount(np.asarray(split, dtype=int), minlength=k0) + 1
    order = split_order(measure, k, split)
    gp = measure.gate_params[:, order].clone()
    ep = measure.expert_params[:, order].clone()
    c = torch.as_tensor(copies[order], dtype=gp.dtype, device=gp.device)
    if measure.gate == "sigmoid":
        gp[..., 0] = torch.logit(torch.sigmoid(gp[..., 0]) / c)
    else:
        gp[..., 0] = gp[..., 0] - torch.log(c)
        if copies[k0 - 1] > 1:  # back to the gauge that pins the last atom at beta0 = 0
            gp[..., 0] = gp[..., 0] + float(np.log(copies[k0 - 1]))
    return measure.replace(gp, ep)


@dataclass(frozen=True)
class NearTruth:
    """Near-truth initialisation: the reference atoms, split to k atoms, plus Gaussian jitter."""

    reference: MixingMeasure
    k: int
    seed: int = 0
    jitter: float = DEFAULT_JITTER
    split: tuple[int, ...] | None = None

    def draw(self, R: int, gate: str, *, rep_ids: Sequence[int] | None = None, device=None,
             dtype=torch.float64) -> MixingMeasure:
        """R starting measures; replication ``rep_ids[r]`` (default ``r``) gets jitter seeded by
        ``(seed, rep_id)`` alone, so a replication starts at the same point in any shard."""
        base = split_atoms(convert_gate(self.reference, gate), self.k, self.split)
        base = base.to(device=device, dtype=dtype)
        base = base.repeat(R) if base.R == 1 else base
        rep_ids = range(R) if rep_ids is None else rep_ids
        noise_g, noise_e = [], []
        for rep in rep_ids:
            gen = torch.Generator(device="cpu").manual_seed(stable_seed(self.seed, rep))
            noise_g.append(torch.randn(base.gate_params.shape[1:], generator=gen, dtype=dtype))
            noise_e.append(torch.randn(base.expert_params.shape[1:], generator=gen, dtype=dtype))
        gp = base.gate_params + self.jitter * torch.stack(noise_g).to(base.gate_params.device)
        ep = base.expert_params + self.jitter * torch.stack(noise_e).to(base.expert_params.device)
        return base.replace(gp, ep)


@dataclass(frozen=True)
class RandomInit:
    """Random atoms ``N(0, scale^2)`` in every parameter, ``n_starts`` starts per replication."""

    seed: int = 0
    n_starts: int = 5
    scale: float = 1.0

    def draw(self, R: int, gate: str, *, k: int, score: str, expert: str, d: int,
             rep_ids: Sequence[int] | None = None, device=None,
             dtype=torch.float64) -> MixingMeasure:
        """``R * n_starts`` measures, start-major: replication r's starts are rows ``s * R + r``;
        start s of replication ``rep_ids[r]`` (default ``r``) seeded by ``(seed, "random", s,
        rep_id)`` alone, as :class:`NearTruth`'s jitter: one generator for the whole batch had
        given a replication another start in another batch, and two shards the same starts."""
        pg, pe = models.gate_dim(score, d), models.get_expert(expert).dim(d)
        rep_ids = range(R) if rep_ids is None else rep_ids
        gates, experts = [], []
        for s in range(self.n_starts):
            for rep in rep_ids:
                gen = torch.Generator(device="cpu").manual_seed(
                    stable_seed(self.seed, "random", s, rep))
                gates.append(torch.randn((k, pg), generator=gen, dtype=torch.float64))
                experts.append(torch.randn((k, pe), generator=gen, dtype=torch.float64))
        gp, ep = self.scale * torch.stack(gates), self.scale * torch.stack(experts)
        return MixingMeasure(gate, score, expert, d, gp.to(device=device, dtype=dtype),
                             ep.to(device=device, dtype=dtype))


def multi_start(
    reference: MixingMeasure,
    k: int,
    seed: int = 0,
    *,
    jitter: float = DEFAULT_JITTER,
    extra: int = DEFAULT_EXTRA_STARTS,
    start_jitter: float | None = None,
    split: tuple[int, ...] | None = None,
    every_split: bool = False,
) -> list[NearTruth]:
    """The starts of a multi-start fit (docs/theory.md#multi-start): the near-reference start
    ``near_truth(reference, k, seed, jitter)``, then ``extra`` starts around the same centre with
    jitter ``start_jitter`` (default ``START_JITTER_FACTOR * jitter``), start s seeded by
    ``(seed, "start", s)``; with each replication's own number (see :class:`NearTruth`), a start
    depends on its coordinates alone, never on the batch.

    ``every_split``: where the reference has fewer atoms than the fit, the extra starts cycle
    through :func:`all_splits` of its atoms, from the one after ``split`` (the near-reference
    start's), instead of all copying ``split``.

    Perturbed near-reference starts rather than uniform draws over the box: the theorems' LSE is
    the best point of the box, but a uniform start in hundreds of dimensions lands in a basin far
    from the reference and says nothing about it; the starts that test a fit are those that
    approach the reference's weakly identified directions from other sides. Uniform random
    starts stay available (:func:`random_init`).
    """
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise ValueError(f"starts: the number of extra starts must be an integer >= 0, got {extra!r}")
    # before the default start_jitter is derived from it, which would take the blame for it
    jitter = check_number("jitter", jitter)
    start_jitter = check_number("start_jitter", START_JITTER_FACTOR * jitter
                                if start_jitter is None else start_jitter, 0, strict=True)
    first = near_truth(reference, k, seed, jitter=jitter, split=split)
    splits = [split] * (extra + 1)
    if every_split and reference.k < k:
        cycle = all_splits(reference.k, k)
        at = cycle.index(tuple(sorted(resolved_split(reference, k, split))))
        splits = [cycle[(at + s) % len(cycle)] for s in range(extra + 1)]
    return [first] + [near_truth(reference, k, stable_seed(seed, "start", s), jitter=start_jitter,
                                 split=splits[s]) for s in range(1, extra + 1)]


def near_truth(
    truth: MixingMeasure,
    k: int,
    seed: int = 0,
    *,
    jitter: float = DEFAULT_JITTER,
    split: tuple[int, ...] | None = None,
) -> NearTruth:
    """Near-truth initialisation (docs/theory.md#estimator) for a fit with ``k`` atoms."""
    check_measure("truth", truth)
    k = check_positive_int("k", k)
    if k < truth.k:
        raise ValueError(f"k: the fitted number of atoms ({k}) must be >= k* = {truth.k}")
    jitter = check_number("jitter", jitter)
    # the jitter's generator is seeded by the seed's text: "1.0" would draw other numbers than 1
    seed = check_seed("seed", seed)
    return NearTruth(truth, k, seed, jitter, None if split is None else tuple(split))


def random_init(seed: int = 0, *, n_starts: int = 5, scale: float = 1.0) -> RandomInit:
    """Random initialisation with multi-start: the best fit per replication is kept."""
    # scale = NaN or inf makes every start, hence every estimate, NaN; 0 makes them identical
    return RandomInit(check_seed("seed", seed), check_positive_int("n_starts", n_starts),
                      check_positive_float("scale", scale))
