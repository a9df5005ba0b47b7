"""Audit of the figures, reports, studies and notebooks: each test here failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_theory.rates import MEASURED_VERDICTS, rates_table
from moe_theory.studies import attention_teacher as teacher_study

ROOT = Path(__file__).resolve().parents[2]


def test_attention_teacher_counts_a_collapsed_students_nan():
    """A fit whose heads collapse onto fewer teacher heads has no exact cell: its err_*_exact is
    NaN. The study dropped every NaN row, so that replication vanished from its curve, the table
    said "dropped 0" and the figure's legend nothing; only losses NaN in every fit (an exact
    student's over-specified cells) may go."""
    study = teacher_study.TeacherStudentStudy(d=2, d_v=1, seq_len=3, teacher_heads=1,
                                              extra_heads=1, n=(6, 12), reps=2, max_iter=2)
    real = teacher_study.head_errors

    def collapsed_rep0(W, V, teacher):
        errors = real(W, V, teacher)
        if W.shape[1] == teacher.heads:  # the exact student: replication 0 collapsed
            errors["err_W_exact"][0] = float("nan")
        return errors

    mp = pytest.MonkeyPatch()
    mp.setattr(teacher_study, "head_errors", collapsed_rep0)
    try:
        df = teacher_study.run_study(study, log=lambda _: None)
    finally:
        mp.undo()
    exact = df[df.setting == "attention-exact"]
    # an exact student of one teacher head never has an over-specified cell: no such curve
    assert not exact.loss_name.str.endswith("_over").any()
    curve = exact[(exact.fit_gate == "sigmoid") & (exact.loss_name == "err_W_exact")]
    assert len(curve) == len(study.n) * study.reps
    assert int(curve.loss_value.isna().sum()) == len(study.n)
    table = rates_table(df, theory=teacher_study.exploratory_rate)
    row = table[(table.setting == "attention-exact") & (table.fit_gate == "sigmoid")
                & (table.loss_name == "err_W_exact")].iloc[0]
    assert row["dropped_nan"] == len(study.n)


def _last_markdown(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in reversed(cells) if c["cell_type"] == "markdown")["source"])


def test_notebook_04_prose_agrees_with_the_committed_yan2025_table():
    """Notebook 04 prints the committed yan2025 verdicts of the linear-expert panels, then says
    what they show. It said every dense-regime curve drawn there is not measurable and that the
    quadratic-score sigmoid D3 passes the reference certificate, while the table it prints
    certifies the dense monomial-score sigmoid D3 (consistent) and fails that reference."""
    rates = pd.read_csv(ROOT / "paper_figures" / "yan2025" / "rates.csv")
    text = " ".join(_last_markdown(ROOT / "notebooks" / "04_attention_as_moe.ipynb").split())
    drawn = rates[rates.plotted & (rates.expert == "linear")]
    measured = drawn[drawn.verdict.isin(MEASURED_VERDICTS)]
    for row in measured.itertuples():
        # each certified curve the notebook draws is named with its slope, as the table has it
        assert f"{row.slope:.2f} ± {row.ci_half_width:.2f}" in text, row.setting
    if (measured.regime == "dense").any():
        assert "every dense-regime curve drawn here is `not measurable`" not in text
    quadratic = drawn[(drawn.score == "quadratic") & (drawn.regime == "dense")
                      & (drawn.fit_gate == "sigmoid") & (drawn.loss_name == "D3")].iloc[0]
    assert f"{quadratic.slope:.2f} ± {quadratic.ci_half_width:.2f}" in text
    if quadratic.cert_reference == "fail":
        assert "passes the reference" not in text
    assert np.isfinite(quadratic.slope)
