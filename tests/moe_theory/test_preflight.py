"""The preflight (docs/theory.md#planning): what stands in a curve's way before its sweep runs,
read from the reference certificate and the CI its normal limit predicts."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_theory import preflight, settings
from moe_theory.certificates import (
    DESIGN_ERROR_RATIO_MAX,
    ERROR_RATIO_MAX,
    FISHER_COND_MAX,
    RESTART_RATIO_MAX,
    FolderCertificates,
    ReferenceCertificate,
    allowed_n,
    fixed_failure,
)
from moe_theory.cli import main
from moe_theory.config import parse_config
from moe_theory.preflight import (
    BORDERLINE,
    CI_MARGIN,
    INCONCLUSIVE,
    MEASURABLE_IF,
    NOT_MEASURABLE,
    curve_outlook,
    reps_advised,
)
from moe_theory.rates import CI_HALF_WIDTH_MAX, fit_rate, predicted_half_width, rates_table
from moe_theory.settings import get_setting
from moe_theory.sweep import run_sweep
from tests.moe_theory.test_certificates import REGULAR

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION = ROOT / "paper_figures" / "preflight_calibration.json"
GRID = [1000, 2000, 4000, 8000]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(settings._SETTINGS, REGULAR.name, REGULAR)


def certificate(**changes) -> ReferenceCertificate:
    """A passing G_bar certificate of the REGULAR setting on GRID, its overlay of D3 with mean
    1/sqrt(n) and a relative spread of 0.15, the rest as ``changes`` say."""
    n = np.array(GRID, dtype=float)
    base = ReferenceCertificate(
        setting=REGULAR.name, fit_gate="sigmoid", kind="G_bar", model={}, p=10, noise_var=1e-4,
        design_size=1000, n_min=GRID[0], n_max=GRID[-1], fisher_min_eig=1.0, fisher_cond=10.0,
        hessian_min_eig=1.0, covariance="sandwich", error_scale=0.1, min_atom_distance=2.0,
        misspecification=0.0, misspecification_scale=1.0, design_error_ratio=0.1,
        restarts={"spread": 0.001, "better": 0}, restart_tolerance=0.01,
        overlay={"D3": {"n": GRID, "mean": list(n ** -0.5), "median": list(n ** -0.5),
                        "sd": list(0.15 * n ** -0.5)}})
    return dataclasses.replace(base, **changes)


def config(**changes):
    raw = {"name": "pre", "settings": [REGULAR.name], "n": GRID, "reps": 20,
           "fit_gates": ["sigmoid"], **changes}
    return parse_config(raw)


# ---- the CI a normal limit predicts ------------------------------------------------------------

def test_predicted_half_width_is_the_t_interval_of_the_delta_method():
    """With the same relative spread s at every n, Var(slope) = sum_j c_j^2 s^2 / R with OLS
    weights c_j, and Welch-Satterthwaite's degrees of freedom (R - 1) (sum c_j^2)^2 / sum c_j^4."""
    from scipy.special import stdtrit
    n = np.array(GRID, dtype=float)
    x = np.log(n)
    weights = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    slope, half = predicted_half_width(n, n ** -0.5, 0.3 * n ** -0.5, 20)
    assert slope == pytest.approx(-0.5, abs=1e-12)
    df = 19 * (weights ** 2).sum() ** 2 / (weights ** 4).sum()
    want = stdtrit(df, 0.975) * math.sqrt((weights ** 2).sum() * 0.09 / 20)
    assert half == pytest.approx(want, rel=1e-12)
    # four times the replications: about half the width (the t quantile shrinks a little too)
    assert predicted_half_width(n, n ** -0.5, 0.3 * n ** -0.5, 80)[1] < half / 2
    assert math.isnan(predicted_half_width(n, n ** -0.5, 0.3 * n ** -0.5, 1)[1])
    assert math.isnan(predicted_half_width(n, n ** -0.5, np.full(4, np.nan), 20)[1])


def test_predicted_half_width_is_what_simulated_sweeps_measure():
    """Draws with that mean and spread (lognormal: positive, as losses are) measured by the
    rates' own bootstrap: over 200 simulated curves of 20 replications the median half-width is
    the prediction within 10% (the bootstrap's own spread of a half-width, about 20% with 20
    replications, shrinks to about 1.5% in the median of 200)."""
    n = np.array(GRID, dtype=float)
    rng = np.random.default_rng(0)
    s2 = math.log(1 + 0.3 ** 2)
    halves = []
    for _ in range(200):
        values = [np.exp(rng.normal(math.log(m) - s2 / 2, math.sqrt(s2), 20)) for m in n ** -0.5]
        fit = fit_rate(n, values, n_boot=400, seed=1)
        halves.append((fit.ci_high - fit.ci_low) / 2)
    predicted = predicted_half_width(n, n ** -0.5, 0.3 * n ** -0.5, 20)[1]
    assert np.median(halves) == pytest.approx(predicted, rel=0.1)


def test_reps_advised_is_the_fewest_that_keep_the_margin():
    entry = certificate().overlay["D3"]
    advised = reps_advised({**entry, "sd": list(np.array(entry["sd"]) * 3)}, 20)
    sd = np.array(entry["sd"]) * 3

    def half(r):
        return predicted_half_width(entry["n"], entry["mean"], sd, r)[1]

    assert half(advised) * CI_MARGIN < CI_HALF_WIDTH_MAX <= half(advised - 1) * CI_MARGIN
    assert reps_advised(entry, 20) == 20  # narrow already: as many as given
    assert reps_advised({**entry, "sd": list(np.array(entry["sd"]) * 1e4)}, 20) is None


def test_reps_advised_tries_the_cap_itself():
    """The doubling stepped from 81920 past REPS_MAX and gave up ("more than 100000"), though
    83129 replications keep the margin."""
    m = [1, 0.7, 0.5, 0.35]
    entry = {"n": [1e3, 2e3, 4e3, 8e3], "mean": m, "sd": [11.4 * x for x in m]}
    for start in (20, 25):
        advised = reps_advised(entry, start)
        assert advised is not None and advised <= preflight.REPS_MAX

        def half(r):
            return predicted_half_width(entry["n"], entry["mean"], entry["sd"], r)[1]

        assert half(advised) * CI_MARGIN < CI_HALF_WIDTH_MAX <= half(advised - 1) * CI_MARGIN


def test_no_predicted_ci_is_no_promise():
    """A limit with zero spread at some n (the fits would tie there: no CI, so inconclusive), or
    one replication per n (no n enters a slope), read "measurable if the fits pass"."""
    for sd in ([0.0] * 4, [0.1, math.nan, math.nan, math.nan]):
        cert = certificate(overlay={"D3": {**certificate().overlay["D3"], "sd": sd}})
        row = curve_outlook(config(), REGULAR, "sigmoid", "D3", cert)
        assert row["outlook"] == INCONCLUSIVE and "no CI predicted" in row["reasons"]
    row = curve_outlook(config(reps=1, rep_block=1), REGULAR, "sigmoid", "D3", certificate())
    assert row["outlook"] == preflight.NOT_MEASURABLE
    assert "1 replication(s) per n < 2" in row["reasons"]


# ---- the n a reference allows ------------------------------------------------------------------

def test_allowed_n_is_where_each_criterion_of_the_certificate_holds():
    """Each compared error scales as n^-1/2: the predicted error passes from the n where it is
    ERROR_RATIO_MAX atom distances, the design error and the refits' spread up to where they
    reach their bounds."""
    cert = certificate(error_scale=1.0, min_atom_distance=2.0, design_error_ratio=0.6,
                       restarts={"spread": 0.02, "better": 0}, restart_tolerance=0.01)
    n_from, n_to = allowed_n(cert)
    assert n_from == pytest.approx(GRID[0] * (0.5 / ERROR_RATIO_MAX) ** 2)
    by_design = GRID[-1] * (DESIGN_ERROR_RATIO_MAX / 0.6) ** 2
    by_spread = GRID[-1] * (0.01 / 0.02) ** 2
    assert n_to == pytest.approx(min(by_design, by_spread))
    # at n_from the predicted error is the bound itself
    assert cert.error_scale * math.sqrt(GRID[0] / n_from) == pytest.approx(
        ERROR_RATIO_MAX * cert.min_atom_distance)
    # where the certificate did not get to the design or the refits: no upper end
    assert allowed_n(certificate(design_error_ratio=None, restarts=None))[1] == math.inf
    assert RESTART_RATIO_MAX > 0  # the tolerance it scales is RESTART_RATIO_MAX x D3


def test_fixed_failures_are_those_no_n_mends():
    assert fixed_failure(certificate()) is None
    assert "Fisher condition" in fixed_failure(certificate(fisher_cond=10 * FISHER_COND_MAX))
    assert "Hessian" in fixed_failure(certificate(hessian_min_eig=-1.0))
    assert "lower population loss" in fixed_failure(
        certificate(restarts={"spread": 0.0, "better": 2}))
    assert fixed_failure(certificate(error_scale=100.0)) is None  # larger n mends this one


# ---- a curve's outlook -------------------------------------------------------------------------

def test_a_curve_with_a_narrow_predicted_ci_is_measurable_if_its_fits_pass():
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", certificate())
    assert row["outlook"] == MEASURABLE_IF and row["reference_status"] == "pass"
    assert row["limit_slope"] == pytest.approx(-0.5) and row["limit_half_width"] < 0.05
    assert row["reps_advised"] == 20 and row["overfit_n"] == 4 and row["reasons"] == ""


def test_a_wide_predicted_ci_is_inconclusive_and_says_how_many_replications():
    sd = list(0.6 * np.array(GRID, dtype=float) ** -0.5)
    cert = certificate(overlay={"D3": {**certificate().overlay["D3"], "sd": sd}})
    row = curve_outlook(config(reps=4), REGULAR, "sigmoid", "D3", cert)
    assert row["outlook"] == INCONCLUSIVE and row["limit_half_width"] >= CI_HALF_WIDTH_MAX
    assert row["reps_advised"] > 4 and f"{row['reps_advised']} keep it" in row["reasons"]
    # with the advised replications: narrow, with the margin
    again = curve_outlook(config(reps=row["reps_advised"]), REGULAR, "sigmoid", "D3", cert)
    assert again["outlook"] == MEASURABLE_IF
    # just under the bound but within the margin: borderline
    for reps in range(4, row["reps_advised"]):
        r = curve_outlook(config(reps=reps), REGULAR, "sigmoid", "D3", cert)
        if r["limit_half_width"] < CI_HALF_WIDTH_MAX:
            assert r["outlook"] == BORDERLINE
            break
    else:
        pytest.fail("no replication count between inconclusive and measurable")


def test_a_failed_reference_rules_the_curve_out_and_says_which_n_would_pass():
    cert = certificate(status="fail", error_scale=2.0, reasons=["predicted parameter error"])
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", cert)
    assert row["outlook"] == NOT_MEASURABLE
    assert f"passes from n >= {GRID[0] * (1.0 / ERROR_RATIO_MAX) ** 2:.3g}" in row["reasons"]
    fixed = certificate(status="fail", fisher_cond=1e12, reasons=["Fisher"])
    assert "no range of n mends it" in curve_outlook(config(), REGULAR, "sigmoid", "D3",
                                                     fixed)["reasons"]
    # a window the criteria leave empty
    empty = certificate(status="fail", error_scale=2.0, design_error_ratio=1.0, reasons=["x"])
    assert "no n passes" in curve_outlook(config(), REGULAR, "sigmoid", "D3", empty)["reasons"]


def test_an_unidentified_loss_is_ruled_out_only_above_the_atoms_distance():
    """The reference fails a curve whose smallest median is under 1/UNIDENTIFIED_SHARE times
    the value a measure indistinguishable from G* reaches; before the fits that median is
    unknown, so the preflight rules the curve out only where that floor exceeds the atoms'
    distance (no median above it resolves the atoms)."""
    far = certificate(unidentified={"D3": {"value": 5.0, "reason": "r"}},
                      identified_tested=["D3"])
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", far)
    assert row["outlook"] == NOT_MEASURABLE and row["identified"] is False
    near = dataclasses.replace(far, unidentified={"D3": {"value": 1e-4, "reason": "r"}})
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", near)
    assert row["outlook"] == MEASURABLE_IF and "below medians of 0.001" in row["reasons"]


def test_a_curve_without_a_theory_rate_is_judged_as_the_others():
    """As the verdicts: a curve without an exponent that something blocks is not measurable
    (its slope would be printed, and "no theory" read as a rate measured); with nothing in its
    way it is "no theory" (D3 against G*, the reference of a well-specified fit, has no
    exponent in the theory table: D3 is the misspecified fit's loss, against G_bar)."""
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3",
                        certificate(status="fail", fisher_cond=1e12, reasons=["x"], kind="G*"))
    assert row["theory_exponent"] is None and row["outlook"] == NOT_MEASURABLE
    assert "no range of n mends it" in row["reasons"]
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", certificate(kind="G*"))
    assert row["theory_exponent"] is None and row["outlook"] == preflight.NO_THEORY


def test_too_few_sample_sizes_or_too_small_n_rule_the_curve_out():
    row = curve_outlook(config(n=GRID[:3]), REGULAR, "sigmoid", "D3", certificate())
    assert row["outlook"] == NOT_MEASURABLE and "3 sample sizes < 4" in row["reasons"]
    small = config(n=[20, 40, 60, 80])  # REGULAR's sigmoid fit has 2 x 3 + 2 x 3 = 12 parameters
    row = curve_outlook(small, REGULAR, "sigmoid", "D3", certificate())
    assert row["outlook"] == NOT_MEASURABLE and "over-fit certificate cannot run" in row["reasons"]


def test_a_given_limit_is_read_before_the_certificates_overlay():
    cert = certificate()
    wide = {**cert.overlay["D3"], "sd": list(np.array(cert.overlay["D3"]["sd"]) * 4)}
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", cert, wide)
    assert row["outlook"] == INCONCLUSIVE


# ---- the command, then the sweep in its folder -------------------------------------------------

@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_THEORY_CACHE", str(tmp_path / "gbar-cache"))


def test_preflight_then_the_sweep_reuses_its_certificates_and_meets_its_prediction(
        tmp_path, cache, capsys):
    """The command writes the table and the certificates into the sweep's folder; the sweep
    reuses the certificate (the same bytes), and its measured D3 CI is the predicted one within
    a factor 2: 6 replications estimate a spread to about 30%, and the slope pools four n (the
    factor is above three of those standard errors)."""
    raw = {"name": "pre", "settings": [REGULAR.name], "n": [500, 1000, 2000, 4000], "reps": 6,
           "fit_gates": ["sigmoid"]}
    path = tmp_path / "pre.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in raw.items()) + "\n")
    out = tmp_path / "run"
    assert main(["preflight", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preflight of pre" in printed and "measurable if the fits pass" in printed
    table = pd.read_json(out / "preflight.json")
    d3 = table[table.loss_name == "D3"].iloc[0]
    assert d3.reference == "G_bar" and d3.reference_status == "pass"
    assert d3.limit_slope == pytest.approx(-0.5, abs=0.02)
    cert_path = next((out / "certificates").glob("*.json"))
    before = cert_path.read_bytes()
    df = run_sweep(parse_config(raw), out, log=lambda msg: None)
    assert cert_path.read_bytes() == before
    measured = rates_table(df, certificates=FolderCertificates.load(out)).query(
        "loss_name == 'D3'").iloc[0]
    assert 0.5 < measured.ci_half_width / d3.limit_half_width < 2.0
    # a config that is not the folder's is refused, as the sweep refuses it
    with pytest.raises(ValueError, match="another config"):
        preflight.preflight(parse_config({**raw, "reps": 7}), out)


def test_reproduce_says_the_outlook_before_the_fits(tmp_path, cache, capsys):
    """A run prints, once its references are ready and before its first shard, each plotted
    curve's outlook: a long run says early what it cannot measure (docs/theory.md#planning)."""
    raw = {"name": "pre", "settings": [REGULAR.name], "n": [500, 1000, 2000, 4000], "reps": 4,
           "fit_gates": ["sigmoid"]}
    path = tmp_path / "pre.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in raw.items()) + "\n")
    assert main(["reproduce", str(path), "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().err.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("preflight, from the "))
    first_fit = next(i for i, line in enumerate(lines) if " done on " in line)
    assert head < first_fit
    outlook = preflight.folder_outlook(tmp_path / "run")
    assert len(outlook) >= 1
    for offset, row in enumerate(outlook.itertuples(), start=1):
        assert lines[head + offset].startswith(
            f"  {row.setting} / {row.fit_gate} / {row.loss_name}: {row.outlook}")


def test_the_default_preflight_is_the_default_preset(monkeypatch):
    """No name: the config `moe-theory reproduce` runs without one, with --fast."""
    seen = {}

    def fake(config, out, **kwargs):
        seen.update(config=config, out=out)
        return pd.DataFrame(columns=list(preflight.PREFLIGHT_COLUMNS))

    monkeypatch.setattr(preflight, "preflight", fake)
    monkeypatch.setattr(preflight, "format_preflight", lambda table, config: "")
    assert main(["preflight"]) == 0
    assert seen["config"].name == "nguyen2024-measurable" and seen["out"] == Path(
        "results/nguyen2024-measurable-fast")
    assert seen["config"].reps == 60  # the [fast] preset's


# ---- the margin, against every certified curve ------------------------------------------------

def test_ci_margin_covers_every_certified_curve_of_the_repository():
    """paper_figures/preflight_calibration.json: the measured over the predicted half-width of
    the 45 certified curves; CI_MARGIN must cover the largest, and the limit must be unbiased
    (median ratio within 10% of 1: 45 ratios whose spread is ~0.2 put the median within ~0.04)."""
    table = pd.read_json(CALIBRATION)
    assert len(table) == 45 and table.ratio.max() <= CI_MARGIN
    assert abs(table.ratio.median() - 1) < 0.1
    np.testing.assert_allclose(table.ratio, table.measured_half_width / table.predicted_half_width,
                               rtol=1e-12)


def test_the_calibration_table_is_what_the_script_computes():
    """One folder's rows recomputed (seconds): the committed predictions are the code's."""
    sys.path.insert(0, str(ROOT / "paper_figures"))
    try:
        import preflight_calibration as calib
    finally:
        sys.path.pop(0)
    committed = pd.read_json(CALIBRATION)
    target = ROOT / "paper_figures" / "nguyen2024-measurable" / "gelu_d4_sigmoid_40"
    calib_folders = calib.folders
    try:
        calib.folders = lambda: [target]
        again = calib.calibration()
    finally:
        calib.folders = calib_folders
    mine = committed[committed.folder == "nguyen2024-measurable/gelu_d4_sigmoid_40"]
    assert len(again) == len(mine) == 3
    np.testing.assert_allclose(again.predicted_half_width.to_numpy(),
                               mine.predicted_half_width.to_numpy(), rtol=1e-9)
    assert get_setting(again.setting.iloc[0]).d == 4


def test_an_unknown_config_exits_2_naming_it_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["preflight", "no-such-config", "--out", str(out)]) == 2
    assert "config" in capsys.readouterr().err
    assert not out.exists()


# ---- what the preflight would have said before every committed sweep -------------------------

OUTLOOKS = ROOT / "paper_figures" / "preflight_outlooks.json"


def test_the_preflight_never_rules_out_a_curve_a_committed_sweep_certified():
    """paper_figures/preflight_outlooks.json: every plotted curve of the committed folders with
    reference certificates. A curve the preflight calls not measurable before any fit got no
    verdict from its sweep either, and every verdict the sweeps gave is on a curve it let
    through; it rules many out (the docs quote the counts)."""
    table = pd.read_json(OUTLOOKS)
    kinds = table.verdict.str.split(" (", regex=False).str[0]
    ruled_out = table.outlook == NOT_MEASURABLE
    assert (kinds[ruled_out] == "not measurable").all()
    assert len(table) == 146 and table.folder.nunique() == 33
    assert ruled_out.sum() == 87 and (kinds == "consistent").sum() == 13


def test_the_outlooks_are_what_the_preflight_reads_from_a_folder():
    """One folder's rows recomputed from its certificates (no fit: seconds)."""
    from moe_theory.preflight import folder_outlook
    committed = pd.read_json(OUTLOOKS)
    name = "nguyen2024-measurable/gelu_d4_box3"
    mine = committed[committed.folder == name].reset_index(drop=True)
    again = folder_outlook(ROOT / "paper_figures" / name)
    assert list(again.outlook) == list(mine.outlook) and len(again) == 4
    np.testing.assert_allclose(again.limit_half_width.to_numpy(dtype=float),
                               mine.limit_half_width.to_numpy(dtype=float), rtol=1e-9)
