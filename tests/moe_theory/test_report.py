"""The verdict report: one row per curve with the rates table's verdict, figures, HTML, errors."""

from __future__ import annotations

import base64
import json
import re

import matplotlib.image
import pytest
import torch

from moe_theory import report as report_module
from moe_theory import settings
from moe_theory.certificates import FolderCertificates, write_reference_certificate
from moe_theory.cli import main
from moe_theory.config import load_config, parse_config
from moe_theory.layout import CHECK_FILE
from moe_theory.rates import rates_table
from moe_theory.report import (
    REPORT_HTML,
    REPORT_MD,
    build_report,
    curves_figure_panels,
    make_report,
)
from moe_theory.settings import Setting
from moe_theory.store import write_manifest
from moe_theory.sublevel import format_ratio
from moe_theory.sweep import run_sweep
from tests.moe_theory.test_rates import gap_rates, passing_certificates, results_table

#: The report's own sparse ReLU setting (the CPU preset's settings may change): a sigmoid truth in
#: d = 2 with k* = 2 hand-picked atoms, constant gates, fitted with k = 3 (N24 Thm 2).
SPARSE = Setting(
    name="report-sparse-relu", truth_gate="sigmoid", score="linear", expert="relu", d=2,
    k_true=2, k_fit=3, regime="sparse", beta0_sd=0.0, beta1_sd=1.0, expert_sd=0.0,
    atoms=((0.4, 1.0, -0.5, 1.0, 0.5, 0.2), (-0.2, -0.5, 1.0, -0.8, 1.2, -0.1)),
    description="test: sigmoid truth, constant gates, ReLU experts")
SMALL_SWEEP = {
    "name": "report-small", "settings": [SPARSE.name], "n": [300, 600, 1200], "reps": 3,
    "fit_gates": ["sigmoid"],
}
# A sigmoid fit of SPARSE (N24 Thm 2): D1 and the exact-cell errors ~ n^-1/2, the
# over-specified ones ~ n^-1/4. The synthetic D1 decays as n^-0.05 instead, far outside any CI.
SYNTHETIC_CURVES = {("sigmoid", "D1"): -0.05, ("sigmoid", "err_eta_exact"): -0.5,
                    ("sigmoid", "err_eta_over"): -0.25}
SYNTHETIC_VERDICTS = {"D1": "inconsistent", "err_eta_exact": "consistent",
                      "err_eta_over": "consistent"}


@pytest.fixture(scope="module", autouse=True)
def registered():
    """SPARSE in the registry for this module only (other tests count the settings)."""
    mp = pytest.MonkeyPatch()
    mp.setitem(settings._SETTINGS, SPARSE.name, SPARSE)
    yield
    mp.undo()


def curve_tables(markdown: str) -> list[list[list[str]]]:
    """Data rows of each per-curve table after '## Curves' (plotted curves, then the others)."""
    section = markdown.split("## Curves", 1)[1].split("\n## ", 1)[0]
    tables, lines = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            tables.append([[cell.strip() for cell in row.strip("|").split("|")]
                           for row in lines[2:]])
            lines = []
    return tables


def curve_table(markdown: str) -> list[list[str]]:
    """Data rows of the report's per-curve tables, one list."""
    return [row for table in curve_tables(markdown) for row in table]


def as_small_sparse_relu(df, config_hash):
    """Relabel a synthetic table as sigmoid fits of ``SPARSE`` (theory N24 Thm 2)."""
    return df.assign(setting=SPARSE.name, truth_gate="sigmoid", regime="sparse", d=2,
                     k_true=2, k_fit=3, reference="G*", algorithm="lm", config_hash=config_hash)


def check_figure(path):
    assert path.exists() and path.stat().st_size > 0
    assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    image = matplotlib.image.imread(path)
    assert image[..., :3].std() > 0.05  # something was drawn on the white background


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """A real sweep's folder, its results and what ``make_report(html=True)`` wrote there."""
    out = tmp_path_factory.mktemp("sweep")
    # d = 2, n <= 1200: one intra-op thread is the quickest, and on a shared CI box more OpenMP
    # threads spin against other jobs (the sweep took 16 s with two threads, 1 s with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        df = run_sweep(parse_config(SMALL_SWEEP), out, log=lambda msg: None)
    finally:
        torch.set_num_threads(threads)
    return out, df, make_report(out, html=True)


#: the synthetic folder's config is nowhere in simulations/configs/: its figure is titled by this
SYNTHETIC_DESCRIPTION = "A synthetic sweep, D1 decaying too slowly"


def write_synthetic(folder, certify=True, edit=None):
    """A results folder whose D1 decays as n^-0.05 (theory: n^-1/2), with its manifest and,
    with ``certify``, passing certificates (a reference certificate and an optimiser check);
    ``edit`` changes the results table before it is written."""
    config = parse_config({"name": "synthetic", "settings": [SPARSE.name],
                           "n": [1000, 100000], "reps": 20, "fit_gates": ["sigmoid"],
                           "description": SYNTHETIC_DESCRIPTION})
    write_manifest(folder, config)
    df = as_small_sparse_relu(results_table(SYNTHETIC_CURVES), config.hash)
    if edit is not None:
        df = edit(df)
    df.to_csv(folder / "results.csv", index=False)
    if certify:
        certs = passing_certificates(df)
        for cert in certs.reference.values():
            write_reference_certificate(folder, cert)
        (folder / CHECK_FILE).write_text(json.dumps(certs.check))
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = write_synthetic(tmp_path_factory.mktemp("synthetic"))
    make_report(folder, html=True)
    return folder


def test_small_sweep_report_has_one_row_per_curve_with_its_verdict(small_sweep):
    out, df, paths = small_sweep
    assert paths[:2] == [out / REPORT_MD, out / REPORT_HTML]
    rows = curve_table((out / REPORT_MD).read_text())
    expected = rates_table(df)
    assert len(rows) == len(expected) == df.groupby(["setting", "fit_gate", "loss_name"]).ngroups
    got = {(r[0], r[1], r[2]): r[10] for r in rows}
    expected = rates_table(df, certificates=FolderCertificates.load(out))
    want = {(r.setting, r.fit_gate, r.loss_name): r.verdict for r in expected.itertuples()}
    assert got == want
    # a sweep computes its reference certificates; the optimiser check is a separate step.
    # (SPARSE's constant gates let a ReLU expert's scale trade with its weight:
    # the truth's own model is singular, and its certificate says so)
    assert all(r[11] == "FAIL" for r in rows)
    assert "Optimiser check: not run" in (out / REPORT_MD).read_text()
    # D2 has no prediction in the theory table, but its slope is judged as the others' up to
    # that comparison: not measurable here; D1 of a sigmoid ReLU fit is n^-1/2 (N24 Thm 2)
    assert got[SPARSE.name, "sigmoid", "D2"] == got[SPARSE.name, "sigmoid", "D1"]
    assert got[SPARSE.name, "sigmoid", "D2"].startswith("not measurable (")
    assert next(r for r in rows if r[2] == "D2")[8] == "-"  # no exponent printed
    d1 = next(r for r in rows if r[2] == "D1")
    assert d1[8].startswith("-0.50") and d1[9] == "N24 Thm 2"
    assert d1[16] == "100%" and d1[19] == "cpu (torch)"  # certified share, device
    # the sublevel reading: the largest ratio, then loose data sets / data sets with a ratio
    row = expected[(expected.fit_gate == "sigmoid") & (expected.loss_name == "D1")].iloc[0]
    assert d1[17] == (f"{format_ratio(row.sublevel_max)} ({int(row.sublevel_loose)} / "
                      f"{int(row.sublevel_data_sets)})")


def test_small_sweep_report_figures_are_written_and_embedded(small_sweep):
    out, _, paths = small_sweep
    assert [p.name for p in paths[2:]] == ["report-small.png", "report-small.pdf",
                                           "report-small-curves.png", "report-small-curves.pdf"]
    for png in paths[2::2]:
        check_figure(png)
    page = (out / REPORT_HTML).read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [p.read_bytes() for p in paths[2::2]]
    markdown = (out / REPORT_MD).read_text()
    assert "(report-small.png)" in markdown and "(report-small-curves.png)" in markdown


def test_slow_decay_against_parametric_theory_is_inconsistent(synthetic):
    markdown = (synthetic / REPORT_MD).read_text()
    rows = curve_table(markdown)
    assert {r[2]: r[10] for r in rows} == SYNTHETIC_VERDICTS
    d1 = next(r for r in rows if r[2] == "D1")
    assert float(d1[3].split()[0]) == pytest.approx(-0.05, abs=0.03)
    assert d1[8].startswith("-0.50")
    # results_table makes rep 0 of every n uncertified and rep 1 unconverged: 19 of 20 fits,
    # which the certificates allow
    assert d1[16] == "95%" and d1[11:15] == ["pass"] * 4
    assert d1[3].endswith(f"± {float(d1[3].split()[-1]):.2f}") and "slope (± 95% CI)" in markdown
    assert f"rather than rates: {SPARSE.name} / sigmoid (9 of 180)." in markdown
    assert "1 inconsistent" in markdown and "2 consistent" in markdown
    assert "## Certificates" in markdown and "Optimiser check: 0 replication" not in markdown


def test_without_certificates_the_report_says_not_measurable(tmp_path):
    folder = write_synthetic(tmp_path, certify=False)
    markdown = (make_report(folder)[0]).read_text()
    rows = curve_table(markdown)
    assert {r[10] for r in rows} == {"not measurable (reference, optimiser not run)"}
    assert "No reference certificates in this folder" in markdown
    assert "## Notes" in markdown and "reference: not run" in markdown


def test_the_figures_read_every_row_the_table_reads(tmp_path, monkeypatch):
    """Two fits at the first n stop at the iteration cap with their over-specified error
    undefined (NaN): they still count in that curve's converged certificate, so the table calls
    the curve not measurable, and the report's figures must be drawn from the same rows, or
    their legend would call it certified and consistent."""
    def capped(df):
        fits = df["n"].eq(df["n"].min()) & df["rep"].isin([2, 3])
        undefined = fits & df["loss_name"].eq("err_eta_over")
        return df.assign(loss_value=df["loss_value"].mask(undefined),
                         converged=df["converged"] & ~fits)

    folder = write_synthetic(tmp_path, edit=capped)
    drawn = []
    real = report_module.plot_panels

    def spy(df, *args, **kwargs):
        drawn.append(df)
        return real(df, *args, **kwargs)

    monkeypatch.setattr(report_module, "plot_panels", spy)
    report = build_report(folder)
    verdicts = report.rates.set_index("loss_name")["verdict"]
    assert verdicts["err_eta_over"] == "not measurable (converged failed)"
    assert drawn and all(len(df) == len(report.results) for df in drawn)
    for df in drawn:
        again = rates_table(df, certificates=report.certificates).set_index("loss_name")
        assert again["verdict"].to_dict() == verdicts.to_dict()


def test_inconsistent_verdict_is_flagged_in_html(synthetic):
    page = (synthetic / REPORT_HTML).read_text()
    assert page.count('<td class="inconsistent">inconsistent</td>') == 1
    assert page.count('<td class="consistent">consistent</td>') == 2


def test_config_found_by_hash_without_manifest(tmp_path):
    config = load_config("nguyen2024", fast=True)
    as_small_sparse_relu(results_table({("sigmoid", "D1"): -0.5}), config.hash).to_csv(
        tmp_path / "results.csv", index=False)
    report = build_report(tmp_path)
    assert report.config.hash == config.hash
    assert report.config_source == "simulations/configs/nguyen2024.toml --fast"


def test_a_manifest_takes_its_plot_from_the_named_config_of_its_hash(tmp_path):
    """The plot keys do not change the results: a committed folder's figure follows the config
    file as it is now, but only where the hash says the results are that config's."""
    config = load_config("nguyen2024", fast=True)
    as_small_sparse_relu(results_table({("sigmoid", "D1"): -0.5}), config.hash).to_csv(
        tmp_path / "results.csv", index=False)
    stale = {**config.to_dict(), "plot": {"softmax": "D2"}, "description": "old words"}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": stale}))
    report = build_report(tmp_path)
    assert report.config_source == "manifest.json"
    assert report.config.plot == config.plot and report.config.description == config.description
    other = {**stale, "reps": config.reps + 1}  # another config's results: its own plot kept
    (tmp_path / "manifest.json").write_text(json.dumps({"config": other}))
    assert build_report(tmp_path).config.plot == {"softmax": "D2"}


def test_cli_report(tmp_path, capsys):
    folder = write_synthetic(tmp_path)
    assert main(["report", str(folder)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(folder / name) for name in (REPORT_MD, "synthetic.png", "synthetic.pdf",
                                                        "synthetic-curves.png",
                                                        "synthetic-curves.pdf")]


@pytest.mark.parametrize("results, manifest, message", [
    (False, None, "has no results"),
    (False, {"config": {}}, "has no results"),
    (True, None, "matches no named config"),
    (True, {"no": "config"}, "not a sweep manifest"),
], ids=["empty", "manifest only", "unknown config", "bad manifest"])
def test_bad_folder_exits_2_naming_dir(tmp_path, capsys, results, manifest, message):
    if results:
        as_small_sparse_relu(results_table({("sigmoid", "D1"): -0.5}), "unknown").to_csv(
            tmp_path / "results.csv", index=False)
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "DIR:" in err and message in err


def test_bad_run_json_exits_2_naming_dir(tmp_path, capsys):
    (write_synthetic(tmp_path) / "run.json").write_text("{device")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "DIR:" in err and "run.json is not valid JSON" in err


@pytest.mark.parametrize("record, said", [
    ({"wall_s_this_call": 68.04}, "took 68.0 s wall time (from the call)"),
    ({"wall_s_process": 12.5, "g_bar_wall_s": 10.0}, "took 12.5 s wall time (the process)"),
    ({"sweep_wall_s": 40.0, "fit_wall_s": 30.0}, "took 40.0 s wall time (the sweep)"),
    ({}, "the run on NVIDIA H200")])
def test_the_report_gives_the_runs_wall_time_whichever_the_record_wrote(tmp_path, record, said):
    """Five committed run records time the run under another key than wall_s_this_call: their
    reports said "the run took nan s wall time"."""
    folder = write_synthetic(tmp_path)
    (folder / "run.json").write_text(json.dumps({**record, "device_name": "NVIDIA H200",
                                                 "torch": "2.11"}))
    text = (make_report(folder) and (folder / "report.md").read_text())
    assert said in text and "nan s" not in text


def test_plotted_curves_are_listed_first_the_rest_below(small_sweep, synthetic):
    # no [plot] table: the sigmoid fit is drawn with the first of D3, D1 it has (D1: against G*)
    for folder in (small_sweep[0], synthetic):
        markdown = (folder / REPORT_MD).read_text()
        plotted, others = curve_tables(markdown)
        assert [row[2] for row in plotted] == ["D1"]
        assert "D1" not in [row[2] for row in others] and len(others) >= 2
        name = "report-small" if folder == small_sweep[0] else "synthetic"
        assert f"Plotted in `{name}.png`:" in markdown


def test_curves_figure_titles_are_words(synthetic):
    report = build_report(synthetic)
    (panel,) = [p for p in curves_figure_panels(report.rates) if "Voronoi" in p[0]]
    title, setting, _ = panel
    assert setting == SPARSE.name and SPARSE.name not in title
    assert title.splitlines() == ["ReLU experts, linear score",
                                  "sparse sigmoid truth, d=2, k*=2, k=3",
                                  "sigmoid fit, Voronoi losses"]


def test_cli_plot_draws_with_the_folders_certificates(tmp_path, monkeypatch, capsys):
    """``moe-theory plot DIR`` draws the figure as reproduce and report do: with the folder's
    certificates (without them every curve would be drawn "not measurable")."""
    from moe_theory import outputs

    folder = write_synthetic(tmp_path)
    seen = {}
    real = outputs.plot_panels

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, "plot_panels", spy)
    assert main(["plot", str(folder)]) == 0
    stored = FolderCertificates.load(folder)
    assert seen["certificates"].check == stored.check and stored.check
    assert seen["title"] == SYNTHETIC_DESCRIPTION
    assert sorted(seen["certificates"].reference) == sorted(stored.reference)
    assert capsys.readouterr().out.split() == [str(folder / f"synthetic.{ext}")
                                                for ext in ("png", "pdf")]


def test_the_report_lists_the_gap_between_the_gates_with_both_intervals():
    """The report's gap table: per pair both slopes with their 95% intervals, the theory's two
    exponents, and the outcome as the rates table words it (here the sigmoid n^-1/2 against a
    softmax n^0, both certified: exhibited, with the range of the difference)."""
    from moe_theory.rates import GAP_EXHIBITED, gap_table
    from moe_theory.report import gap_rows

    table = gap_rates(0.0)
    header, rows = gap_rows(gap_table(table))
    assert header == ["setting", "sigmoid fit", "softmax fit", "theory", "gap"]
    sig = table[table.fit_gate.eq("sigmoid")].iloc[0]
    soft = table[table.loss_name.eq("err_eta_over")].iloc[0]
    assert rows == [["toy-dense",
                     f"D3 {sig['slope']:+.2f} [{sig['ci_low']:+.2f}, {sig['ci_high']:+.2f}]",
                     f"err_eta_over {soft['slope']:+.2f} [{soft['ci_low']:+.2f}, "
                     f"{soft['ci_high']:+.2f}]", "-0.50 vs -0.25",
                     f"{GAP_EXHIBITED} (softmax slope minus sigmoid slope in "
                     f"[{soft['ci_low'] - sig['ci_high']:+.2f}, {soft['ci_high'] - sig['ci_low']:+.2f}])"]]
