"""Two results folders of one config, value by value (``moe-theory compare A B``).

The toolkit promises that the same config and seed give the same table, bit for bit, whatever
the interruptions, executors or worker counts (docs/design.md#results-store). This module checks
that promise for a re-run: a committed figure computed again (``moe-theory reproduce NAME --out
NEW --references-from paper_figures/NAME`` on the device type that made it) is compared with the
committed folder, table by table: the tidy table, the fits' estimates, the optimiser check's
refits, and the slopes and verdicts of the rates table.

Rows are matched on their keys (a table sorted otherwise is the same table); timings are never
compared (they are the machine's, not the fits'); a column one side lacks is listed, not failed
(a re-run records what the toolkit measures since, e.g. ``sublevel_loss``), and so is a whole
table one folder lacks (a re-run without the optimiser check). A value is the same when it is
bit for bit (integers as integers, NaN equal to NaN, -0.0 not 0.0), or within ``rtol`` where one
is given: a number relative to itself, an estimate (the measure's JSON, of one shape and the same
words) relative to its largest parameter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.layout import CHECK_TABLE, RATES_TABLE
from moe_theory.store import FIT_KEYS, FIT_MEASURE, SORT_KEYS, load_fits, load_results, read_manifest
from moe_theory.validation import check_number

#: Columns never compared: the run's timing (the machine's) and the code that ran (``code``: a
#: re-run by later code is what a comparison is for).
NOT_COMPARED = ("wall_s", "code")
#: The optimiser check's refits: one row per variant, data set and loss.
CHECK_KEYS = ["variant", *SORT_KEYS]
#: What a rates table's curve is compared on.
RATES_KEYS = ["setting", "fit_gate", "loss_name"]
RATES_COLUMNS = ("slope", "slope_median", "ci_half_width", "verdict", "cert_reference",
                 "cert_converged", "cert_optimiser", "cert_overfit")

#: The ``column`` of a comparison's row for a table that one folder lacks.
TABLE_ROW = "(table)"
#: One row of a comparison: a column of one table of both folders.
COLUMNS = ["table", "column", "status", "differing", "rows", "max_rel_diff", "example"]


def _skeleton(node: object, numbers: list[float]) -> object:
    """``node`` (parsed JSON) with each number replaced by ``"#"`` and appended to ``numbers``
    in order: two texts of one shape have equal skeletons."""
    if isinstance(node, dict):
        return {key: _skeleton(value, numbers) for key, value in node.items()}
    if isinstance(node, list):
        return [_skeleton(value, numbers) for value in node]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        numbers.append(float(node))
        return "#"
    return node


def _same_json(x: str, y: str, rtol: float) -> bool:
    """Two JSON texts of the same shape (the same keys, lengths and non-number values: a
    "pass" is not a "fail") whose numbers agree within ``rtol`` of the largest of them (the
    estimates' column: a measure's parameters are one vector, and a parameter near zero carries
    the rounding of the others)."""
    try:
        a_tree, b_tree = json.loads(x), json.loads(y)
    except (TypeError, ValueError):
        return False
    a_list: list[float] = []
    b_list: list[float] = []
    if _skeleton(a_tree, a_list) != _skeleton(b_tree, b_list):
        return False
    a, b = np.asarray(a_list), np.asarray(b_list)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    return bool(a.size == 0 or np.max(np.abs(a - b)) <= rtol * np.max(np.abs(a)))


def _numeric(column: pd.Series) -> bool:
    """A column of numbers (booleans are not: True is no 1.0 to compare)."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def same_values(a: pd.Series, b: pd.Series, rtol: float = 0.0) -> np.ndarray:
    """Where two aligned columns hold the same value: integers exactly, floats bit for bit (NaN
    equal to NaN, -0.0 not 0.0) or within ``rtol``, anything else as the same text, or, within
    ``rtol``, as JSON texts of the same shape whose numbers agree (the estimates' measures)."""
    if _numeric(a) and _numeric(b):
        if pd.api.types.is_integer_dtype(a) and pd.api.types.is_integer_dtype(b):
            # as integers: a seed past 2^53 (5892782099399871532) read as float equals its
            # neighbours
            return a.to_numpy() == b.to_numpy()
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        same = ((x == y) & (np.signbit(x) == np.signbit(y))) | (np.isnan(x) & np.isnan(y))
        if rtol > 0:
            same |= np.isclose(y, x, rtol=rtol, atol=0.0)
        return same
    x, y = a.astype(str).to_numpy(), b.astype(str).to_numpy()
    # missing on both sides is the same value: pandas 3 keeps a missing value missing through
    # astype(str), and NaN != NaN (a not-measurable curve's slope is null in both folders)
    same = (x == y) | (a.isna().to_numpy() & b.isna().to_numpy())
    if rtol > 0:
        for i in np.flatnonzero(~same):
            same[i] = _same_json(x[i], y[i], rtol)
    return same


def _aligned_keys(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables with each numeric key column of one type on both sides: a ``rep`` read
    as 0.0 on one side and 0 on the other is one key (matched as text, every row had differed).
    Whole numbers become integers, others floats."""
    for key in keys:
        if _numeric(a[key]) and _numeric(b[key]) and a[key].dtype != b[key].dtype:
            both = np.concatenate([a[key].to_numpy(dtype=float), b[key].to_numpy(dtype=float)])
            whole = bool(np.isfinite(both).all() and (both == np.round(both)).all())
            kind = "int64" if whole else "float64"
            a, b = a.assign(**{key: a[key].astype(kind)}), b.assign(**{key: b[key].astype(kind)})
    return a, b


def _repeated(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys (as text) that more than one row of ``table`` holds."""
    return sorted(set(_keys(table[table.duplicated(keys, keep=False)], keys)))


def compare_tables(name: str, a: pd.DataFrame, b: pd.DataFrame, keys: list[str], *,
                   rtol: float = 0.0) -> pd.DataFrame:
    """One row per column of two tables matched on ``keys`` (:data:`COLUMNS`): ``same``,
    ``differs`` (with how many rows and the largest relative difference), ``only in A`` /
    ``only in B``; a first row ``rows`` says whether both hold the same keys."""
    a = a.drop(columns=[c for c in NOT_COMPARED if c in a], errors="ignore")
    b = b.drop(columns=[c for c in NOT_COMPARED if c in b], errors="ignore")
    missing = [k for k in keys if k not in a or k not in b]
    if missing:
        raise ValueError(f"{name}: a table lacks the key column(s) {missing}")
    a, b = _aligned_keys(a, b, keys)
    a = a.sort_values(keys, kind="stable").reset_index(drop=True)
    b = b.sort_values(keys, kind="stable").reset_index(drop=True)

    def row(column: str, count: int) -> dict:
        return {"table": name, "column": column, "rows": count, "differing": 0,
                "max_rel_diff": np.nan, "example": ""}

    rows = [row("(rows)", max(len(a), len(b)))]
    repeated = {side: _repeated(t, keys) for side, t in (("A", a), ("B", b))}
    if any(repeated.values()):
        # rows of one key are matched by their stored order, which is no key: a table of the
        # store holds each key once
        rows[0].update(status="differs", differing=sum(map(len, repeated.values())),
                       example="; ".join(f"{len(r)} key(s) repeated in {side} (e.g. {r[:1]})"
                                         for side, r in repeated.items() if r))
        return pd.DataFrame(rows, columns=COLUMNS)
    if len(a) != len(b) or not all(np.array_equal(a[k].astype(str).to_numpy(),
                                                  b[k].astype(str).to_numpy()) for k in keys):
        key_a, key_b = _keys(a, keys), _keys(b, keys)
        only_a = sorted(set(key_a) - set(key_b))
        only_b = sorted(set(key_b) - set(key_a))
        rows[0].update(status="differs", differing=len(only_a) + len(only_b),
                       example=f"{len(only_a)} only in A (e.g. {only_a[:1]}), "
                               f"{len(only_b)} only in B (e.g. {only_b[:1]})")
        return pd.DataFrame(rows, columns=COLUMNS)
    rows[0]["status"] = "same"
    for column in [c for c in a.columns if c not in keys] + [c for c in b.columns
                                                              if c not in a.columns]:
        entry = row(column, len(a))
        if column not in b:
            entry["status"] = "only in A"
        elif column not in a:
            entry["status"] = "only in B"
        else:
            same = same_values(a[column], b[column], rtol)
            entry["differing"] = int((~same).sum())
            entry["status"] = "same" if same.all() else "differs"
            if not same.all():
                first = int(np.flatnonzero(~same)[0])
                entry["example"] = (f"{_keys(a.iloc[[first]], keys)[0]}: "
                                    f"{_show(a[column].iloc[first])} vs "
                                    f"{_show(b[column].iloc[first])}")
                if _numeric(a[column]) and _numeric(b[column]):
                    x = a[column].to_numpy(dtype=float)[~same]
                    y = b[column].to_numpy(dtype=float)[~same]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        rel = np.abs(x - y) / np.maximum(np.abs(x), np.abs(y))
                    entry["max_rel_diff"] = float(np.nanmax(rel)) if np.isfinite(rel).any() \
                        else np.inf
        rows.append(entry)
    return pd.DataFrame(rows, columns=COLUMNS)


def _keys(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """Each row's keys as one text ("a/b/c"): to name rows in a message. Built only there, the
    rows being matched column by column (a Python join per row of a 10^5-row table took seconds)."""
    return ["/".join(map(str, values)) for values in zip(*(table[k].astype(str) for k in keys),
                                                         strict=True)]


#: A text value is shown up to this many characters (an estimate's JSON runs to thousands).
SHOW_CHARS = 60


def _show(value: object) -> str:
    """A value as its shortest exact text (a float's repr round-trips), a long text cut."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    text = str(value)
    return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + "..."


def _rates(folder: Path) -> pd.DataFrame | None:
    path = folder / f"{RATES_TABLE}.json"
    if not path.exists():
        return None
    table = pd.DataFrame(json.loads(path.read_text()))
    return table[[c for c in (*RATES_KEYS, *RATES_COLUMNS) if c in table]]


def compare_folders(a: str | Path, b: str | Path, *, rtol: float = 0.0) -> pd.DataFrame:
    """Every table both folders hold, compared (:func:`compare_tables`): ``results``, ``fits``
    (the estimates), ``check`` (the optimiser check's refits, ``check.parquet``) and ``rates``
    (each curve's slopes, certificates and verdict). Folders of two configs are refused."""
    rtol = check_number("rtol", rtol)
    a, b = Path(a), Path(b)
    hashes = []
    for side, folder in (("A", a), ("B", b)):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{side}: {folder} is a file, not a sweep folder")
        manifest = read_manifest(folder)
        if manifest is None:
            raise ValueError(f"{side}: {folder} has no manifest.json (not a sweep folder)")
        hashes.append(manifest.get("config_hash"))
    if hashes[0] != hashes[1]:
        raise ValueError(f"B: {b} holds results of another config (hash {hashes[1]}, "
                         f"A's {hashes[0]}): only runs of one config can be the same")
    quiet = {"report": lambda msg: None}
    # the estimates' column is compared as the fits table (a committed table's CSV lacks it)
    tables = [load_results(f, **quiet).drop(columns=FIT_MEASURE, errors="ignore") for f in (a, b)]
    parts = [compare_tables("results", *tables, SORT_KEYS, rtol=rtol)]
    fits = []
    for folder in (a, b):
        try:
            fits.append(load_fits(folder, **quiet))
        except ValueError:
            fits.append(None)
    checks = [pd.read_parquet(f / CHECK_TABLE) if (f / CHECK_TABLE).exists() else None
              for f in (a, b)]
    for name, pair, keys in (("fits", fits, FIT_KEYS), ("check", checks, CHECK_KEYS),
                             ("rates", [_rates(a), _rates(b)], RATES_KEYS)):
        if all(t is not None for t in pair):
            parts.append(compare_tables(name, *pair, keys, rtol=rtol))
        elif any(t is not None for t in pair):
            # listed, as a column one side lacks is (a re-run without --certify has no check):
            # a table skipped without a word read as compared
            side = "A" if pair[0] is not None else "B"
            parts.append(pd.DataFrame([{
                "table": name, "column": TABLE_ROW, "status": f"only in {side}", "differing": 0,
                "rows": len(pair[0] if pair[0] is not None else pair[1]),
                "max_rel_diff": np.nan, "example": ""}], columns=COLUMNS))
    return pd.concat(parts, ignore_index=True)


def differs(table: pd.DataFrame) -> bool:
    """Whether a comparison found a value or a row that is not the same (a column that one side
    lacks does not count)."""
    return bool((table["status"] == "differs").any())


def format_comparison(table: pd.DataFrame, a: str | Path, b: str | Path, *,
                      rtol: float = 0.0) -> str:
    """The comparison in words: per table, the columns that differ (how many rows, the largest
    relative difference, a first example), those one side lacks, and how many are the same."""
    same_as = "bit for bit" if rtol == 0 else f"to a relative {rtol:g}"
    lines = [f"A: {a}", f"B: {b}", f"values compared {same_as}; timings and code versions "
             f"({', '.join(NOT_COMPARED)}) not compared", ""]
    for name, part in table.groupby("table", sort=False):
        head = part.iloc[0]
        if head["column"] == TABLE_ROW:
            lines.append(f"{name} ({int(head['rows'])} rows): {head['status']}, not compared")
            continue
        if head["status"] == "differs":
            lines.append(f"{name}: the rows differ: {head['example']}")
            continue
        cols = part.iloc[1:]
        same = cols[cols["status"] == "same"]
        lines.append(f"{name} ({int(head['rows'])} rows): {len(same)} of {len(cols)} columns "
                     "the same")
        for row in cols[cols["status"] != "same"].itertuples():
            if row.status == "differs":
                rel = "" if np.isnan(row.max_rel_diff) else \
                    f", largest relative difference {row.max_rel_diff:.2g}"
                lines.append(f"  {row.column}: differs in {row.differing} of {row.rows} rows"
                             f"{rel} (e.g. {row.example})")
            else:
                lines.append(f"  {row.column}: {row.status}")
    lacking = table[table["column"] == TABLE_ROW]
    held = ("" if lacking.empty else
            f"; {', '.join(lacking['table'])} in one folder only, not compared")
    verdict = ("DIFFERENT: some values or rows are not the same" if differs(table) else
               f"SAME: every value both folders hold is the same ({same_as}){held}")
    return "\n".join([*lines, "", verdict])
