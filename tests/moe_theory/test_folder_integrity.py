"""A results folder keeps its promise (the same config gives the same
tables, nothing written is lost or corrupted) under bad input and interruptions (CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from moe_theory import store
from moe_theory.config import parse_config
from moe_theory.store import SORT_KEYS, checksum_path, plan, shard_path
from moe_theory.sweep import run_sweep

pytestmark = pytest.mark.usefixtures("module_cache")

TINY = {"name": "tiny-audit", "settings": ["small-sparse-relu"], "fit_gates": ["sigmoid"],
        "n": [200, 300], "reps": 4, "rep_block": 2}


def table(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "results.parquet").drop(columns="wall_s")


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swept")
    run_sweep(parse_config(TINY), out, log=lambda msg: None)
    return out


def test_a_shard_file_under_another_shards_name_is_damaged(swept, tmp_path):
    """Another shard's file copied with its checksum record under a shard's name verified by
    its checksum alone: the merged table held that shard's rows twice and this one's not at all,
    the sweep called itself complete and never recomputed it."""
    out = tmp_path / "run"
    shutil.copytree(swept, out)
    first, second = plan(parse_config(TINY))[:2]  # n = 200, replications 0-1 and 2-3
    for path in (shard_path(out, first), checksum_path(shard_path(out, first))):
        shutil.copy(path, path.parent / path.name.replace(first.key.split("/")[1],
                                                          second.key.split("/")[1]))
    (out / "results.parquet").unlink()
    said: list[str] = []
    df = store.merge(out, report=said.append)
    assert not df.duplicated(SORT_KEYS).any()
    assert any(f"damaged shard {second.key}" in line and "not this shard's" in line
               for line in said), said
    assert not store.completeness(out, report=said.append).complete
    run_sweep(parse_config(TINY), out, log=lambda msg: None)
    pd.testing.assert_frame_equal(table(out), table(swept), check_exact=True)


def test_the_check_of_an_unfinished_sweep_is_refused(swept, tmp_path, capsys):
    """`check` on a sweep with a shard missing had written check.json from the partial table
    (the refits compared with those fits alone), and nothing marked it stale once the sweep
    finished: it is refused naming the folder, and nothing is written."""
    from moe_theory.cli import main

    out = tmp_path / "run"
    shutil.copytree(swept, out)
    missing = plan(parse_config(TINY))[-1]
    shard_path(out, missing).unlink()
    checksum_path(shard_path(out, missing)).unlink()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["check", str(out), "--reps", "1"]) == 2
    err = capsys.readouterr().err
    assert "unfinished sweep" in err and "1 shards" in err and "moe-theory sweep" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
