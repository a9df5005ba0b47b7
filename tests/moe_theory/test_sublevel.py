"""The set a rate bound covers (moe_theory.sublevel): per start, per data set, per curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moe_theory import sublevel
from moe_theory.sublevel import SUBLEVEL_LOSS


def test_a_fits_reach_is_its_largest_certified_start():
    """Only starts no worse than the reference count, and only finite losses (an over-specified
    loss of a start without an over-specified cell is NaN); none certified gives NaN."""
    per_start = np.array([[1.0, 5.0, 2.0], [1.0, 9.0, np.nan], [3.0, 4.0, 5.0]])
    certified = np.array([[True, False, True], [True, True, True], [False, False, False]])
    reach = sublevel.start_sublevel(per_start, certified)
    assert reach[0] == 2.0 and reach[1] == 9.0 and np.isnan(reach[2])


def test_sublevel_ratios_take_the_largest_certified_fit_of_each_checked_data_set():
    """Per checked data set, the largest loss among its fits at least as good as the reference
    (the sweep's and the refits) over the sweep fit's: an uncertified refit does not count,
    however far it lies; a data set no refit covers has no ratio; a sweep loss of 0 or NaN gives
    NaN, not a division's inf."""
    base = pd.DataFrame({"n": [100, 100, 200, 200, 400], "rep": [0, 1, 0, 1, 0],
                         "loss_value": [1.0, 2.0, 0.5, np.nan, 1.0],
                         "certified": [True, True, False, True, True]})
    refits = pd.DataFrame({"n": [100, 100, 100, 100, 200, 200, 200, 200],
                           "rep": [0, 0, 1, 1, 0, 0, 1, 1],
                           "loss_value": [3.0, 100.0, 1.0, 2.5, 0.5, 0.4, 7.0, 8.0],
                           "certified": [True, False, True, True, False, True, True, True],
                           "variant": ["a", "b"] * 4})
    ratios = sublevel.data_set_ratios(base, refits).set_index(["n", "rep"])
    assert list(ratios.index) == [(100, 0), (100, 1), (200, 0), (200, 1)]  # n = 400 unchecked
    assert ratios.loc[(100, 0), "ratio"] == 3.0  # the uncertified 100 is left out
    assert ratios.loc[(100, 1), "ratio"] == 1.25
    # the sweep fit itself is not certified here: the certified refit's 0.4 is the largest
    assert ratios.loc[(200, 0), "ratio"] == pytest.approx(0.8)
    assert np.isnan(ratios.loc[(200, 1), "ratio"])
    summary = sublevel.summary(ratios.reset_index())
    assert summary == {"data_sets": 3, "ratio_median": 1.25, "ratio_max": 3.0, "ratio_max_n": 100,
                       "by_n": {"100": 3.0, "200": pytest.approx(0.8)}, "loose": 1}
    # without the certified column anywhere (a table from before it) there is nothing to read
    assert sublevel.summary(sublevel.data_set_ratios(
        base.drop(columns="certified"), refits.drop(columns="certified"))) is None



def test_a_recorded_reach_counts_for_its_fit_and_the_check_adds_its_data_sets():
    """A row's recorded reach (every start of its fit) is what it offers; a row without one (a
    table from before the column, or one start) offers its own loss if certified. The curve's
    reading joins the sweep's data sets with the check's, the larger ratio where both saw one."""
    base = pd.DataFrame({"n": [100, 100, 200], "rep": [0, 1, 0],
                         "loss_value": [1.0, 2.0, 4.0], "certified": [True, True, True],
                         SUBLEVEL_LOSS: [1.5, np.nan, 4.0]})
    ratios = sublevel.data_set_ratios(base).set_index(["n", "rep"])["ratio"]
    assert ratios.to_dict() == {(100, 0): 1.5, (100, 1): 1.0, (200, 0): 1.0}
    recorded = sublevel.curve_summary(base, None)
    assert recorded["data_sets"] == 2 and recorded["ratio_max"] == 1.5  # (100, 1) recorded none
    check = sublevel.check_entry(pd.DataFrame({"n": [100, 200], "rep": [1, 0],
                                               "ratio": [3.0, 0.9]}))
    assert check["loose"] == 1 and check["n"] == [100, 200] and check["ratio"] == [3.0, 0.9]
    joined = sublevel.curve_summary(base, check)
    assert joined["data_sets"] == 3 and joined["ratio_max"] == 3.0 and joined["loose"] == 1
    assert joined["by_n"] == {"100": 3.0, "200": 1.0}  # (200, 0): the sweep's 1.0 over 0.9
    # a check entry written before it listed its ratios stands as it is
    old = {k: v for k, v in check.items() if k not in ("n", "rep", "ratio")}
    assert sublevel.curve_summary(base.drop(columns=SUBLEVEL_LOSS), old) == old
    assert sublevel.curve_summary(base.drop(columns=SUBLEVEL_LOSS), None) is None


def test_the_note_and_the_printed_ratio():
    loose = {"data_sets": 8, "ratio_median": 1.5, "ratio_max": 26.8, "ratio_max_n": 64000,
             "loose": 3}
    assert sublevel.note(loose) == (
        "sublevel: a fit at least as good as the reference has 27x the kept fit's loss "
        "(n=64000), over 2x on 3 of 8 data sets: the rate bound must cover those fits too")
    assert sublevel.note({**loose, "loose": 0}) == sublevel.note(None) == ""
    assert [sublevel.format_ratio(v) for v in (1.0041, 9.994, 13922.6, float("nan"))] == [
        "1.00", "9.99", "13923", "-"]
