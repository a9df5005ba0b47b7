"""The teacher-student attention study behind ``paper_figures/attention-teacher``
(docs/theory.md#teacher-student-attention). EXPLORATORY: no paper states a rate for this model;
the exponents drawn as guides are analogies, labelled so.

For each gate, sample size and student size (exact: H = H*, over-specified: H = H* + extra), R
replications are fitted from near the teacher (:mod:`moe_theory.attention_teacher`) and their
Voronoi-style head errors tabulated; the rates table and a two-panel figure summarise them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from moe_theory import models
from moe_theory.attention_teacher import (
    DEFAULT_JITTER,
    DEFAULT_NOISE_VAR,
    AttentionTeacher,
    attention_heads,
    fit_attention,
    head_errors,
    near_teacher,
    sample_sequences,
)
from moe_theory.certificates import FolderCertificates
from moe_theory.data import stable_seed
from moe_theory.plotting import plot_panels
from moe_theory.rates import format_rates_table, rates_table
from moe_theory.studies import StudyOutput


@dataclass(frozen=True)
class TeacherStudentStudy:
    """Sizes of the teacher-student study (one fit per gate, head count and n; R replications).

    The teacher draws ``W*_h ~ N(0, I)`` entries (logits ``x^T W x / sqrt(d)`` of order one for
    standard normal tokens) and ``V*_h ~ N(0, 1/d)`` entries from ``teacher_seed``.
    """

    d: int = 4
    d_v: int = 4
    seq_len: int = 8
    teacher_heads: int = 2
    extra_heads: int = 1
    n: tuple[int, ...] = (100, 200, 400, 800, 1600, 3200)
    reps: int = 16
    noise_var: float = DEFAULT_NOISE_VAR
    teacher_seed: int = 2025
    seed: int = 0
    jitter: float = DEFAULT_JITTER
    max_iter: int = 1500


#: CPU preset (``--fast``): float64 through the dense reference, about a minute on 2 cores.
FAST_STUDY = TeacherStudentStudy(d=3, d_v=2, seq_len=6, n=(50, 100, 200, 400), reps=6,
                                 max_iter=500)
FULL_STUDY = TeacherStudentStudy()
SETTING_NAMES = {"exact": "attention-exact", "over": "attention-over"}
RESULT_COLUMNS = ["setting", "truth_gate", "fit_gate", "score", "expert", "regime", "d", "k_true",
                  "k_fit", "n", "rep", "seed", "loss_name", "loss_value", "converged", "certified",
                  "n_iter", "fit_loss", "ref_loss", "grad_norm", "wall_s", "device", "backend"]
#: A fit is certified when its loss is no worse than the teacher's on the same data, to the
#: rounding of the dtype it was computed in (float32 on the GPU kernels).
CERTIFY_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def draw_teacher(study: TeacherStudentStudy, gate: str) -> AttentionTeacher:
    rng = np.random.default_rng(study.teacher_seed)
    H0, d = study.teacher_heads, study.d
    W = torch.as_tensor(rng.standard_normal((H0, d, d)))
    V = torch.as_tensor(rng.standard_normal((H0, d, study.d_v)) / math.sqrt(d))
    return AttentionTeacher(gate, W, V, study.seq_len, noise_var=study.noise_var)


def exploratory_rate(fit_gate: str, score: str, regime: str, expert: str, loss_name: str
                     ) -> SimpleNamespace:
    """Guide exponents for the rates table, labelled as what they are: none is a theorem here.

    Exact cells: ``n^-1/2``, the classical rate of a regular parametric least-squares problem.
    Over-specified cells: ``n^-1/4`` for a split head's ``W`` by analogy with N24 Thm 2, and
    ``n^-1/2`` for the cell's summed ``V`` by analogy with its weight-sum term.
    """
    exponent = {"err_W_exact": -0.5, "err_V_exact": -0.5, "err_W_over": -0.25,
                "err_V_over": -0.5}.get(loss_name)
    label = ("regular parametric (exploratory)" if loss_name.endswith("exact")
             else "analogy with N24 Thm 2 (conjecture)")
    return SimpleNamespace(exponent=exponent, label=label if exponent is not None else "none",
                           source="exploratory")


def no_guides(*_: str) -> SimpleNamespace:
    """Theory lookup that draws no guide: the figure carries no theorem for this model."""
    return SimpleNamespace(exponent=None, label="none", source="")


def run_study(study: TeacherStudentStudy, *, device: str = "cpu",
              dtype: torch.dtype | None = None, log=print) -> pd.DataFrame:
    """Fit every (gate, head count, n) of ``study``; the tidy table of head errors.

    ``dtype`` defaults to float32 on CUDA (the Triton kernels) and float64 on the CPU.
    """
    dtype = dtype or (torch.float32 if device.startswith("cuda") else torch.float64)
    H0 = study.teacher_heads
    data_seed = stable_seed("attention-teacher", study.seed)
    frames = []
    for gate in models.GATES:
        teacher = draw_teacher(study, gate)
        for n in study.n:
            X, Y = sample_sequences(teacher, n, study.reps, data_seed, device=device, dtype=dtype)
            W_t = teacher.W.to(X)[None].expand(study.reps, -1, -1, -1)
            V_t = teacher.V.to(X)[None].expand(study.reps, -1, -1, -1)
            with torch.no_grad():
                ref = attention_heads(X, W_t, V_t, gate=gate, bias=teacher.bias,
                                      scale=teacher.scale)
                ref_loss = (ref - Y).square().mean(dim=(1, 2, 3)).double().cpu()
            for kind, H in (("exact", H0), ("over", H0 + study.extra_heads)):
                W0, V0 = near_teacher(teacher, H, study.reps,
                                      stable_seed(study.seed, gate, n, H), jitter=study.jitter)
                fit = fit_attention(X, Y, W0, V0, gate=gate, bias=teacher.bias,
                                    scale=teacher.scale, max_iter=study.max_iter)
                floor = torch.finfo(dtype).eps * Y.square().mean(dim=(1, 2, 3)).double().cpu()
                certified = fit.fit_loss <= ref_loss * (1 + CERTIFY_RTOL[dtype]) + floor
                base = {
                    "setting": SETTING_NAMES[kind], "truth_gate": gate, "fit_gate": gate,
                    "score": "attention", "expert": "linear",
                    "regime": "exact-specified" if kind == "exact" else "over-specified",
                    "d": study.d, "k_true": H0, "k_fit": H, "n": n,
                    "rep": np.arange(study.reps), "seed": data_seed,
                    "converged": fit.converged.numpy(), "certified": certified.numpy(),
                    "n_iter": fit.n_iter, "fit_loss": fit.fit_loss.numpy(),
                    "ref_loss": ref_loss.numpy(), "grad_norm": fit.grad_norm.numpy(),
                    "wall_s": fit.wall_s / study.reps, "device": device,
                    "backend": "triton" if fit.kernel else "torch",
                }
                for name, value in head_errors(fit.W, fit.V, teacher).items():
                    frames.append(pd.DataFrame({**base, "loss_name": name,
                                                "loss_value": value.numpy()}))
                log(f"{gate} H={H} n={n}: {fit.n_iter} L-BFGS iterations, "
                    f"{float(fit.converged.double().mean()):.0%} converged, "
                    f"{float(certified.double().mean()):.0%} certified, {fit.wall_s:.1f} s")
    df = pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]
    # a cell type that no fit of a curve has (an over-specified cell of every exact student) is
    # no curve; a NaN among a curve's values (a student whose heads collapsed onto fewer teacher
    # heads) stays, so that the table and the legend count it as left out rather than the
    # replication vanishing from them unsaid
    defined = df.groupby(["setting", "fit_gate", "loss_name"])["loss_value"].transform(
        "count") > 0
    return df[defined].reset_index(drop=True)


def run(*, fast: bool = False, device: str = "cpu") -> StudyOutput:
    """Run the study (``FAST_STUDY`` or ``FULL_STUDY``): its head errors, rates table (with the
    exploratory guides) and figure ``attention-teacher``."""
    study = FAST_STUDY if fast else FULL_STUDY
    df = run_study(study, device=device)
    table = study_table(df, study)
    return StudyOutput(results=df, table=table, table_name="rates",
                       text=format_rates_table(table),
                       draw=functools.partial(write_figure, df, study))


def study_table(df: pd.DataFrame, study: TeacherStudentStudy) -> pd.DataFrame:
    """The study's rates table, its figure's curves marked (listed first, as a sweep's are)."""
    # L-BFGS fits with no G_bar: the certified protocol's reference certificate and optimiser
    # check are not computed for this study, and its table says so
    table = rates_table(df, theory=exploratory_rate, certificates=FolderCertificates(
        missing="this exploratory study computes none"))
    drawn = {(setting, gate, loss) for _, setting, curves in figure_panels(study)
             for gate, loss, _ in curves}
    table["plotted"] = [(r.setting, r.fit_gate, r.loss_name) in drawn
                        for r in table.itertuples()]
    return table


def figure_panels(study: TeacherStudentStudy) -> list[tuple[str, str, list]]:
    """The figure's panels: (title, setting, (gate, loss, label) curves)."""
    H0, H = study.teacher_heads, study.teacher_heads + study.extra_heads
    return [
        (f"exact-specified: H = H* = {H0}", SETTING_NAMES["exact"],
         [(g, f"err_{p}_exact", f"{g} {p}") for p in ("W", "V") for g in models.GATES]),
        (f"over-specified: H = {H} > H* = {H0}", SETTING_NAMES["over"],
         [(g, f"err_{p}_over", f"{g} {p if p == 'W' else 'sum V'} (split)")
          for p in ("W", "V") for g in models.GATES]),
    ]


def write_figure(df: pd.DataFrame, study: TeacherStudentStudy, path_stem: Path) -> list[Path]:
    """Two log-log panels (exact- and over-specified students), both gates, W and V errors."""
    # n counts sequences of N tokens (the README gives the sizes)
    return plot_panels(df, figure_panels(study), path_stem, ncols=2, theory=no_guides,
                       title="Teacher-student attention (exploratory)")
