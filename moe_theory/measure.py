"""Mixing measures ``G = sum_i w(beta0_i) delta_{omega_i}``, batched over R replications."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from moe_theory import models
from moe_theory.models import Expert
from moe_theory.validation import check_data


@dataclass(frozen=True)
class MixingMeasure:
    """R mixing measures with k atoms each, stored in the packed layout of :mod:`moe_theory.models`.

    Attributes
    ----------
    gate, score, expert : names (docs/theory.md#gates-scores-and-experts)
    d : input dimension
    gate_params : (R, k, pg) ``[beta0, beta1, triu(A)]``
    expert_params : (R, k, pe) ``[a, b]``

    Softmax measures are put in the pinned gauge on construction: the last atom's score
    parameters are subtracted from every atom, which leaves ``f_G`` unchanged (softmax is
    invariant to a common shift of the scores) and makes the last atom's score zero.
    """

    gate: str
    score: str
    expert: str
    d: int
    gate_params: torch.Tensor
    expert_params: torch.Tensor

    def __post_init__(self) -> None:
        models.check_gate(self.gate)
        models.check_score(self.score)
        expert = models.get_expert(self.expert)
        pg, pe = models.gate_dim(self.score, self.d), expert.dim(self.d)
        gp, ep = self.gate_params, self.expert_params
        if gp.dim() != 3 or gp.shape[-1] != pg:
            raise ValueError(f"gate_params: expected shape (R, k, {pg}), got {tuple(gp.shape)}")
        if ep.dim() != 3 or ep.shape[-1] != pe or ep.shape[:2] != gp.shape[:2]:
            raise ValueError(
                f"expert_params: expected shape {tuple(gp.shape[:2]) + (pe,)}, got {tuple(ep.shape)}"
            )
        if self.gate == "softmax":
            object.__setattr__(self, "gate_params", gp - gp[:, -1:, :])

    # ---- shape and views -------------------------------------------------------------------
    @property
    def R(self) -> int:
        return self.gate_params.shape[0]

    @property
    def k(self) -> int:
        return self.gate_params.shape[1]

    @property
    def expert_fn(self) -> Expert:
        return models.get_expert(self.expert)

    @property
    def beta0(self) -> torch.Tensor:
        """(R, k)"""
        return self.gate_params[..., 0]

    @property
    def beta1(self) -> torch.Tensor | None:
        """(R, k, d), or None for monomial scores."""
        return self.gate_params[..., 1 : 1 + self.d] if models.score_has_linear(self.score) else None

    @property
    def A(self) -> torch.Tensor | None:
        """(R, k, d, d) symmetric, or None for linear scores."""
        if not models.score_has_quadratic(self.score):
            return None
        tri = self.gate_params[..., -models.n_triu(self.d) :]
        iu, ju = models.triu_indices(self.d, tri.device)
        full = tri.new_zeros(tri.shape[:-1] + (self.d, self.d))
        full[..., iu, ju] = tri
        full[..., ju, iu] = tri
        return full

    @property
    def a(self) -> torch.Tensor | None:
        """(R, k, d), or None for constant experts."""
        return self.expert_params[..., :-1] if self.expert_fn.has_slope else None

    @property
    def b(self) -> torch.Tensor:
        """(R, k)"""
        return self.expert_params[..., -1]

    @property
    def weights(self) -> torch.Tensor:
        """``w(beta0)``: (R, k)"""
        return models.gate_weight(self.beta0, self.gate)

    @property
    def omega(self) -> torch.Tensor:
        """All non-weight parameters of each atom ``[beta1, triu(A), a, b]``: (R, k, q)."""
        return torch.cat([self.gate_params[..., 1:], self.expert_params], dim=-1)

    # ---- construction helpers --------------------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        *,
        gate: str,
        score: str,
        expert: str,
        beta0: torch.Tensor,
        b: torch.Tensor,
        beta1: torch.Tensor | None = None,
        A: torch.Tensor | None = None,
        a: torch.Tensor | None = None,
        d: int | None = None,
    ) -> MixingMeasure:
        """Build from named parameters shaped ``(R, k)``, ``(R, k, d)`` and ``(R, k, d, d)``."""
        models.check_score(score)
        exp = models.get_expert(expert)
        if d is None:
            d = next((t.shape[-1] for t in (beta1, a, A) if t is not None), None)
            if d is None:
                raise ValueError("d: cannot be inferred for a monomial-free constant measure")
        parts = [beta0[..., None]]
        for name, tensor, needed in (
            ("beta1", beta1, models.score_has_linear(score)),
            ("A", A, models.score_has_quadratic(score)),
        ):
            if needed and tensor is None:
                raise ValueError(f"{name}: required for score {score!r}")
            if not needed and tensor is not None and bool(tensor.abs().max() > 0):
                raise ValueError(f"{name}: must be absent (null) for score {score!r}")
        if models.score_has_linear(score):
            parts.append(beta1)
        if models.score_has_quadratic(score):
            iu, ju = models.triu_indices(d, A.device)
            parts.append(0.5 * (A + A.transpose(-1, -2))[..., iu, ju])
        if exp.has_slope:
            if a is None:
                raise ValueError(f"a: required for expert {expert!r}")
            eparts = [a, b[..., None]]
        else:
            eparts = [b[..., None]]
        return cls(gate, score, expert, int(d), torch.cat(parts, -1), torch.cat(eparts, -1))

    def replace(self, gate_params: torch.Tensor, expert_params: torch.Tensor) -> MixingMeasure:
        return MixingMeasure(self.gate, self.score, self.expert, self.d, gate_params, expert_params)

    def in_gauge(self, shift: torch.Tensor) -> MixingMeasure:
        """This softmax measure with ``shift`` (R, q) added to the first ``q`` gate parameters of
        every atom (``beta0``, then ``beta1``...), left in that gauge: the same ``f_G``, written
        with the last atom's score no longer zero. Every other construction pins it
        (docs/theory.md#gates-scores-and-experts); a loss that compares ``exp(beta0)`` reads
        another gauge through this (:func:`moe_theory.voronoi.matched_gauge_d1`)."""
        if self.gate != "softmax":
            raise ValueError(f"gate: only softmax measures have a gauge, this one is {self.gate!r}")
        gp = self.gate_params.clone()
        q = shift.shape[-1]
        gp[..., :q] += shift.to(gp)[:, None, :]
        out = self.replace(self.gate_params, self.expert_params)
        object.__setattr__(out, "gate_params", gp)  # after __post_init__, which would pin it
        return out

    @classmethod
    def concat(cls, measures: Sequence[MixingMeasure]) -> MixingMeasure:
        """One batch of the replications of ``measures`` in order (the first's model: callers
        check that the batch is homogeneous)."""
        head = measures[0]
        return head.replace(torch.cat([m.gate_params for m in measures]),
                            torch.cat([m.expert_params for m in measures]))

    def select(self, index: Any) -> MixingMeasure:
        """The replications ``index`` (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.replace(self.gate_params[index], self.expert_params[index])

    def finite(self) -> torch.Tensor:
        """(R,) bool: whether each replication's parameters are all finite (a diverged fit's
        are not)."""
        return (torch.isfinite(self.gate_params).flatten(1).all(1)
                & torch.isfinite(self.expert_params).flatten(1).all(1))

    def repeat(self, R: int) -> MixingMeasure:
        """A batch of R copies of a single measure."""
        if self.R != 1:
            raise ValueError(f"repeat: needs a batch of one measure, this one has R = {self.R}")
        return self.replace(
            self.gate_params.expand(R, -1, -1).clone(), self.expert_params.expand(R, -1, -1).clone()
        )

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> MixingMeasure:
        return self.replace(
            self.gate_params.to(device=device, dtype=dtype),
            self.expert_params.to(device=device, dtype=dtype),
        )

    # ---- the regression function -----------------------------------------------------------
    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """``f_G(X)``: ``X: (R, n, d) -> (R, n)``; a batch of one measure broadcasts over R."""
        check_data(X, d=self.d)
        gp, ep = self.gate_params.to(X), self.expert_params.to(X)
        if self.R == 1 and X.shape[0] != 1:
            gp, ep = gp.expand(X.shape[0], -1, -1), ep.expand(X.shape[0], -1, -1)
        elif self.R != X.shape[0]:
            raise ValueError(f"X: has R = {X.shape[0]} replications but the measure has R = {self.R}")
        return models.regression_function(
            X, gp, ep, gate=self.gate, score=self.score, expert=self.expert_fn
        )

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict | list[dict]:
        """The JSON format of docs/theory.md#public-interface; a batch of R > 1 measures is a list."""
        out = []
        beta1, A, a = self.beta1, self.A, self.a
        for r in range(self.R):
            atoms = []
            for i in range(self.k):
                atoms.append(
                    {
                        "beta0": float(self.beta0[r, i]),
                        "beta1": None if beta1 is None else beta1[r, i].tolist(),
                        "A": None if A is None else A[r, i].tolist(),
                        "a": None if a is None else a[r, i].tolist(),
                        "b": float(self.b[r, i]),
                    }
                )
            out.append(
                {"gate": self.gate, "score": self.score, "expert": self.expert, "d": self.d,
                 "atoms": atoms}
            )
        return out[0] if self.R == 1 else out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_json_rows(self) -> list[str]:
        """Each replication as its own compact JSON text (a stored fit's ``fit_measure``, one
        per table row: moe_theory.store), exact for float64 (``repr`` round-trips)."""
        return [json.dumps(self.select(r).to_dict(), separators=(",", ":")) for r in range(self.R)]

    @classmethod
    def from_json_rows(cls, texts: Iterable[str], dtype: torch.dtype = torch.float64
                       ) -> MixingMeasure:
        """One batch of the measures :meth:`to_json_rows` wrote, in order. A fit that diverged
        is stored with its NaN parameters and read back so (its losses are NaN, counted as
        dropped), where :meth:`from_dict` refuses non-finite numbers as bad input."""
        return cls.from_dict([json.loads(text) for text in texts], dtype=dtype,
                             _finite=False)

    @classmethod
    def from_dict(cls, data: dict | list[dict], dtype: torch.dtype = torch.float64, *,
                  _finite: bool = True) -> MixingMeasure:
        items = data if isinstance(data, list) else [data]
        if not items:
            raise ValueError("measure: an empty list holds no measure")
        parsed = [_parse_one(item, f"measure[{r}]" if isinstance(data, list) else "measure",
                             dtype, _finite) for r, item in enumerate(items)]
        head = parsed[0]
        for r, m in enumerate(parsed[1:], start=1):
            if (m.gate, m.score, m.expert, m.d, m.k) != (head.gate, head.score, head.expert, head.d,
                                                          head.k):
                raise ValueError(f"measure[{r}]: gate/score/expert/d/number of atoms differ from "
                                 "measure[0]; a batch must be homogeneous")
        return cls.concat(parsed)

    @classmethod
    def from_json(cls, text: str, dtype: torch.dtype = torch.float64) -> MixingMeasure:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"measure: not valid JSON ({err})") from None
        except RecursionError:  # nested deeper than the parser goes: no measure is
            raise ValueError("measure: not valid JSON (nested too deep)") from None
        return cls.from_dict(data, dtype=dtype)


def check_measure(field: str, value: Any, *, finite: bool = True) -> MixingMeasure:
    """``value`` if it is a :class:`MixingMeasure` (with finite parameters where ``finite``),
    else a ValueError naming ``field``. A truth or a reference with a NaN in it gave NaN data
    or losses without a word; a fitted measure may hold the NaN of a diverged fit."""
    if not isinstance(value, MixingMeasure):
        raise ValueError(f"{field}: expected a MixingMeasure, got {type(value).__name__}")
    if finite and not bool(value.finite().all()):
        raise ValueError(f"{field}: its parameters hold NaN or infinity")
    return value


def _holds_bool(value: Any) -> bool:
    """Whether ``value`` or a list nested in it holds a bool (iterative: any depth)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            return True
        if isinstance(v, list):
            stack.extend(v)
    return False


#: The keys of a measure's JSON and of each of its atoms (docs/theory.md#public-interface).
MEASURE_KEYS = ("gate", "score", "expert", "d", "atoms")
ATOM_KEYS = ("beta0", "beta1", "A", "a", "b")


def _no_other_keys(item: dict, keys: tuple[str, ...], where: str) -> None:
    """Refuse a key the format does not have: a misspelt parameter ("beta_0") was read as
    absent and the rest measured, silently."""
    other = [key for key in item if key not in keys]
    if other:
        raise ValueError(f"{where}.{other[0]}: unknown key; allowed: {', '.join(keys)}")


def _parse_one(item: Any, where: str, dtype: torch.dtype, finite: bool = True) -> MixingMeasure:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    for key in MEASURE_KEYS:
        if key not in item:
            raise ValueError(f"{where}.{key}: missing")
    _no_other_keys(item, MEASURE_KEYS, where)
    gate, score = models.check_gate(item["gate"]), models.check_score(item["score"])
    expert = models.get_expert(item["expert"])
    d = item["d"]
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
        raise ValueError(f"{where}.d: must be a positive integer, got {d!r}")
    atoms = item["atoms"]
    if not isinstance(atoms, list) or not atoms:
        raise ValueError(f"{where}.atoms: must be a non-empty list")

    def vector(atom: dict, key: str, i: int, shape: tuple[int, ...], needed: bool):
        value = atom.get(key)
        field = f"{where}.atoms[{i}].{key}"
        if not needed:
            if value is not None:
                raise ValueError(f"{field}: must be null for this score/expert")
            return None
        if value is None:
            raise ValueError(f"{field}: required, got null")
        if _holds_bool(value):  # torch reads true as 1.0: a typo'd flag is no parameter
            raise ValueError(f"{field}: must be numbers of shape {shape}, got a boolean")
        try:
            t = torch.tensor(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError, RecursionError):
            # an integer literal past float range ("1" and 400 zeros); lists nested past the
            # interpreter's depth
            raise ValueError(f"{field}: must be numbers of shape {shape}") from None
        if tuple(t.shape) != shape:
            raise ValueError(f"{field}: expected shape {shape}, got {tuple(t.shape)}")
        if finite and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{field}: contains NaN or infinity")
        return t

    cols: dict[str, list] = {k: [] for k in ("beta0", "b", "beta1", "A", "a")}
    for i, atom in enumerate(atoms):
        if not isinstance(atom, dict):
            raise ValueError(f"{where}.atoms[{i}]: expected an object")
        _no_other_keys(atom, ATOM_KEYS, f"{where}.atoms[{i}]")
        cols["beta0"].append(vector(atom, "beta0", i, (), True))
        cols["b"].append(vector(atom, "b", i, (), True))
        cols["beta1"].append(vector(atom, "beta1", i, (d,), models.score_has_linear(score)))
        cols["A"].append(vector(atom, "A", i, (d, d), models.score_has_quadratic(score)))
        cols["a"].append(vector(atom, "a", i, (d,), expert.has_slope))

    def stack(key):
        return None if cols[key][0] is None else torch.stack(cols[key])[None]

    A = stack("A")
    if A is not None and not torch.allclose(A, A.transpose(-1, -2)):
        raise ValueError(f"{where}.atoms[*].A: must be symmetric")
    return MixingMeasure.from_parts(
        gate=gate, score=score, expert=expert.name, d=d, beta0=stack("beta0"), b=stack("b"),
        beta1=stack("beta1"), A=A, a=stack("a"),
    )
