"""The compact parameter set of the least-squares estimator: a box per parameter group.

The theorems' estimator is the LSE over a compact parameter set (docs/theory.md#compact-parameter-set).
We take a box ``|theta_j| <= B_g`` whose half-width ``B_g`` is shared by every entry of a parameter
group ``g`` in ``beta0, beta1, A, a, b`` (the same for every atom, so the box does not depend on
how atoms are labelled), and enforce it in the solvers by projection onto the box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from moe_theory import models
from moe_theory.initialization import all_splits, convert_gate, split_atoms
from moe_theory.measure import MixingMeasure

#: Parameter groups of a packed atom, in their order (gate ``[beta0, beta1, triu(A)]``, then
#: expert ``[a, b]``).
PARAMETER_GROUPS = ("beta0", "beta1", "A", "a", "b")
#: Default half-width of the box in units of the reference's scale (docs/theory.md#compact-parameter-set).
#: The rates hold for any compact set holding the truth in its interior, with constants that grow
#: with the set; the box only has to (i) hold the reference and the starts well inside it: at 10
#: the reference's largest entry of a group sits at a tenth of the half-width and near-truth starts
#: (jitter <= 0.1) are far from the faces; (ii) not bind at the LSE once the estimator is
#: consistent, which needs estimation errors below 9 times the scale, and (iii) still stop the
#: runs along near-null directions that took unbounded fits hundreds of units from the start
#: (N24 recipe, sigmoid fit), which a box of a few times the scale does by construction.
DEFAULT_BOUND_SCALE = 10.0
#: Smallest scale of a group, in the inputs' units (x lies in [-1, 1]^d or is standard normal):
#: a group that is zero or tiny in the truth (N24's gate slopes ~0.02, beta1 = 0 in the sparse
#: regime) otherwise gets a box narrower than the estimation error at n = 10^3 and binds in every
#: fit; a unit-size entry moves a score or an expert by O(1) over the inputs' range.
BOUND_FLOOR = 1.0


@dataclass(frozen=True)
class Bounds:
    """Half-widths of a symmetric box per parameter group: ``-B_g <= theta_j <= B_g``.

    ``inf`` leaves a group unbounded; ``Bounds()`` is the whole space. Groups a model lacks (``A``
    for linear scores, ``beta1`` for monomial scores, ``a`` for constant experts) are ignored.
    """

    beta0: float = math.inf
    beta1: float = math.inf
    A: float = math.inf
    a: float = math.inf
    b: float = math.inf

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"bounds.{f.name}: the half-width must be a positive number "
                                 f"(inf for none), got {value!r}")
            object.__setattr__(self, f.name, float(value))

    @property
    def unbounded(self) -> bool:
        return all(math.isinf(getattr(self, g)) for g in PARAMETER_GROUPS)

    def packed(self, score: str, expert: str, d: int, k_free: int, k: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``, each ``(p,)`` float64, in the free-parameter layout of
        :class:`~moe_theory.estimators.problem.LeastSquaresProblem`."""
        gate = [self.beta0]
        if models.score_has_linear(score):
            gate += [self.beta1] * d
        if models.score_has_quadratic(score):
            gate += [self.A] * models.n_triu(d)
        ex = ([self.a] * d if models.get_expert(expert).has_slope else []) + [self.b]
        hi = torch.tensor(gate * k_free + ex * k, dtype=torch.float64)
        return -hi, hi


def group_scales(scale: float | Mapping[str, float]) -> dict[str, float]:
    """The box's multiple per parameter group: ``scale`` is one multiple for every group, or a
    table naming some of :data:`PARAMETER_GROUPS` (the others take
    :data:`DEFAULT_BOUND_SCALE`). ``inf`` leaves a group unbounded.

    Why per group: an over-specified softmax fit makes an extra atom light by moving its
    ``beta0`` and makes a *spike* (a light atom fitting a few points) with steep gate slopes and a
    large expert; one multiple cannot leave the first free while holding the second
    (docs/theory.md#compact-parameter-set)."""
    def checked(name: str, value, table: str = "") -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: must be a positive number (inf for no bounds){table}, "
                             f"got {value!r}")
        return float(value)

    if isinstance(scale, Mapping):
        unknown = sorted(set(scale) - set(PARAMETER_GROUPS))
        if unknown:
            raise ValueError(f"bound_scale.{unknown[0]}: not a parameter group; allowed: "
                             f"{', '.join(PARAMETER_GROUPS)}")
        if not scale:
            raise ValueError("bound_scale: a table must name at least one parameter group")
        return {g: checked(f"bound_scale.{g}", scale.get(g, DEFAULT_BOUND_SCALE))
                for g in PARAMETER_GROUPS}
    return dict.fromkeys(PARAMETER_GROUPS, checked(
        "bound_scale", scale, f" or a table of one per group ({', '.join(PARAMETER_GROUPS)})"))


def no_box(scale: float | Mapping[str, float]) -> bool:
    """Whether ``scale`` (:func:`group_scales`) leaves every group unbounded."""
    return all(math.isinf(v) for v in group_scales(scale).values())


def box_bounds(truth: MixingMeasure, k: int,
               scale: float | Mapping[str, float] = DEFAULT_BOUND_SCALE, *,
               gate: str | None = None, split: tuple[int, ...] | None = None,
               floor: float = BOUND_FLOOR, every_split: bool = False) -> Bounds:
    """The default box around a reference measure (docs/theory.md#compact-parameter-set).

    Group ``g`` gets the half-width ``B_g = scale_g * max(max |entry of g|, floor)``, the maximum
    over all atoms of ``truth`` (its first replication) after it is written as the fitted model
    writes it: gate converted to ``gate`` (default the truth's) and atoms split to ``k``
    (:func:`~moe_theory.initialization.split_atoms`, which makes the split copies' ``beta0``
    larger), so that the near-truth start's centre lies inside the box. Softmax gate parameters
    are taken in the pinned gauge, the one the fit uses. ``every_split``: the largest half-width
    over every split of the truth's atoms (:func:`~moe_theory.initialization.all_splits`), the
    box of starts that cycle through them: one box, whichever cell the extra atoms start in.
    ``scale``: one multiple, or one per group (:func:`group_scales`); ``inf`` for every group
    gives no box.
    """
    scales = group_scales(scale)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0 or \
            math.isinf(floor):
        raise ValueError(f"floor: must be a positive finite number, got {floor!r}")
    if no_box(scales):
        return Bounds()
    centre = convert_gate(truth.select(0), gate or truth.gate)
    splits = all_splits(truth.k, k) if every_split and truth.k < k else [split]
    widths = {}
    for one in splits:
        base = split_atoms(centre, k, one)
        parts = {"beta0": base.beta0, "beta1": base.beta1, "A": base.A, "a": base.a, "b": base.b}
        for name, values in parts.items():
            biggest = 0.0 if values is None else float(values.abs().max())
            widths[name] = max(widths.get(name, 0.0), scales[name] * max(biggest, float(floor)))
    return Bounds(**widths)


def resolve_bounds(bounds: Bounds | tuple[torch.Tensor, torch.Tensor] | None, *, score: str,
                   expert: str, d: int, k_free: int, k: int, R: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(lo, hi)`` of shape ``(R, p)`` (float64 on ``device``), or None for no box.

    ``bounds``: a :class:`Bounds`, packed ``(lo, hi)`` of shape ``(p,)`` or ``(R, p)``, or None.
    """
    if bounds is None:
        return None
    p = k_free * models.gate_dim(score, d) + k * models.get_expert(expert).dim(d)
    if isinstance(bounds, Bounds):
        if bounds.unbounded:
            return None
        lo, hi = bounds.packed(score, expert, d, k_free, k)
    else:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError("bounds: must be a Bounds, a pair (lo, hi) of tensors, or None")
        lo, hi = (torch.as_tensor(t, dtype=torch.float64) for t in bounds)
    lo, hi = (t.to(device=device, dtype=torch.float64) for t in (lo, hi))
    for name, t in (("lo", lo), ("hi", hi)):
        if t.shape not in ((p,), (R, p)):
            raise ValueError(f"bounds: {name} must have shape ({p},) or ({R}, {p}), got "
                             f"{tuple(t.shape)}")
        if bool(torch.isnan(t).any()):
            raise ValueError(f"bounds: {name} contains NaN")
    if not bool((lo < hi).all()):
        raise ValueError("bounds: every lower bound must be below its upper bound (lo < hi)")
    if bool(torch.isinf(lo).all()) and bool(torch.isinf(hi).all()):
        return None
    return lo.expand(R, p).contiguous(), hi.expand(R, p).contiguous()


#: A coordinate within this fraction of the box's width from a face counts as on it: the
#: projected solvers put it exactly there, SciPy's reflective one stays strictly inside.
AT_BOUND_RTOL = 1e-9


def _on_faces(theta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    width = hi - lo
    tol = AT_BOUND_RTOL * torch.where(torch.isfinite(width), width, 0)
    return theta <= lo + tol, theta >= hi - tol


def binding(theta: torch.Tensor, jtr: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
            ) -> torch.Tensor:
    """Coordinates held by the box: on a face, with the descent direction ``J^T r`` pointing out
    of it. The projected gradient is the gradient with these coordinates zeroed: its zeros are
    the first-order (KKT) points of the bounded problem."""
    at_lo, at_hi = _on_faces(theta, lo, hi)
    return (at_lo & (jtr < 0)) | (at_hi & (jtr > 0))


def outward(theta: torch.Tensor, step: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
            ) -> torch.Tensor:
    """Coordinates on a face whose ``step`` points out of the box."""
    at_lo, at_hi = _on_faces(theta, lo, hi)
    return (at_lo & (step < 0)) | (at_hi & (step > 0))


def projected_gradient_max(theta: torch.Tensor, jtr: torch.Tensor, n: int,
                           box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Max-norm of the projected gradient of the mean squared residual, ``-2 J^T r / n``: (R,)."""
    if box is not None:
        jtr = jtr.masked_fill(binding(theta, jtr, *box), 0)
    return 2 * jtr.abs().amax(-1) / n


def at_bound(theta: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Whether some coordinate of each row sits on a face of the box: (R,) bool."""
    if box is None:
        return torch.zeros(theta.shape[0], dtype=torch.bool, device=theta.device)
    at_lo, at_hi = _on_faces(theta, *box)
    return (at_lo | at_hi).any(-1)


def groups_at_bound(measure: MixingMeasure, bounds: Bounds) -> dict[str, torch.Tensor]:
    """Per parameter group of ``measure``'s model, whether some entry of it (of any atom) sits on
    its face of ``bounds``: ``{group: (R,) bool}``, the groups the model has, in
    ``PARAMETER_GROUPS`` order. Says which group holds a fit whose ``bound_active`` is set (a
    softmax atom's vanishing weight is ``beta0`` on its face, an escaping expert ``a`` or ``b``).

    An atom's row ``[gate params, expert params]`` has the layout of one free atom in
    :meth:`Bounds.packed`, which says where each group's columns are."""
    rows = torch.cat([measure.gate_params, measure.expert_params], -1).abs()  # (R, k, pg + pe)
    out = {}
    for name in PARAMETER_GROUPS:
        _, cols = Bounds(**{name: 1.0}).packed(measure.score, measure.expert, measure.d, 1, 1)
        cols = torch.isfinite(cols).to(rows.device)
        if not cols.any():
            continue  # the model has no such group
        width = getattr(bounds, name)
        # the tolerance of _on_faces: AT_BOUND_RTOL of the box's width 2 * width
        on_face = rows[..., cols] >= width * (1 - 2 * AT_BOUND_RTOL)
        out[name] = on_face.flatten(1).any(-1)
    return out
