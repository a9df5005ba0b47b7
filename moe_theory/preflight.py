"""``moe-theory preflight``: what a sweep can measure, before it runs (docs/theory.md#planning).

A curve's verdict needs every certificate and a narrow CI (docs/theory.md#verdicts). Two of them
depend on the truth and the grid alone, so they can be read before any fit: the reference
certificate, and the CI's width, which the reference's local normal limit predicts (the
certificate's overlay: mean and standard deviation of each plotted loss per n). The converged,
optimiser and over-fit certificates need the fits; the preflight says only whether the grid lets
the over-fit one run at all.

It runs a sweep's first stage alone (its G_bar references and their certificates, into the folder
the sweep will use, which reuses them) and writes, per plotted curve, what stands in the way of a
verdict on this grid: the reference (and which n it allows), the loss's identification, the
number of sample sizes, the over-fit certificate's n >= 10 p, and the replications a CI under
``CI_HALF_WIDTH_MAX`` needs. A curve with no blocker is *measurable if* its fits converge and
pass the optimiser and over-fit certificates: the preflight can rule a curve out, never in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from moe_theory.certificates import (
    OVERFIT_MIN_N_PER_P,
    ReferenceCertificate,
    allowed_n,
    fixed_failure,
    free_parameters,
    load_reference_certificates,
    normal_limit,
)
from moe_theory.config import SweepConfig
from moe_theory.identified_losses import UNIDENTIFIED_SHARE
from moe_theory.layout import PREFLIGHT_TABLE
from moe_theory.measure import MixingMeasure
from moe_theory.outputs import plot_losses, write_table
from moe_theory.rates import CI_HALF_WIDTH_MAX, MIN_POINTS, MIN_REPS_PER_N, predicted_half_width
from moe_theory.settings import Setting
from moe_theory.store import (
    folder_references,
    make_folder,
    read_manifest_config,
    write_manifest,
)
from moe_theory.sweep import prepare_references
from moe_theory.theory import predicted_rate
from moe_theory.voronoi import applicable_losses

#: The measured CI half-width of a certified curve over the local normal limit's prediction for
#: it: median 1.0, 0.53 to 1.48 over the 45 curves of this repository's certified sweeps (the
#: bootstrap's own noise with 20 to 60 replications, and spread the limit leaves out at small n;
#: docs/theory.md#planning). A prediction within this factor of CI_HALF_WIDTH_MAX is borderline,
#: and the replications advised are those that keep this margin.
CI_MARGIN = 1.5
#: The most replications the preflight advises (beyond it, a grid or a truth must change).
REPS_MAX = 100_000
#: The columns of the preflight table, one row per plotted curve.
PREFLIGHT_COLUMNS = (
    "setting", "fit_gate", "loss_name", "reference", "reference_status", "theory_exponent",
    "theory_label", "n_min", "n_max", "n_points", "reps", "n_from", "n_to", "identified",
    "overfit_n", "limit_slope", "limit_half_width", "reps_advised", "outlook", "reasons",
)
#: The outlooks (``no theory`` only where nothing blocks the curve, as the verdicts have it).
NO_THEORY, NOT_MEASURABLE, INCONCLUSIVE, BORDERLINE, MEASURABLE_IF = (
    "no theory", "not measurable", "inconclusive (CI too wide)",
    "measurable if the fits pass, CI borderline", "measurable if the fits pass")


def plotted_losses(config: SweepConfig, setting: Setting, gate: str) -> list[str]:
    """The losses the figure draws for ``gate`` fits of ``setting``: per curve, the first of its
    candidates that the sweep measures (the figure falls through further where a loss is NaN in
    every fit, which only the fits can tell)."""
    measured = applicable_losses(setting, setting.reference_kind(gate), config.losses, gate)
    out = []
    for candidates in plot_losses(config, gate):
        loss = next((c for c in candidates if c in measured), None)
        if loss is not None and loss not in out:
            out.append(loss)
    return out


def reps_advised(entry: dict, reps: int) -> int | None:
    """The fewest replications whose predicted CI half-width, times CI_MARGIN, is under
    CI_HALF_WIDTH_MAX (None beyond REPS_MAX); ``reps`` where it already is."""
    def wide(r: int) -> bool:
        half = predicted_half_width(entry["n"], entry["mean"], entry["sd"], r)[1]
        return not half * CI_MARGIN < CI_HALF_WIDTH_MAX

    if not wide(reps):
        return reps
    low, high = reps, min(2 * reps, REPS_MAX)
    while wide(high):  # the half-width falls about as R^-1/2: doublings, then halvings
        if high >= REPS_MAX:  # tested at the cap itself: a count between the last doubling
            return None       # and REPS_MAX was never tried
        low, high = high, min(2 * high, REPS_MAX)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if wide(mid) else (low, mid)
    return high


def curve_outlook(config: SweepConfig, setting: Setting, gate: str, loss: str,
                  cert: ReferenceCertificate, limit: dict | None = None) -> dict:
    """One plotted curve's row of the preflight table (:data:`PREFLIGHT_COLUMNS`). ``limit``:
    the loss's normal limit (mean and sd per n), where not the certificate's overlay."""
    theory = predicted_rate(gate, setting.score, setting.regime, setting.expert, loss,
                            reference=cert.kind)
    n_min, n_max, reps = min(config.n), max(config.n), config.reps_of(gate)
    blockers, notes = [], []
    no_theory = theory.exponent is None or math.isnan(theory.exponent)
    if len(config.n) < MIN_POINTS:
        blockers.append(f"{len(config.n)} sample sizes < {MIN_POINTS}")
    if reps < MIN_REPS_PER_N:
        # the slope drops every n with fewer usable values: the curve would have no point
        blockers.append(f"{reps} replication(s) per n < {MIN_REPS_PER_N}: no n enters a slope")
    n_from, n_to = allowed_n(cert)
    fixed = fixed_failure(cert)
    if fixed is not None:
        blockers.append(f"reference: {fixed}; no range of n mends it")
    elif cert.status != "pass":
        if n_from > n_to:
            blockers.append(f"reference: no n passes (from n >= {n_from:.3g} by the predicted "
                            f"error, to n <= {n_to:.3g} by G_bar's design and refits)")
        else:
            blockers.append("reference: " + "; ".join(cert.reasons))
            if n_min < n_from:
                notes.append(f"the predicted error passes from n >= {n_from:.3g}")
            if n_max > n_to:
                notes.append(f"G_bar's design and refits pass up to n <= {n_to:.3g}")
    identified = None
    if cert.unidentified is not None and loss in (cert.identified_tested or [loss]):
        identified = loss not in cert.unidentified
        if not identified:
            # the reference fails the curve where its smallest median is under this
            # (certificates.reference_status), which only the fits can tell; a floor above the
            # atoms' distance leaves no median that could tell the atoms apart
            floor = cert.unidentified[loss]["value"] / UNIDENTIFIED_SHARE
            why = (f"{loss} not identified below medians of {floor:.2g} (a measure the data "
                   "cannot tell from the reference puts it "
                   f"{cert.unidentified[loss]['value']:.2g} away)")
            if floor >= cert.min_atom_distance:
                blockers.append(f"{why}, more than the atoms' distance "
                                f"{cert.min_atom_distance:.2g}")
            else:
                notes.append(f"{why}: the reference fails the curve if its medians fall so low")
    p = free_parameters(gate, setting.score, setting.expert, setting.d, setting.k_fit)
    overfit_n = sum(n >= OVERFIT_MIN_N_PER_P * p for n in config.n)
    if not overfit_n:
        blockers.append(f"the over-fit certificate cannot run: every n < {OVERFIT_MIN_N_PER_P} p "
                        f"= {OVERFIT_MIN_N_PER_P * p}")
    entry = limit if limit is not None else cert.overlay.get(loss)
    slope = half = math.nan
    advised = None
    if entry is not None and "sd" in entry:
        slope, half = predicted_half_width(entry["n"], entry["mean"], entry["sd"], reps)
        advised = reps_advised(entry, reps)
    elif cert.overlay_note:
        notes.append(f"CI not predicted: {cert.overlay_note}")
    if blockers:  # as the verdicts have it: a curve without an exponent is judged the same
        outlook = NOT_MEASURABLE
    elif no_theory:  # nothing to hold a slope to, though nothing stands in its way
        outlook = NO_THEORY
    elif entry is not None and "sd" in entry and math.isnan(half):
        # a limit whose spread is zero (or undefined) at some n: the fits would tie there, and a
        # curve tied at an n has no CI (rates.tied), so no verdict beyond inconclusive
        outlook = INCONCLUSIVE
        notes.append("no CI predicted: the normal limit's spread is zero or undefined at some n")
    elif not half < CI_HALF_WIDTH_MAX:  # NaN (no prediction) is neither
        outlook = INCONCLUSIVE if math.isfinite(half) else MEASURABLE_IF
    else:
        outlook = BORDERLINE if not half * CI_MARGIN < CI_HALF_WIDTH_MAX else MEASURABLE_IF
    if outlook in (INCONCLUSIVE, BORDERLINE) and math.isfinite(half):
        notes.append(f"CI ±{half:.3f} predicted with {reps} replications; "
                     + (f"{advised} keep it under {CI_HALF_WIDTH_MAX} with a margin of "
                        f"{CI_MARGIN}" if advised else f"more than {REPS_MAX} needed"))
    return {
        "setting": setting.name, "fit_gate": gate, "loss_name": loss, "reference": cert.kind,
        "reference_status": cert.status, "theory_exponent": theory.exponent,
        "theory_label": theory.label, "n_min": n_min, "n_max": n_max,
        "n_points": len(config.n), "reps": reps, "n_from": n_from, "n_to": n_to,
        "identified": identified, "overfit_n": overfit_n, "limit_slope": slope,
        "limit_half_width": half, "reps_advised": advised, "outlook": outlook,
        "reasons": "; ".join(blockers + notes),
    }


def preflight(config: SweepConfig, out: str | Path, *, device: str = "cpu",
              backend: str = "auto", force: bool = False,
              log: Callable[[str], None] = lambda msg: None) -> pd.DataFrame:
    """The preflight table of ``config`` (:data:`PREFLIGHT_COLUMNS`), its references and their
    certificates computed into ``out`` as the sweep computes them (which a sweep into ``out``
    then reuses), the table written there as ``preflight.txt``, ``.csv`` and ``.json``.
    ``force``: as the sweep's (another config's outputs in ``out`` are set aside)."""
    out = Path(out)
    make_folder(out)
    write_manifest(out, config, force=force, log=log)
    prepare_references(config, out, device=device, backend=backend, log=log, force=force)
    table = folder_outlook(out, config, device=device)
    write_table(out, table, format_preflight(table, config), name=PREFLIGHT_TABLE)
    return table


def outlook_table(config: SweepConfig, certs: dict[tuple[str, str], ReferenceCertificate],
                  refs: dict[tuple[str, str], MixingMeasure], *, device: str = "cpu"
                  ) -> pd.DataFrame:
    """The preflight table of ``config`` from its reference certificates ``certs`` and the
    references ``refs`` they certify. A passing certificate whose overlay predates its spread
    (before 2026-12-05) has its normal limit computed again about the reference, on the
    certificate's design: no refit, seconds."""
    rows = []
    for setting in config.setting_objects():
        for gate in config.gates_for(setting):
            cert, losses = certs[setting.name, gate], plotted_losses(config, setting, gate)
            limits: dict = {}
            if any("sd" not in cert.overlay[loss] for loss in losses if loss in cert.overlay):
                limits = normal_limit(setting, gate, refs[setting.name, gate], config.n,
                                      [loss for loss in losses if loss in cert.overlay],
                                      design_size=cert.design_size, device=device)
            rows += [curve_outlook(config, setting, gate, loss, cert, limits.get(loss))
                     for loss in losses]
    return pd.DataFrame(rows, columns=list(PREFLIGHT_COLUMNS))


def folder_outlook(folder: str | Path, config: SweepConfig | None = None, *,
                   device: str = "cpu") -> pd.DataFrame:
    """The preflight table of a sweep folder that holds its reference certificates, read from
    them and the references its manifest records (nothing fitted): what the preflight says
    before a sweep once its references are ready, or would have said before a finished one, to
    set beside its verdicts. ``config``: the folder's (default: read from its manifest)."""
    folder = Path(folder)
    config = config if config is not None else read_manifest_config(folder)
    return outlook_table(config, load_reference_certificates(folder),
                         folder_references(folder, config), device=device)


def _n(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"


def format_preflight(table: pd.DataFrame, config: SweepConfig) -> str:
    """The preflight table as text: one line per curve, its reasons below."""
    gates = sorted(set(table["fit_gate"]))
    reps = ", ".join(f"{g} {config.reps_of(g)}" for g in gates)
    header = ["setting", "fit", "loss", "ref", "theory", "n allowed by ref", "limit slope",
              "CI ± (limit)", "reps (advised)", "outlook"]
    lines = [header]
    for _, r in table.iterrows():
        theory = ("-" if pd.isna(r["theory_exponent"])
                  else f"{r['theory_exponent']:+.2f} ({r['theory_label']})")
        lines.append([
            str(r["setting"]), str(r["fit_gate"]), str(r["loss_name"]),
            f"{r['reference']} {r['reference_status']}", theory,
            f"{_n(r['n_from'])}..{_n(r['n_to'])}",
            "-" if pd.isna(r["limit_slope"]) else f"{r['limit_slope']:+.2f}",
            "-" if pd.isna(r["limit_half_width"]) else f"{r['limit_half_width']:.3f}",
            f"{r['reps']} ({'-' if pd.isna(r['reps_advised']) else int(r['reps_advised'])})",
            str(r["outlook"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text = [f"preflight of {config.name}: n = {min(config.n)}..{max(config.n)} "
            f"({len(config.n)} sizes), replications: {reps}", "", *text, "",
            f"limit: the reference's local normal limit (its certificate's overlay): the slope "
            f"of its mean loss and the CI half-width its spread predicts (a verdict needs "
            f"< {CI_HALF_WIDTH_MAX}; measured curves have run up to {CI_MARGIN}x wider); reps "
            "advised: for that margin. 'measurable if the fits pass': the converged, optimiser "
            "and over-fit certificates, which only the fits can tell"]
    noted = [r for _, r in table.iterrows() if r["reasons"]]
    if noted:
        text += ["", "reasons:"]
        for r in noted:
            text += [f"  {r['setting']} / {r['fit_gate']} / {r['loss_name']}:",
                     f"    {r['reasons']}"]
    return "\n".join(text)
