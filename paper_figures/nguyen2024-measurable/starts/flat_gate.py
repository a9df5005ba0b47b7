"""Why the linear-expert sigmoid G_bar is no strict minimiser: an atom with a nearly flat gate.

The reference certificate of the sigmoid fit to the linear-expert truth fails on the Hessian of
the population loss, which has a negative eigenvalue at G_bar (paper_figures/README.md,
nguyen2024-measurable, "Linear experts: not certifiable in reach"). This script reads where
that weakest direction lies. For each atom j of a sigmoid G_bar it measures

- ``gate_sd``: the standard deviation of its gate ``sigmoid(s_j(x))`` over the design (a flat
  gate weighs every x alike; a saturated one, ``s_j`` large on most of the design, is flat too);
- the curvature of the population loss along the atom's *level/scale trade*, the direction
  that raises ``beta0_j`` by one and shrinks its expert by ``1 - sigmoid(beta0_j)`` of itself.
  To first order it changes the atom's term ``sigmoid(s_j(x)) E_j(x)`` by
  ``sigmoid(s_j) E_j (sigmoid(beta0_j) - sigmoid(s_j))``, which vanishes where the gate is flat:
  there the gate's level and the expert's scale are one direction of the data;
- ``cos``: that direction's cosine with the Hessian's weakest eigenvector, and ``share``: the
  eigenvector's squared weight on the atom's parameters.

Why a flat gate appears with linear experts: a softmax truth's weights sum to one, so with
linear experts it is one linear expert plus gated differences, ``E_0(x) + sum_i
softmax_i(x) (E_i - E_0)(x)``; a sigmoid fit can carry that common linear part on an atom
whose gate barely varies.

    python paper_figures/nguyen2024-measurable/starts/flat_gate.py [FOLDER]

FOLDER (default ``paper_figures/nguyen2024-measurable``) records the G_bars in its
``manifest.json`` and their certificates in ``certificates/``; the Hessian is computed on the
certificate's design (same seed and size), so its smallest eigenvalue is the certificate's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from moe_theory.certificates import design, local_model
from moe_theory.measure import MixingMeasure
from moe_theory.models import gate_probabilities, score_features
from moe_theory.settings import get_setting

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = ROOT / "paper_figures" / "nguyen2024-measurable"


def flat_gate_table(folder: str | Path = DEFAULT) -> pd.DataFrame:
    """One row per (setting, atom) of every sigmoid G_bar ``folder`` records: ``gate_sd``,
    ``trade_curvature`` (``v^T H v`` for the unit level/scale direction ``v``), ``cos``,
    ``share``, and the setting's ``hessian_min`` (the certificate's smallest eigenvalue)."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    references = json.loads(manifest.read_text()).get("references") if manifest.exists() else None
    if not references:
        raise ValueError(f"FOLDER: {folder} records no G_bar (no references in a manifest.json)")
    rows = []
    for key, text in sorted(references.items()):
        setting_name, gate = key.split("/")
        if gate != "sigmoid":
            continue
        cert = json.loads((folder / "certificates" / f"reference-{setting_name}-{gate}.json")
                          .read_text())
        ref = MixingMeasure.from_json(text)
        setting = get_setting(setting_name)
        X = design(setting, cert["design_size"])
        problem, _, _, _, _, H = local_model(setting, ref, X, "G_bar")
        eigenvalues, vectors = torch.linalg.eigh(H)
        gate_v, expert_v = problem.unpack(vectors[:, 0][None])
        share = (gate_v[0] ** 2).sum(1) + (expert_v[0] ** 2).sum(1)
        gp, ep = ref.gate_params[0], ref.expert_params[0]
        gates = gate_probabilities(score_features(X, ref.score) @ gp.T, ref.gate)
        gate_sd = gates.reshape(-1, ref.k).std(0)
        for j in range(ref.k):
            d_gate, d_expert = torch.zeros_like(gp), torch.zeros_like(ep)
            d_gate[j, 0] = 1.0
            d_expert[j] = -(1 - torch.sigmoid(gp[j, 0])) * ep[j]
            v = problem.pack(MixingMeasure(ref.gate, ref.score, ref.expert, ref.d,
                                           d_gate[None], d_expert[None]))[0]
            v = v / v.norm()
            rows.append({"setting": setting_name, "atom": j,
                         "gate_sd": float(gate_sd[j]),
                         "trade_curvature": float(v @ H @ v),
                         "cos": float((v @ vectors[:, 0]).abs()),
                         "share": float(share[j]),
                         "hessian_min": float(eigenvalues[0])})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(DEFAULT))
    try:
        table = flat_gate_table(p.parse_args().folder)
    except ValueError as error:
        p.error(str(error))
    with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 120):
        print(table.to_string(index=False))
    print("\n(the recorded G_bars on their certificates' designs: no fit, no verdict)")


if __name__ == "__main__":
    main()
