"""What a notebook's closing text says about the committed results it prints, held to those
results: prose written for one run of a figure must not outlive its re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.rates import MEASURED_VERDICTS

ROOT = Path(__file__).resolve().parents[1]


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
