"""``moe-theory compare``: two folders of one config are the same where every value is, bit for
bit (or within ``--rtol``), whatever the rows' order, the timings and the columns one side adds;
a value off by one unit in the last place, or a missing row, is found and named, exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_theory import store
from moe_theory.cli import main
from moe_theory.compare import compare_folders, differs, same_values
from moe_theory.config import parse_config

TINY = {"name": "tiny-compare", "settings": ["small-sparse-relu"], "fit_gates": ["sigmoid"],
        "n": [100, 200], "reps": 2, "rep_block": 1}


def _folder(path: Path, config: dict = TINY) -> Path:
    """A finished folder's files, made by hand: a tidy table, its estimates, a check's refits
    and a rates table, with random values (so that a change of one bit is one of many)."""
    rng = np.random.default_rng(0)
    store.write_manifest(path, parse_config(config))
    rows = [{"setting": "small-sparse-relu", "fit_gate": "sigmoid", "loss_name": loss, "n": n,
             "rep": rep, "loss_value": rng.random() / 3, "converged": bool(rep),
             "stop_reason": "ftol", "wall_s": rng.random()}
            for loss in ("D1", "D3") for n in (100, 200) for rep in (0, 1)]
    table = pd.DataFrame(rows)
    table.loc[0, "loss_value"] = np.nan  # NaN equals NaN
    store.write_results_csv(path, table)
    fits = table.drop_duplicates(store.FIT_KEYS)[store.FIT_KEYS].assign(
        fit_measure=[json.dumps({"a": float(v)}) for v in rng.random(4)])
    store.write_fits(path, fits)
    table.assign(variant="jitter x10").to_parquet(path / "check.parquet")
    (path / "rates.json").write_text(json.dumps([
        {"setting": "small-sparse-relu", "fit_gate": "sigmoid", "loss_name": loss,
         "slope": -0.5 + i / 10, "verdict": "consistent"} for i, loss in enumerate(("D1", "D3"))]))
    return path


def test_the_same_run_is_the_same_whatever_order_timings_and_added_columns(tmp_path, capsys):
    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    table = pd.read_csv(b / "results.csv")
    # another order, other timings, a column the re-run records since: still the same run
    # and the code that ran, which a re-run by later code changes by design (here on both
    # sides, and on one side alone)
    table = table.iloc[::-1].assign(wall_s=table["wall_s"] * 2, sublevel_loss=1.0,
                                    code="0123456789ab")
    store.write_results_csv(b, table)
    check = pd.read_parquet(b / "check.parquet")
    check.assign(code="ba9876543210").to_parquet(b / "check.parquet")
    pd.read_parquet(a / "check.parquet").assign(code="0123456789ab").to_parquet(
        a / "check.parquet")
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "sublevel_loss: only in B" in out and out.rstrip().endswith("(bit for bit)")
    assert "wall_s" not in out.split("not compared")[1]
    assert "code" not in out.split("not compared")[1]
    result = compare_folders(a, b)
    assert sorted(result["table"].unique()) == ["check", "fits", "rates", "results"]
    assert not differs(result)


def test_one_unit_in_the_last_place_is_found_and_named(tmp_path, capsys):
    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    table = pd.read_csv(b / "results.csv")
    table.loc[3, "loss_value"] = np.nextafter(table.loc[3, "loss_value"], 1.0)
    store.write_results_csv(b, table)
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    key = "/".join(str(table.loc[3, k]) for k in store.SORT_KEYS)
    assert "loss_value: differs in 1 of 8 rows" in out and key in out
    assert out.rstrip().endswith("not the same")
    # within a relative tolerance it is the same
    assert main(["compare", str(a), str(b), "--rtol", "1e-12"]) == 0
    # a missing row: the rows differ
    store.write_results_csv(b, table.iloc[1:])
    result = compare_folders(a, b)
    head = result[(result["table"] == "results") & (result["column"] == "(rows)")].iloc[0]
    assert head["status"] == "differs" and head["example"].startswith("1 only in A")


def test_another_config_or_a_negative_tolerance_is_refused(tmp_path, capsys):
    a = _folder(tmp_path / "a")
    b = _folder(tmp_path / "b", {**TINY, "reps": 3})
    with pytest.raises(ValueError, match="B: .* another config"):
        compare_folders(a, b)
    assert main(["compare", str(a), str(b)]) == 2
    assert main(["compare", str(a), str(a), "--rtol", "-1"]) == 2
    assert "rtol" in capsys.readouterr().err


def test_same_values_matches_nan_and_text():
    x = pd.Series([1.0, np.nan, 3.0])
    assert same_values(x, pd.Series([1.0, np.nan, 3.0])).all()
    assert same_values(x, pd.Series([1.0, np.nan, 3.0 + 1e-15])).tolist() == [True, True, False]
    assert same_values(x, pd.Series([1.0, np.nan, 3.0 + 1e-15]), rtol=1e-12).all()
    assert same_values(pd.Series(["a", "b"]), pd.Series(["a", "c"])).tolist() == [True, False]


def test_a_missing_value_on_both_sides_is_the_same(tmp_path, capsys):
    """A not-measurable curve's slope is null in rates.json: under pandas 3 a missing value stays
    missing through astype(str), and NaN != NaN made a folder differ from itself (exit 1)."""
    both = pd.Series(["x", None, np.nan], dtype=object)
    assert same_values(both, both.copy()).all()
    assert same_values(both, pd.Series(["x", None, "y"], dtype=object)).tolist() == [
        True, True, False]
    a = _folder(tmp_path / "a")
    rates = json.loads((a / "rates.json").read_text())
    rates[0].update(slope=None, verdict=None)
    (a / "rates.json").write_text(json.dumps(rates))
    assert main(["compare", str(a), str(a)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(bit for bit)")


def test_an_estimate_within_rtol_is_the_same_relative_to_its_largest_parameter():
    """A measure's parameters are one vector: a parameter near zero carries the others'
    rounding, so an estimate is compared relative to its largest parameter."""
    a = json.dumps({"atoms": [{"beta0": 2.0, "a": [1.0, 1e-6]}]})
    near = json.dumps({"atoms": [{"beta0": 2.0, "a": [1.0, 1e-6 + 1e-15]}]})  # 1e-9 of itself
    other = json.dumps({"atoms": [{"beta0": 2.0, "a": [1.0]}]})
    x = pd.Series([a, a, a])
    y = pd.Series([a, near, other])
    assert same_values(x, y).tolist() == [True, False, False]
    assert same_values(x, y, rtol=1e-12).tolist() == [True, True, False]


@pytest.mark.parametrize("rtol", ["nan", "inf", "-1"])
def test_a_tolerance_that_is_not_a_finite_number_ge_0_is_refused(tmp_path, capsys, rtol):
    """NaN passed the check ``rtol < 0`` (a comparison with NaN is false) and compared nothing
    as the same; the CLI and the function refuse it, naming it."""
    a = _folder(tmp_path / "a")
    assert main(["compare", str(a), str(a), "--rtol", rtol]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-theory: error: --rtol: must be a finite number >= 0")
    assert len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="^rtol: must be a finite number >= 0"):
        compare_folders(a, a, rtol=float(rtol))


def test_what_compare_had_called_the_same_is_found(tmp_path, capsys):
    """An audit's cases (2026-12-07), each once called SAME or misnamed: a seed past 2^53 one
    apart (compared as floats), -0.0 against 0.0 (bit for bit they differ), JSON of another
    shape or other words within a tolerance ("pass" against "fail"), a table one folder lacks
    (skipped without a word: listed now, as a column one side lacks is), a key read as 0.0 on
    one side and 0 on the other (every row had differed), and a key repeated (rows matched by
    their stored order)."""
    big = 5892782099399871532
    assert same_values(pd.Series([big, 3]), pd.Series([big + 1, 3])).tolist() == [False, True]
    assert same_values(pd.Series([0.0, 1.0]), pd.Series([-0.0, 1.0])).tolist() == [False, True]
    for x, y in (('"pass"', '"fail"'), ("[]", "{}"),
                 ('{"kind": "a", "w": [1, 2]}', '{"kind": "b", "w": [1, 2]}'),
                 ('{"w": [1, 2]}', '{"v": [1, 2]}'), ('{"w": [1, 2]}', '{"w": [[1], 2]}')):
        assert not same_values(pd.Series([x]), pd.Series([y]), rtol=1e-9)[0], (x, y)
    assert same_values(pd.Series(['{"w": [1.0, 2.0]}']), pd.Series(['{"w": [1.0, 2.000000000001]}']),
                       rtol=1e-9)[0]

    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "check.parquet").unlink()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "check (8 rows): only in A, not compared" in out
    assert out.rstrip().endswith("check in one folder only, not compared")
    shutil.rmtree(b)
    shutil.copytree(a, b)
    table = pd.read_csv(b / "results.csv")
    store.write_results_csv(b, table.assign(rep=table["rep"].astype(float)))
    assert pd.read_csv(b / "results.csv")["rep"].dtype == float
    assert not differs(compare_folders(a, b))
    store.write_results_csv(b, pd.concat([table, table.iloc[[2]]]))
    result = compare_folders(a, b)
    head = result[(result["table"] == "results") & (result["column"] == "(rows)")].iloc[0]
    assert head["status"] == "differs" and "1 key(s) repeated in B" in head["example"]
