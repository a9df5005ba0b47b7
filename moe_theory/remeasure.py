"""``moe-theory remeasure DIR``: measure a finished sweep's stored estimates again.

A sweep stores each fit's estimate beside its losses (the ``fit_measure`` column, and
``fits.csv.gz`` in a figure folder: :mod:`moe_theory.store`). Measuring them again against the
references the folder records (``G*`` from the setting, ``G_bar`` from ``manifest.json``) gives
the table's loss values back, bit for bit on the machine that wrote them: a committed table is
then evidence anyone can recompute, and a change to a loss's definition (as when the Voronoi
cells began to measure even-power experts up to their sign, docs/theory.md#voronoi-losses)
reaches every committed figure without a refit, and so does a loss the toolkit measures since
the sweep ran (as ``D1_matched``): its rows are *added*, each a copy of its fit's other rows with
the new loss measured. ``write`` puts the new values in the folder's tables and redoes what
depends on them: the optimiser check's comparison (from its stored refits,
:func:`moe_theory.check.run_check`, which also runs the reference certificate's identified-losses
test on an added loss), the rates and the figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.check import run_check
from moe_theory.config import SweepConfig
from moe_theory.layout import CHECK_TABLE, REFIT_DIR, RESULTS_PARQUET, SHARDS_DIR
from moe_theory.measure import MixingMeasure
from moe_theory.store import (
    FIT_KEYS,
    FIT_MEASURE,
    SORT_KEYS,
    atomic_write,
    fit_table,
    folder_references,
    load_fits,
    load_results,
    merge,
    read_manifest_config,
    results_csv,
    shard_path,
    shards_on_disk,
    verified_shards,
    write_results_csv,
    write_shard,
)
from moe_theory.sublevel import SUBLEVEL_LOSS
from moe_theory.voronoi import applicable_losses, voronoi_loss

#: A value measured again within this relative distance of the stored one is that value: the
#: Voronoi losses are sums of a few dozen float64 terms, which another torch build or device
#: rounds differently by ~1e-15 relative, while a changed definition moves them by far more. It
#: is kept as stored, so that a table's bytes change only where a loss did.
ROUNDING_RTOL = 1e-12
#: A value measured again that moved by less than this (relative) is the same loss found by a
#: search that stopped elsewhere, not another definition: the matched gauge's compass search
#: (``D1_matched``), once it stopped per replication rather than per batch, moved eight
#: committed folders' values by up to 3e-10 (the batch-wide stop had moved them by up to
#: 1.5e-7 between batches), while a changed definition moves them by a factor. The new value
#: is written, and the fit's reach over its starts (:data:`~moe_theory.sublevel.SUBLEVEL_LOSS`),
#: measured by the same definition to that precision, is kept.
SEARCH_RTOL = 1e-6
#: The columns of :func:`remeasure`'s answer: one row per loss value the folder's tables hold or
#: lack; ``stored`` where its fit's estimate is stored, ``same`` where the value measured again
#: equals the stored one to :data:`ROUNDING_RTOL` (NaN equal to NaN), ``added`` where the table
#: lacks the row (``old`` NaN).
CHANGE_COLUMNS = ["table", "setting", "fit_gate", "loss_name", "n", "rep", "old", "new", "stored",
                  "same", "added"]


def missing_rows(table: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """The rows ``table`` lacks: for every fit, one per loss that a sweep of ``config`` measures
    it by today (:func:`~moe_theory.voronoi.applicable_losses`) and the table does not hold, a copy
    of the fit's first row with that ``loss_name`` and a NaN ``loss_value``; in the order a
    sweep writes them (its losses' order, then the table's fits')."""
    settings = {s.name: s for s in config.setting_objects()}
    keys = FIT_KEYS + (["variant"] if "variant" in table.columns else [])
    extra = []
    for (setting, gate, reference), rows in table.groupby(
            ["setting", "fit_gate", "reference"], sort=True):
        have = set(rows["loss_name"])
        first = rows.drop_duplicates(keys)
        for loss in applicable_losses(settings[setting], reference, config.losses, gate):
            if loss not in have:
                extra.append(first.assign(loss_name=loss, loss_value=np.nan))
    return (pd.concat(extra, ignore_index=True) if extra
            else table.iloc[:0].copy())


def with_missing_rows(table: pd.DataFrame, config: SweepConfig, *, merged: bool
                      ) -> tuple[pd.DataFrame, np.ndarray]:
    """``table`` with :func:`missing_rows` added, and which rows were added. A ``merged`` table
    is sorted again as a merge sorts it (:data:`~moe_theory.store.SORT_KEYS`); a table of shard
    or refit rows gets the added rows of each of its fitted batches (one ``variant``, setting,
    ``n`` and gate) after that batch's rows, where a sweep writes them (its losses are listed
    loss by loss, today's additions last)."""
    extra = missing_rows(table, config)
    if extra.empty:
        return table, np.zeros(len(table), dtype=bool)
    both = pd.concat([table.assign(_added=False), extra.assign(_added=True)], ignore_index=True)
    if merged:
        both = both.sort_values(SORT_KEYS, kind="stable")
    else:
        batch = [c for c in ("variant", "setting", "n", "fit_gate") if c in both.columns]
        first_seen = both.groupby(batch, sort=False).ngroup()
        both = both.assign(_batch=first_seen).sort_values(["_batch", "_added"], kind="stable")
        both = both.drop(columns="_batch")
    both = both.reset_index(drop=True)
    added = both.pop("_added").to_numpy(dtype=bool)
    return both, added


def measure_table(table: pd.DataFrame, fits: pd.DataFrame,
                  refs: dict[tuple[str, str], MixingMeasure]) -> tuple[np.ndarray, np.ndarray]:
    """The loss value of every row of a tidy ``table``, measured from the estimates ``fits``
    (one row per fit, :data:`FIT_KEYS` and :data:`FIT_MEASURE`), and whether the row's fit is
    stored (its value NaN where not)."""
    index = table.set_index(FIT_KEYS).index
    stored = fits.set_index(FIT_KEYS)[FIT_MEASURE]
    have = index.isin(stored.index)
    values = np.full(len(table), np.nan)
    for (setting, gate), rows in table.groupby(["setting", "fit_gate"], sort=True).groups.items():
        if (setting, gate) not in refs:
            raise ValueError(f"DIR: the table has fits of {setting}/{gate}, which the config "
                             "does not run")
        positions = table.index.get_indexer(rows)
        positions = positions[have[positions]]
        if not len(positions):
            continue
        keys = index[positions]
        unique = keys.unique()
        measure = MixingMeasure.from_json_rows(stored.loc[unique])
        where = unique.get_indexer(keys)
        names = table["loss_name"].to_numpy()[positions]
        for loss in np.unique(names):
            per_fit = voronoi_loss(measure, refs[setting, gate], loss).numpy()
            mine = names == loss
            values[positions[mine]] = per_fit[where[mine]]
    return values, have


def _same(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Where ``new`` is ``old`` to rounding (:data:`ROUNDING_RTOL`; NaN equal to NaN)."""
    return np.isclose(new, old, rtol=ROUNDING_RTOL, atol=0.0) | (np.isnan(old) & np.isnan(new))


def _kept(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The values to write: ``old`` where ``new`` is it to rounding, else ``new``."""
    return np.where(_same(old, new), old, new)


def _with_values(rows: pd.DataFrame, new: np.ndarray, added: np.ndarray) -> pd.DataFrame:
    """``rows`` with the values to write (:func:`_kept`). Where a value changed beyond
    :data:`SEARCH_RTOL` or its row was added, the fit's other starts' largest loss
    (:data:`~moe_theory.sublevel.SUBLEVEL_LOSS`) is unknown: only the kept start's estimate is
    stored, so it becomes NaN rather than a value of another definition or another loss's. Where
    it moved less, the starts' reach stands, raised to the new value where the kept start was
    the largest."""
    old = rows["loss_value"].to_numpy(float)
    out = rows.assign(loss_value=_kept(old, new))
    if SUBLEVEL_LOSS in out:
        reach = out[SUBLEVEL_LOSS].to_numpy(float)
        searched = np.isclose(new, old, rtol=SEARCH_RTOL, atol=0.0) & ~added
        reach = np.where(searched & (reach == old), out["loss_value"].to_numpy(float), reach)
        stale = added | (~_same(old, new) & ~searched)
        out[SUBLEVEL_LOSS] = np.where(stale, np.nan, reach)
    return out


def _changes(name: str, table: pd.DataFrame, new: np.ndarray, stored: np.ndarray,
             added: np.ndarray) -> pd.DataFrame:
    old = table["loss_value"].to_numpy(dtype=float)
    same = _same(old, new) & ~added
    out = table[["setting", "fit_gate", "loss_name", "n", "rep"]].assign(
        old=old, new=new, stored=stored, same=same, added=added)
    return out.assign(table=name)[CHANGE_COLUMNS]


def _measure_check(check: pd.DataFrame, refs: dict[tuple[str, str], MixingMeasure]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`measure_table` for the optimiser check's refits, whose fits are named by their
    variant too."""
    values, stored = np.full(len(check), np.nan), np.zeros(len(check), dtype=bool)
    for rows in check.groupby("variant", sort=True).groups.values():
        positions = check.index.get_indexer(rows)
        part = check.iloc[positions].reset_index(drop=True)
        values[positions], stored[positions] = measure_table(part, fit_table(part), refs)
    return values, stored


def remeasure(folder: str | Path, *, write: bool = False) -> pd.DataFrame:
    """Every loss value of a finished sweep's tables (``results`` and, where its refits stored
    their estimates, the optimiser check's ``check.parquet``) measured again from the stored
    estimates: :data:`CHANGE_COLUMNS`.

    ``write``: where a value differs or a row was added, put the new values in the folder's
    ``results.csv`` and ``results.parquet`` and its ``check.parquet``, re-evaluate the optimiser
    check from its stored refits and rewrite the rates and figure. A working folder's stored
    rows (its ``shards/`` and the check's refit store, which a later merge or resumed check
    reads) are measured again first, each shard stored anew with its checksum.
    """
    # the report draws the figure: matplotlib loads only where a folder is rewritten
    from moe_theory.outputs import write_report

    folder = Path(folder)
    config = read_manifest_config(folder)
    refs = folder_references(folder, config)
    results = load_results(folder)
    # a table read from shards or parquet holds the estimates; a committed one keeps them apart
    fits = fit_table(results)
    if fits.empty:
        fits = load_fits(folder)
    results, added = with_missing_rows(results, config, merged=True)
    new, stored = measure_table(results, fits, refs)
    changes = [_changes("results", results, new, stored, added)]
    check = None
    if (folder / CHECK_TABLE).exists():
        check = pd.read_parquet(folder / CHECK_TABLE).reset_index(drop=True)
        if FIT_MEASURE in check.columns and check[FIT_MEASURE].notna().any():
            check, check_added = with_missing_rows(check, config, merged=False)
            check_new, check_stored = _measure_check(check, refs)
            for variant, rows in check.groupby("variant", sort=True).groups.items():
                positions = check.index.get_indexer(rows)
                changes.append(_changes(f"check:{variant}", check.iloc[positions],
                                        check_new[positions], check_stored[positions],
                                        check_added[positions]))
        else:
            check = None  # refits stored before their estimates: not measurable again
    unjudged = (folder / CHECK_TABLE).exists() and check is None
    table = pd.concat(changes, ignore_index=True)
    if not write or table["same"].all():
        return table
    unstored = int((~table["stored"]).sum())
    if unstored:
        raise ValueError(f"DIR: {unstored} loss values of {folder} have no stored estimate; "
                         "nothing was rewritten")
    if unjudged:
        # the check compares the results with its refits: new results beside old refits would
        # leave a check.json that judged other values, read as current (the same config hash)
        raise ValueError(f"DIR: the optimiser check's refits in {folder / CHECK_TABLE} have no "
                         "stored estimates, so the check cannot be judged again against the "
                         "new values; nothing was rewritten (run `moe-theory check DIR` again "
                         "first, or move check.json and check.parquet out of the folder)")
    # a working folder's stored rows come first: a later merge or resumed check reads them
    for store in [folder, *sorted((folder / REFIT_DIR).glob("*"))]:
        _rewrite_shards(store, refs, config)
    if (folder / SHARDS_DIR).is_dir():
        merge(folder, keep=False)  # the shards were rewritten: the tables follow them
    else:
        results = _with_values(results, new, added)
        if results_csv(folder).exists():
            write_results_csv(folder, results)
        if (folder / RESULTS_PARQUET).exists():
            atomic_write(folder / RESULTS_PARQUET,
                         lambda tmp: results.to_parquet(tmp, index=False))
    if check is not None:
        reps = int(check["rep"].max()) + 1
        # the check is judged again whenever the results moved (it compares them with the
        # refits), but its refits' file is rewritten only where a refit's value moved: writing
        # the same values anew changed its bytes (the parquet writer's metadata) for nothing
        moved = ~table.loc[table["table"].str.startswith("check:"), "same"].to_numpy(bool)
        run_check(folder, reps=reps, refits=_with_values(check, check_new, check_added),
                  write_refits=bool(moved.any()))
    write_report(load_results(folder), config, folder)
    return table


def _rewrite_shards(store: Path, refs: dict[tuple[str, str], MixingMeasure],
                    config: SweepConfig) -> None:
    """Measure the rows of every verified shard under ``store`` again from the estimates they
    hold, with the rows of losses they lack added (:func:`with_missing_rows`), and store each
    anew (atomically, with its checksum)."""
    for shard in verified_shards(store, shards_on_disk(store), report=lambda msg: None):
        rows, added = with_missing_rows(pd.read_parquet(shard_path(store, shard)), config,
                                        merged=False)
        values, _ = measure_table(rows, fit_table(rows), refs)
        write_shard(store, shard, _with_values(rows, values, added))
