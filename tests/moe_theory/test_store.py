"""The results store never lies (docs/design.md#results-store): damaged shards are found, moved
aside and recomputed; incomplete folders say so; concurrent sweeps share the work; file-system
errors exit 3 naming the path and keep every finished shard; bad devices and fits are refused.

Tables are compared exactly (up to ``wall_s``, a timing): the same config gives the same bits.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import moe_theory as mt
from kernels.moe.torch_pass import JACOBIAN_CHUNK_BYTES
from moe_theory import store, sweep
from moe_theory.cli import main
from moe_theory.config import parse_config
from moe_theory.errors import EXIT_ENVIRONMENT, ResourceError
from moe_theory.store import plan, shard_path

pytestmark = pytest.mark.usefixtures("module_cache")

#: Four shards of one replication each: small enough to compute in about a second apiece.
TINY = {"name": "tiny-store", "settings": ["small-sparse-relu"], "fit_gates": ["sigmoid"],
        "n": [100, 200], "reps": 2, "rep_block": 1}
#: Eight one-replication shards, for two sweeps side by side.
SHARED = {**TINY, "name": "tiny-shared", "reps": 4}


def toml(raw: dict) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in raw.items()) + "\n"


def same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Bit for bit, up to ``wall_s`` (a timing)."""
    pd.testing.assert_frame_equal(got.drop(columns="wall_s").reset_index(drop=True),
                                  want.drop(columns="wall_s").reset_index(drop=True),
                                  check_exact=True)


def computed(lines: list[str]) -> list[str]:
    """Shard keys of the sweep log's "done" lines."""
    return [line.split()[1] for line in lines if " done on " in line]


def dead_pid() -> int:
    """The pid of a process of this host that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.toml"
    path.write_text(toml(TINY))
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("local")
    return out, sweep.run_sweep(parse_config(TINY), out, log=lambda msg: None)


@pytest.fixture
def copy(local_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    return out


# ---- damaged shards ---------------------------------------------------------------------------

def test_truncated_shard_is_moved_aside_and_recomputed(local_run, copy):
    shards = plan(parse_config(TINY))
    damaged = shard_path(copy, shards[1])
    intact = {s: shard_path(copy, s).read_bytes() for s in shards if s != shards[1]}
    truncated = damaged.read_bytes()[: damaged.stat().st_size // 2]
    damaged.write_bytes(truncated)
    lines: list[str] = []
    df = sweep.run_sweep(parse_config(TINY), copy, log=lines.append)
    same_table(df, local_run[1])
    assert any(shards[1].key in line and "damaged" in line for line in lines)
    assert computed(lines) == [shards[1].key]  # nothing else recomputed ...
    assert all(shard_path(copy, s).read_bytes() == b for s, b in intact.items())  # ... or touched
    assert (copy / "damaged" / damaged.relative_to(copy / "shards")).read_bytes() == truncated


def test_a_whole_shard_of_another_config_is_not_this_folders(local_run, copy, tmp_path, capsys):
    """A shard written whole, with its checksum record, by another config (here another seed; a
    worker of a killed sweep that finished after ``--force`` gave the folder to another config
    did the same) verified, and the table mixed two configs' rows without a word. It is set
    aside as damaged, named with its hash, and the sweep recomputes it."""
    other = {**TINY, "seed": 1}
    sweep.run_sweep(parse_config(other), tmp_path / "other", log=lambda msg: None)
    shard = plan(parse_config(TINY))[1]
    for path in (shard_path(copy, shard), store.checksum_path(shard_path(copy, shard))):
        shutil.copy(tmp_path / "other" / path.relative_to(copy), path)
    foreign = parse_config(other).hash
    assert main(["rates", str(copy)]) == 0
    err = capsys.readouterr().err
    assert f"damaged shard {shard.key}: its rows were written by another config (hash {foreign})" \
        in err and "3 of 4 shards" in err
    assert set(store.load_results(copy, report=lambda msg: None)["config_hash"]) == {
        parse_config(TINY).hash}
    lines: list[str] = []
    same_table(sweep.run_sweep(parse_config(TINY), copy, log=lines.append), local_run[1])
    assert computed(lines) == [shard.key]


def test_flipped_byte_is_found_by_its_checksum(copy, capsys):
    """A byte flipped inside a data page leaves the parquet footer readable: only the checksum
    recorded at write time tells; the folder then reads as incomplete."""
    shard = plan(parse_config(TINY))[0]
    path = shard_path(copy, shard)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["rates", str(copy)]) == 0
    err = capsys.readouterr().err
    assert f"damaged shard {shard.key}" in err and "sha256" in err
    assert "3 of 4 shards" in err
    assert not path.exists() and (copy / "damaged" / path.relative_to(copy / "shards")).exists()


def test_merge_command_reports_a_damaged_shard_and_exits_0(copy, capsys):
    shard = plan(parse_config(TINY))[2]
    shard_path(copy, shard).write_bytes(b"PAR1 not a parquet file")
    assert main(["merge", str(copy)]) == 0
    err = capsys.readouterr().err
    assert f"damaged shard {shard.key}" in err and "missing: settings small-sparse-relu, n 200" in err
    # the merged table held the shard's rows whole: kept, while the table read lacks them
    one = len(pd.read_parquet(shard_path(copy, plan(parse_config(TINY))[0])))
    assert len(pd.read_parquet(copy / "results.parquet")) == 4 * one
    assert len(store.load_results(copy, report=lambda msg: None)) == 3 * one


# ---- completeness -----------------------------------------------------------------------------

def test_incomplete_folder_says_how_many_shards_and_which(local_run, copy, capsys):
    shards = plan(parse_config(TINY))
    for lost in (shards[1], shards[3]):  # replication 1 at both n
        shard_path(copy, lost).unlink()
    state = store.completeness(copy)
    assert (len(state.finished), len(state.expected), state.missing) == (2, 4, (shards[1], shards[3]))
    summary = "2 of 4 shards; missing: settings small-sparse-relu, n 100, 200 (2 shards)"
    assert state.summary() == summary
    # rates reads the shards, not the stale results.parquet that still holds all four
    assert main(["rates", str(copy)]) == 0
    assert summary in capsys.readouterr().err
    with pytest.warns(store.StoreWarning) as caught:
        df = mt.load_results(copy)
    said = [str(w.message) for w in caught]
    assert any("2 of 4 shards" in m for m in said)
    # and it keeps the merged table, which holds the two lost shards' rows, for the sweep that
    # recomputes them (pytest re-emits a warning its match leaves out: name both)
    assert any("results.parquet kept as it is: it holds 2 shard(s)" in m for m in said)
    assert set(df.rep) == {0}


def test_merged_table_is_read_only_while_it_matches_the_shards(local_run, copy):
    merged = pd.read_parquet(copy / "results.parquet")
    recorded = store._recorded_shards(copy / "results.parquet")
    assert recorded is not None and len(recorded) == 4
    same_table(merged, local_run[1])
    # a stale merged table (its shard set no longer on disk) is rebuilt, not read
    (copy / "results.parquet").write_bytes(pd.DataFrame({"x": [1]}).to_parquet())
    same_table(mt.load_results(copy), local_run[1])
    same_table(pd.read_parquet(copy / "results.parquet"), local_run[1])


# ---- one writer per shard ---------------------------------------------------------------------

def test_claims_block_live_writers_and_expire_with_them(tmp_path):
    shard = plan(parse_config(TINY))[0]
    mine = store.try_claim(tmp_path, shard)
    assert isinstance(mine, store.Claim)
    # a second claim while this (live) process holds it is refused
    holder = store.try_claim(tmp_path, shard)
    assert isinstance(holder, store.ClaimInfo) and holder.pid == os.getpid()
    assert store.claim_holder(tmp_path, shard) is not None
    mine.release()
    assert store.claim_holder(tmp_path, shard) is None
    # a claim of a process that is gone (kill -9 leaves it behind) is stale and taken over
    path = store.claim_path(tmp_path, shard)
    path.write_text(json.dumps({"host": store.HOST, "pid": dead_pid(), "time": 0}))
    assert store.claim_holder(tmp_path, shard) is None
    assert isinstance(store.try_claim(tmp_path, shard), store.Claim)
    # another host's claim expires when nobody touched it for STALE_AFTER_S
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    assert store.claim_holder(tmp_path, shard) is not None
    old = time.time() - store.STALE_AFTER_S - 1
    os.utime(path, (old, old))
    assert store.claim_holder(tmp_path, shard) is None


def _taken_over(out: Path, shard) -> store.Claim:
    """Another writer's takeover of this process's claim on ``shard``, once it went stale (its
    writer stopped, a laptop asleep or a process paused, past STALE_AFTER_S): the new claim."""
    path = store.claim_path(out, shard)
    old = time.time() - store.STALE_AFTER_S - 1
    os.utime(path, (old, old))
    new = store.try_claim(out, shard)
    assert isinstance(new, store.Claim)
    return new


def test_a_claim_taken_over_is_not_touched_by_its_old_writer(tmp_path):
    """A touch that refreshed whatever claim was at the path kept the new writer's claim alive
    after it died (and the old writer never learned it had lost the shard)."""
    shard = plan(parse_config(TINY))[0]
    mine = store.try_claim(tmp_path, shard)
    mine.touch()  # its own: refreshed
    theirs = _taken_over(tmp_path, shard)
    path = store.claim_path(tmp_path, shard)
    old = time.time() - 100
    os.utime(path, (old, old))
    whose = rf"{re.escape(str(path))}: .* taken over by {store.HOST}:{os.getpid()}"
    with pytest.raises(store.ClaimLost, match=whose):
        mine.touch()
    assert path.stat().st_mtime == pytest.approx(old)
    assert path.read_bytes() == theirs.raw
    mine.release()  # not its claim: left alone
    assert path.read_bytes() == theirs.raw
    theirs.release()
    with pytest.raises(store.ClaimLost, match="removed"):
        mine.touch()


def test_a_writer_whose_claim_was_taken_over_stores_nothing(tmp_path, monkeypatch):
    """A worker whose claim went stale while it fitted, and was taken over, wrote its shard over
    the new writer's and kept that writer's claim alive with its heartbeat: it stores nothing,
    its heartbeat stops, and it says whose the shard is now."""
    config = parse_config(TINY)
    out = tmp_path / "out"
    store.write_manifest(out, config)
    shard = plan(config)[0]
    path = store.claim_path(out, shard)
    monkeypatch.setattr(store, "HEARTBEAT_S", 0.01)
    new: list[store.Claim] = []
    old = time.time() - 100

    def fit_taken_over(*args, **kwargs):
        new.append(_taken_over(out, shard))
        os.utime(path, (old, old))
        time.sleep(0.3)  # heartbeats
        return pd.DataFrame({"rep": [0]}), 1, 0

    monkeypatch.setattr(sweep, "fit_in_blocks", fit_taken_over)
    meta = sweep.compute_shard(shard, config=config, out=out)
    assert meta["status"] == "lost" and meta["worker"] == f"{store.HOST}:{os.getpid()}"
    assert not shard_path(out, shard).exists()
    assert not store.checksum_path(shard_path(out, shard)).exists()
    assert path.read_bytes() == new[0].raw  # the new writer's claim, kept
    assert path.stat().st_mtime == pytest.approx(old)  # and not refreshed


def test_a_claim_missing_for_a_moment_is_beaten_on_and_stored_under(tmp_path, monkeypatch):
    """A writer breaking a claim it read as stale renames the file away and links it back when
    it finds it live: a heartbeat that fired in between read the claim as lost and stopped for
    good, so the claim, back and still this writer's, went stale under it, and a final touch
    there threw the finished shard away. Missing for a moment, the claim is beaten on and
    looked for again before the store; another writer's bytes still stop both at once."""
    config = parse_config(TINY)
    out = tmp_path / "out"
    store.write_manifest(out, config)
    shard = plan(config)[0]
    path = store.claim_path(out, shard)
    aside = path.with_name(path.name + ".aside")
    monkeypatch.setattr(store, "HEARTBEAT_S", 0.01)
    touched_after = []

    def fit_while_a_breaker_holds_the_file(*args, **kwargs):
        os.replace(path, aside)  # a stale-breaker's rename: the claim is missing
        time.sleep(0.1)  # heartbeats find no file
        os.replace(aside, path)  # ... and its link back of a live claim
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.1)  # the heartbeat, still running, refreshes it
        touched_after.append(path.stat().st_mtime > old + 50)
        os.replace(path, aside)  # missing again, now at the store's own touch
        threading.Timer(0.2, os.replace, (aside, path)).start()
        return pd.DataFrame({"rep": [0]}), 1, 0

    monkeypatch.setattr(sweep, "fit_in_blocks", fit_while_a_breaker_holds_the_file)
    monkeypatch.setattr(store, "write_shard", lambda out_, shard_, rows: "stored")
    meta = sweep.compute_shard(shard, config=config, out=out)
    assert touched_after == [True]
    assert meta["status"] != "lost"
    assert not path.exists()  # released, its own


def test_cleanup_removes_only_temporary_files_of_writers_that_are_gone(tmp_path):
    folder = tmp_path / "shards" / "s"
    folder.mkdir(parents=True)
    live = folder / f".a.parquet~{store.HOST}~{os.getpid()}~0.tmp"
    gone = folder / f".b.parquet~{store.HOST}~{dead_pid()}~0.tmp"
    remote = folder / ".c.parquet~elsewhere~1~0.tmp"
    for path in (live, gone, remote):
        path.write_bytes(b"half")
    assert store.remove_stale_temp_files(tmp_path) == [gone]
    assert live.exists() and remote.exists()


def test_two_concurrent_sweeps_compute_each_shard_once(tmp_path):
    config = tmp_path / "shared.toml"
    config.write_text(toml(SHARED))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "moe_theory.cli", "sweep", str(config), "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    logs = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs
    done = [key for log in logs for key in computed(log.splitlines())]
    assert sorted(done) == sorted(s.key for s in plan(parse_config(SHARED))), logs
    want = sweep.run_sweep(parse_config(SHARED), tmp_path / "alone", log=lambda msg: None)
    same_table(pd.read_parquet(out / "results.parquet"), want)
    assert not list(out.rglob("*.tmp")) and not list((out / "claims").rglob("*.claim"))


# ---- file-system errors -----------------------------------------------------------------------

@pytest.mark.parametrize("error, words", [
    (PermissionError(errno.EACCES, "Permission denied"), "read-only"),
    (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
])
def test_unwritable_folder_exits_3_keeping_finished_shards(config_path, local_run, tmp_path,
                                                           monkeypatch, capsys, error, words):
    """The folder turns read-only (or full) after the first shard: exit 3 naming the path, the
    first shard kept whole, no partial file; once writable again, a rerun finishes the table."""
    out = tmp_path / "out"
    real_replace, shards_written, refused = os.replace, [], []

    def replace(src, dst):
        if str(dst).endswith(".parquet") and "shards" in str(dst):
            if shards_written:
                refused.append(Path(dst))
                raise error
            shards_written.append(Path(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["sweep", str(config_path), "--out", str(out)]) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    # shards go out largest first (moe_theory.executors.shard_cost), not in plan order
    second = refused[0]
    assert str(second) in err and words in err and "Traceback" not in err
    assert not second.exists() and not list(out.rglob("*.tmp"))
    (first,) = [s for s in plan(parse_config(TINY)) if shard_path(out, s) == shards_written[0]]
    assert store.verified_shards(out, plan(parse_config(TINY))).keys() == {first}
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["sweep", str(config_path), "--out", str(out)]) == 0
    same_table(pd.read_parquet(out / "results.parquet"), local_run[1])


def test_read_only_folder_for_real_exits_3(config_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        probe = out / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user writes into read-only folders (root): simulated above")
        assert main(["sweep", str(config_path), "--out", str(out)]) == EXIT_ENVIRONMENT
        assert str(out) in capsys.readouterr().err
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_out_naming_a_file_exits_3_naming_it(config_path, tmp_path, capsys, command):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    name = str(config_path) if command == "sweep" else "nguyen2024"
    argv = [command, name, "--out", str(target)] + (["--fast"] if command == "reproduce" else [])
    assert main(argv) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert f"{target}: is a file, not a folder" in err
    assert target.read_text() == "not a folder"


def test_triton_on_the_cpu_without_the_interpreter_is_refused_before_any_file(tmp_path,
                                                                               monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="backend: 'triton'"):
        sweep.run_sweep(parse_config(TINY), out, backend="triton", log=lambda msg: None)
    assert not out.exists()


# ---- reproducibility --------------------------------------------------------------------------

def test_a_csv_table_reads_back_every_float_bit_for_bit(tmp_path):
    """A committed table (results.csv.gz, fits.csv.gz) is read back as the numbers written, on
    every pandas: 3.0.6's default parser read 0.020017540400954822 as 0.0200175404009548, and
    `moe-theory compare` called the same fits different (store.read_csv)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([[0.020017540400954822, 7.281019131421747e-10, 5e-324],
                             rng.standard_normal(5000) * 10.0 ** rng.integers(-300, 300, 5000)])
    store._write_csv(tmp_path / "t.csv.gz", pd.DataFrame({"x": values}))
    back = store.read_csv(tmp_path / "t.csv.gz")["x"].to_numpy()
    assert back.dtype == np.float64 and np.array_equal(back.view(np.int64), values.view(np.int64))


@pytest.mark.parametrize("digest", ["441737e34545", "123456789012", "00000000001e", "0x1f"])
def test_a_config_hash_reads_back_as_text(tmp_path, digest):
    """A config hash that reads as a number (12 hex digits in e-notation read as inf, digits
    alone as an integer) comes back as the text written, so a folder's certificates still match
    its table's hash, and a table written back keeps it. So does a row's code version (the
    same kind of digits), and a row without one stays missing."""
    table = pd.DataFrame({"loss_value": [1.5, 2.5], "config_hash": [digest, digest],
                          "code": [digest, None]})
    store._write_csv(tmp_path / "t.csv.gz", table)
    back = store.read_csv(tmp_path / "t.csv.gz")
    assert list(back["config_hash"]) == [digest, digest]
    assert back["code"][0] == digest and back["code"].isna()[1]
    assert back["loss_value"].dtype == np.float64
    store._write_csv(tmp_path / "again.csv.gz", back)
    assert (tmp_path / "again.csv.gz").read_bytes() == (tmp_path / "t.csv.gz").read_bytes()


def test_a_committed_folder_reads_its_certificates():
    """The committed pilot whose config hash reads as a number: its reference certificate
    applies to its curves (not "not run")."""
    from moe_theory.certificates import FolderCertificates
    from moe_theory.rates import rates_table

    folder = (Path(__file__).parents[2]
              / "paper_figures/nguyen2024-measurable/starts/gelu_d4_groupbox15_pilot")
    results = store.load_results(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(results["config_hash"]) == {manifest["config_hash"]} == {"441737e34545"}
    table = rates_table(results, certificates=FolderCertificates.load(folder))
    assert set(table["cert_reference"]) == {"pass", "fail"}


def test_block_is_planned_against_fixed_memory_not_the_free_count(monkeypatch):
    """The free count moves with the page cache and other processes; a block chosen from it made
    a resumed sweep's rows differ in the last bits from an uninterrupted one's (on a GPU, one
    run beside other processes from one alone)."""
    import kernels.memory

    before = sweep.memory_rep_block(parse_config(TINY), "small-sparse-relu", 200, "cpu")
    sysconf = os.sysconf
    monkeypatch.setattr(kernels.memory.os, "sysconf", lambda name: (
        1 if name == "SC_AVPHYS_PAGES" else sysconf(name)))  # one free page
    assert sweep.memory_rep_block(parse_config(TINY), "small-sparse-relu", 200, "cpu") == before
    monkeypatch.setattr(kernels.memory, "physical_memory", lambda: 1)
    assert sweep.memory_rep_block(parse_config(TINY), "small-sparse-relu", 200, "cpu") == 1

    # a GPU's: its total, whatever the free count (simulated: its properties and driver query)
    class H100:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1, H100.total_memory))
    cap = sweep.memory_rep_block(parse_config(TINY), "small-sparse-relu", 10**6, "cuda")
    budget = sweep.MEMORY_FRACTION * H100.total_memory - JACOBIAN_CHUNK_BYTES["cuda"]
    assert cap == int(budget // (sweep.BYTES_PER_REP_SAMPLE_COORD * 10**6 * 3)) > 1


def test_resume_with_another_thread_count_warns(copy, monkeypatch):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["cpu_threads"] = torch.get_num_threads() + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    lines: list[str] = []
    sweep.run_sweep(parse_config(TINY), copy, log=lines.append)
    assert any("CPU thread" in line and "last bits" in line for line in lines)
    # the record describes the shards on disk: a resumption keeps it, and warns again (it had
    # rewritten it with its own count, and the next resumption said nothing)
    assert json.loads((copy / "manifest.json").read_text())["cpu_threads"] == (
        torch.get_num_threads() + 1)
    again: list[str] = []
    sweep.run_sweep(parse_config(TINY), copy, log=again.append)
    assert any("CPU thread" in line for line in again)


def test_a_sweep_resumed_by_other_code_says_so_and_its_table_names_both(tmp_path, monkeypatch):
    """A sweep resumed after the toolkit's code changed keeps its finished shards: its table
    holds rows of two versions, which no run of one version reproduces. Each row names the code
    that fitted it (``code``), the resumption warns, and the rates table's notes name both."""
    from moe_theory import provenance
    from moe_theory.rates import rates_table

    config = parse_config(TINY)
    older = "0123456789ab"
    monkeypatch.setattr(sweep, "code_version", lambda: older)
    sweep.run_sweep(config, tmp_path, log=lambda msg: None)
    (shard, *_), = [sorted((tmp_path / "shards").rglob("*.parquet"))]
    store.checksum_path(shard).unlink()
    shard.unlink()
    (tmp_path / store.RESULTS_PARQUET).unlink()
    monkeypatch.undo()
    mine = provenance.code_version()
    assert mine is not None and len(mine) == provenance.CODE_DIGITS and mine != older
    lines: list[str] = []
    df = sweep.run_sweep(config, tmp_path, log=lines.append)
    assert any("3 of the 3 finished shard(s)" in line and f"3 by {older}" in line
               and f"this process runs {mine}" in line for line in lines)
    fits = df.drop_duplicates(["n", "rep"])
    assert fits["code"].value_counts().to_dict() == {older: 3, mine: 1}
    note = f"fits computed by 2 versions of the code (3 by {older}, 1 by {mine})"
    assert rates_table(df)["reason"].str.contains(note, regex=False).all()
    # one version alone, or a table from before the column: no note, no warning
    quiet: list[str] = []
    sweep.run_sweep(config, tmp_path / "fresh", log=quiet.append)
    assert not any("other code" in line for line in quiet)
    fresh = store.load_results(tmp_path / "fresh")
    assert not rates_table(fresh)["reason"].str.contains("versions").any()
    assert not rates_table(fresh.drop(columns="code"))["reason"].str.contains("versions").any()
    # shards that the references' --force deletes are not counted: the warning comes after
    forced = tmp_path / "forced"
    monkeypatch.setattr(sweep, "code_version", lambda: older)
    sweep.run_sweep(config, forced, log=lambda msg: None)
    first = sorted((forced / "shards").rglob("*.parquet"))[0]
    store.checksum_path(first).unlink()
    first.unlink()
    monkeypatch.undo()
    prepare = sweep.prepare_references

    def prepare_then_force(config, out, **kwargs):
        prepare(config, out, **kwargs)
        store.discard_setting(out, config.settings[0])  # as --force after a changed G_bar

    monkeypatch.setattr(sweep, "prepare_references", prepare_then_force)
    said: list[str] = []
    again = sweep.run_sweep(config, forced, log=said.append)
    assert not any("other code" in line for line in said)
    assert set(again["code"]) == {mine}


# ---- the Python API refuses what it cannot do -------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_on_a_missing_device_names_it_and_what_is_available():
    truth = mt.get_setting("small-sparse-relu").truth()
    with pytest.raises(ValueError, match=r"device: 'cuda' is not available .*available: cpu"):
        mt.sample(truth, 10, 1, device="cuda")


@pytest.mark.parametrize("start", ["reference", "init"])
def test_fit_refuses_fewer_atoms_than_the_truth(start):
    setting = mt.get_setting("small-sparse-relu")
    truth = setting.truth()
    X, Y = mt.sample(truth, 50, 1)
    given = {"reference": truth} if start == "reference" else {"init": mt.near_truth(truth, 2)}
    with pytest.raises(ValueError, match=rf"^k: .*k\* = {truth.k}"):
        mt.fit_lse(X, Y, truth.k - 1, "sigmoid", setting.expert, setting.score, **given)


def test_a_resumed_sweep_refuses_shards_measured_against_another_g_bar(tmp_path):
    """G_bar depends on the device's design size and the library's version, not only on the
    config: a folder records the references its shards were measured against, and a resumption
    whose G_bar differs beyond rounding is refused, naming it, unless --force recomputes them."""
    config = parse_config(TINY)
    store.write_manifest(tmp_path, config)
    setting = "small-sparse-relu"
    shard = tmp_path / "shards" / setting / "n000000100_reps00000-00001.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"rows")
    cert = mt.certificates.reference_path(tmp_path, setting, "sigmoid")
    cert.parent.mkdir(parents=True)
    cert.write_text("{}")
    ref = mt.get_setting(setting).truth()
    lines: list[str] = []

    def check(measure, force=False):
        sweep.check_references(tmp_path, {(setting, "sigmoid"): measure}, force=force,
                               log=lines.append, design_size=1234)

    # shards written before references were recorded cannot be checked
    with pytest.raises(ValueError, match="reference: .* written before references were recorded"):
        check(ref)
    shard.rename(shard.with_suffix(".keep"))
    check(ref)  # no shards yet: the reference is recorded, a certificate of unknown G_bar goes
    assert not cert.exists()
    cert.write_text("{}")  # the recorded G_bar's certificate
    shard.with_suffix(".keep").rename(shard)
    assert store.read_manifest(tmp_path)["references"] == {f"{setting}/sigmoid": ref.to_json()}
    assert store.read_manifest(tmp_path)["reference_design_sizes"] == {f"{setting}/sigmoid": 1234}
    check(ref)
    # a resumption rewrites the manifest and keeps the record, with its design size
    store.write_manifest(tmp_path, config)
    assert f"{setting}/sigmoid" in store.read_manifest(tmp_path)["references"]
    assert store.read_manifest(tmp_path)["reference_design_sizes"] == {f"{setting}/sigmoid": 1234}

    def scaled(factor):
        return mt.MixingMeasure(ref.gate, ref.score, ref.expert, ref.d,
                                ref.gate_params * factor, ref.expert_params)

    check(scaled(1 + 1e-9))  # rounding: a warning, the shards and the record stay
    assert shard.exists() and "last bits" in lines[-1]
    assert store.read_manifest(tmp_path)["references"][f"{setting}/sigmoid"] == ref.to_json()
    with pytest.raises(ValueError, match=f"reference: the G_bar of {setting}/sigmoid"):
        check(scaled(1.01))
    assert shard.exists() and cert.exists()  # nothing is lost by a refusal
    check(scaled(1.01), force=True)
    assert not shard.exists() and not cert.exists()
    assert "deleted" in lines[-1]
    assert store.read_manifest(tmp_path)["references"][f"{setting}/sigmoid"] == \
        scaled(1.01).to_json()
    # a folder without shards but with a certificate of the old G_bar: the certificate goes
    cert.write_text("{}")
    check(scaled(1.02))
    assert not cert.exists()
    # a finished folder that keeps only its merged table (a committed figure's): its rows were
    # measured against the recorded G_bar too (a preflight into a copy of one replaced it and
    # moved its check aside, the table left measured against the old one)
    table = tmp_path / "results.csv.gz"
    table.write_bytes(b"rows")
    (tmp_path / "fits.csv.gz").write_bytes(b"fits")
    with pytest.raises(ValueError, match=r"merged table \(results.csv.gz\)"):
        check(scaled(1.03))
    assert table.exists()
    assert store.read_manifest(tmp_path)["references"][f"{setting}/sigmoid"] == \
        scaled(1.02).to_json()
    check(scaled(1.03), force=True)
    assert not table.exists() and "moved to replaced-" in lines[-1]
    (aside,) = tmp_path.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["fits.csv.gz", "results.csv.gz"]


def test_a_committed_figure_folder_loads_from_its_csv(tmp_path, local_run):
    """Figure folders are committed with results.csv alone (no shards, no parquet)."""
    _, table = local_run
    table.to_csv(tmp_path / "results.csv", index=False)
    loaded = mt.load_results(tmp_path)
    assert len(loaded) == len(table) and list(loaded.columns) == list(table.columns)
    (tmp_path / "results.csv").unlink()
    with pytest.raises(ValueError, match="DIR: .* has no results"):
        mt.load_results(tmp_path)


def test_a_folder_keeps_its_table_gzipped_when_it_was(tmp_path, local_run):
    """A committed figure folder may keep its table as results.csv.gz (the large ones do): it
    loads the same, and a merge writes the table back in that form, the same bytes each time,
    with no plain results.csv beside it."""
    out, table = local_run
    folder = tmp_path / "figure"
    shutil.copytree(out, folder)
    plain = (folder / "results.csv").read_bytes()
    (folder / "results.csv").unlink()
    (folder / "results.csv.gz").write_bytes(gzip.compress(plain, mtime=0))
    assert store.results_csv(folder).name == "results.csv.gz"
    (folder / "results.parquet").unlink()
    store.merge(folder)
    assert not (folder / "results.csv").exists()
    first = (folder / "results.csv.gz").read_bytes()
    assert gzip.decompress(first) == plain
    (folder / "results.parquet").unlink()
    store.merge(folder)
    assert (folder / "results.csv.gz").read_bytes() == first
    shutil.rmtree(folder / "shards")
    (folder / "results.parquet").unlink()
    loaded = mt.load_results(folder)
    pd.testing.assert_frame_equal(loaded, pd.read_csv(io.BytesIO(plain)))
    pd.testing.assert_frame_equal(mt.load_results(folder / "results.csv.gz"), loaded)


def test_reproduce_refuses_another_configs_folder_unless_forced(tmp_path, config_path):
    """`moe-theory reproduce --force` is the same remedy as `sweep --force`."""
    from moe_theory.reproduce import reproduce

    store.write_manifest(tmp_path, parse_config({**TINY, "name": "another", "n": [100]}))
    with pytest.raises(ValueError, match="out: .* holds results of another config"):
        reproduce(str(config_path), out=tmp_path)
    table = reproduce(str(config_path), out=tmp_path, force=True)
    assert len(table) > 0
    assert store.read_manifest(tmp_path)["config_hash"] == parse_config(TINY).hash


#: TINY's data with the softmax fit, whose reference is G_bar (a population fit on the CPU).
TINY_GBAR = {**TINY, "name": "tiny-gbar", "fit_gates": ["softmax"]}


def test_a_rerun_adopts_the_references_its_source_folder_records(tmp_path, monkeypatch):
    """--references-from: a re-run of a folder fits against the G_bars the folder records,
    without fitting any G_bar again, and gives its table bit for bit; a config of another grid
    adopts them too; a source without the reference, with another number of atoms, fitted on
    another device type's design, or a folder already holding other references is refused,
    naming the field, with nothing written to the source."""
    config = parse_config(TINY_GBAR)
    first = sweep.run_sweep(config, tmp_path / "a", log=lambda msg: None)
    source = store.read_manifest(tmp_path / "a")
    key = "small-sparse-relu/softmax"
    assert key in source["references"] and "references_from" not in source
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*.json")}

    # a fresh G_bar cache whose fit fails: the re-run must read the recorded G_bar only
    monkeypatch.setenv("MOE_THEORY_CACHE", str(tmp_path / "empty-cache"))

    def no_fit(*args, **kwargs):
        raise AssertionError("G_bar fitted again")

    monkeypatch.setattr(mt.population, "_fit_population", no_fit)
    lines: list[str] = []
    assert main(["sweep", str(_tiny_gbar_toml(tmp_path)), "--out", str(tmp_path / "b"),
                 "--references-from", str(tmp_path / "a")]) == 0
    again = store.load_results(tmp_path / "b")
    same_table(again, first)
    adopted = store.read_manifest(tmp_path / "b")
    assert adopted["references"][key] == source["references"][key]
    assert adopted["references_from"] == str(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "b" / "certificates").glob("*.json")) == \
        sorted(p.name for p in (tmp_path / "a" / "certificates").glob("*.json"))
    # a resumption keeps reading them (the record outlives write_manifest)
    sweep.prepare_references(config, tmp_path / "b", log=lines.append)
    assert any("read from the folder's manifest" in line for line in lines)

    from moe_theory.reproduce import reproduce

    with pytest.raises(ValueError, match="references_from: give one config"):
        reproduce("all", references_from=tmp_path / "a")
    # a config of another grid adopts them too (G_bar does not depend on the grid); its
    # certificates are its own, computed against the adopted G_bar, with no G_bar fitted
    more = parse_config({**TINY_GBAR, "name": "tiny-gbar-more", "reps": 3, "n": [100, 200, 400]})
    assert sweep.adopt_references(more, tmp_path / "more", tmp_path / "a") == [key]
    assert not (tmp_path / "more" / "certificates").exists()
    sweep.run_sweep(more, tmp_path / "more", log=lambda msg: None)
    (cert,) = mt.certificates.load_reference_certificates(tmp_path / "more").values()
    assert cert.config_hash == more.hash and cert.n_max == 400
    with pytest.raises(ValueError, match=f"references_from: the G_bar of {key} .* 3 atoms, "
                                          "this config fits 4"):
        sweep.adopt_references(parse_config({**TINY_GBAR, "k_fit": 4}), tmp_path / "c",
                               tmp_path / "a")
    with pytest.raises(ValueError, match="references_from: .* no manifest.json"):
        sweep.adopt_references(config, tmp_path / "c", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=f"references_from: the G_bar of {key} .* design points"):
        sweep.adopt_references(config, tmp_path / "c", tmp_path / "a", device="cuda")
    store.write_manifest(tmp_path / "d", config)
    store.record_references(tmp_path / "d", {key: config.setting_objects()[0].truth().to_json()})
    held = (tmp_path / "d" / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=f"references_from: .* other references for {key}"):
        sweep.adopt_references(config, tmp_path / "d", tmp_path / "a")
    assert (tmp_path / "d" / "manifest.json").read_bytes() == held  # refused before writing
    # a sweep that records its own G_bar in the folder after the check above read it: the
    # record is refused, not overwritten (the check and the record had been two steps)
    other = config.setting_objects()[0].truth().to_json()
    real_write = sweep.write_manifest

    def meanwhile(out, *args, **kwargs):
        real_write(out, *args, **kwargs)
        store.record_references(out, {key: other})

    monkeypatch.setattr(sweep, "write_manifest", meanwhile)
    with pytest.raises(ValueError, match=f"^references_from: another sweep recorded the G_bar "
                                         f"of {key} .* use another --out$"):
        sweep.adopt_references(config, tmp_path / "f", tmp_path / "a")
    assert store.read_manifest(tmp_path / "f")["references"] == {key: other}
    monkeypatch.undo()
    monkeypatch.setenv("MOE_THEORY_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(mt.population, "_fit_population", no_fit)
    older = store.read_manifest(tmp_path / "a")
    del older["reference_design_sizes"]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="references_from: .* records no design size"):
        sweep.adopt_references(config, tmp_path / "c", tmp_path / "e")
    # a folder that adopted a G_bar of another design refuses to resume on this device
    manifest = store.read_manifest(tmp_path / "b")
    manifest["reference_design_sizes"][key] += 1
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"reference: .* adopted the G_bar of {key}"):
        sweep.prepare_references(config, tmp_path / "b", log=lines.append)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*.json")} == before


def test_a_bad_flag_beside_references_from_is_refused_before_the_folder_is_touched(tmp_path):
    """Adopting references writes the manifest (and --force sets the folder's run aside): a
    sweep option the sweep itself would refuse is refused first, naming the flag, and the
    folder's files are those it held. It used to be checked after the adoption, so that a
    mistyped flag beside --force set a finished run aside and left the folder another's."""
    sweep.run_sweep(parse_config(TINY_GBAR), tmp_path / "a", log=lambda msg: None)
    other = parse_config({**TINY, "name": "other-run", "seed": 7})
    sweep.run_sweep(other, tmp_path / "held", log=lambda msg: None)

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path / "held")): p.read_bytes()
                for p in sorted((tmp_path / "held").rglob("*")) if p.is_file()}

    held = files()
    bad = [["--local-workers", "2"], ["--executor", "nope"], ["--gpus", "0"],
           ["--device", "tpu"]]
    for flags in bad:
        try:
            code = main(["sweep", str(_tiny_gbar_toml(tmp_path)), "--out", str(tmp_path / "held"),
                         "--references-from", str(tmp_path / "a"), "--force", *flags])
        except SystemExit as exit_:  # a choice argparse refuses itself
            code = exit_.code
        assert code == 2, flags
        assert files() == held, flags
    from moe_theory.reproduce import reproduce

    for options in ({"gpus": "0"}, {"local_workers": 2, "gpus": "0", "device": "cuda"},
                    {"device": "cuda", "backend": "triton"}):
        with pytest.raises(ValueError, match="--gpus|device|backend"):
            reproduce(str(_tiny_gbar_toml(tmp_path)), out=tmp_path / "held", force=True,
                      references_from=tmp_path / "a", **options)
        assert files() == held, options


def _tiny_gbar_toml(folder: Path) -> Path:
    path = folder / "tiny-gbar.toml"
    path.write_text(toml(TINY_GBAR))
    return path


def _record_once_both_have_read(folder: str, key: str, ready, read) -> None:
    """In a spawned process: record the reference ``key`` in ``folder``'s manifest as soon as
    the other process is ready to record its own, and keep what was read until the other has
    read too (or 2 s passed: it cannot read while this one updates)."""
    read_manifest = store.read_manifest

    def read_then_wait(out):
        manifest = read_manifest(out)
        with contextlib.suppress(threading.BrokenBarrierError):
            read.wait(2)
        return manifest

    store.read_manifest = read_then_wait
    ready.wait(120)
    store.record_references(Path(folder), {key: "{}"})


def test_two_processes_updating_the_manifest_at_once_lose_neither_update(tmp_path):
    """Each update reads the manifest, adds its part and writes the whole: two at once both read
    the old one, and the second write dropped the first's part (a G_bar reference, whose shards
    then could not be checked). Both reads are held until the other has read: without a lock
    around the update, one part is lost every time."""
    store.write_manifest(tmp_path, parse_config(TINY))
    spawn = mp.get_context("spawn")
    ready, read = spawn.Barrier(2), spawn.Barrier(2)
    keys = ["a/sigmoid", "b/sigmoid"]
    processes = [spawn.Process(target=_record_once_both_have_read,
                               args=(str(tmp_path), key, ready, read)) for key in keys]
    for process in processes:
        process.start()
    for process in processes:
        process.join(180)
    assert [process.exitcode for process in processes] == [0, 0]
    assert sorted(store.read_manifest(tmp_path)["references"]) == keys
    # the lock's file goes with its last holder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("manifest", ["[]", "{}", '{"config": 5}', '{"config": {"name": "a"}}',
                                      '{"config": {"settings": ["s"], "n": [100], "reps": true, '
                                      '"rep_block": 1}}'])
@pytest.mark.parametrize("command", ["rates", "merge", "plot", "sweep"])
def test_a_manifest_that_is_not_a_sweeps_is_named_and_kept(tmp_path, capsys, config_path,
                                                           manifest, command):
    """Valid JSON that is no sweep's manifest gave tracebacks (TypeError, KeyError) and exit 1,
    the code of `compare` finding a difference: it is bad input, named, and left as it was."""
    (tmp_path / "manifest.json").write_text(manifest)
    (tmp_path / "shards").mkdir()  # a sweep folder's, so that every command reads the manifest
    args = [command, str(config_path), "--out", str(tmp_path)] if command == "sweep" else [
        command, str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'manifest.json'} is not a sweep manifest" in err
    assert len(err.splitlines()) == 1
    assert (tmp_path / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["manifest.json", "shards"]


def test_a_sweep_refuses_a_studys_folder_unless_forced(tmp_path, capsys, config_path):
    """A study's folder has results and run.json but no manifest: a sweep there replaced its
    tables and left its run.json and figure, a folder of two runs."""
    kept = {"results.csv.gz": b"study rows", "run.json": b'{"experiment": "x"}',
            "rates.json": b"[]"}
    for name, data in kept.items():
        (tmp_path / name).write_bytes(data)
    assert main(["sweep", str(config_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds another run's results (results.csv.gz, run.json, rates.json)" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept
    # forced, the sweep writes its own manifest and table there
    assert main(["sweep", str(config_path), "--out", str(tmp_path), "--force"]) == 0
    assert store.read_manifest(tmp_path)["config_hash"] == parse_config(TINY).hash


def test_a_study_refuses_a_sweeps_folder(tmp_path):
    """The mirror: a study writes results.csv and run.json, which would replace a sweep's."""
    from moe_theory.reproduce import reproduce

    store.write_manifest(tmp_path, parse_config(TINY))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="out: .* is a sweep's folder"):
        reproduce("attention-regularity", fast=True, out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_forced_sweep_sets_another_configs_run_aside(tmp_path, capsys):
    """--force over another config's folder deleted its shards and left its tables, rates and
    figure beside the new run's: an interrupted new run showed the old figure as its own. They
    now go, whole, to replaced-<time>/; a study's sub-folder and other files stay."""
    old = parse_config({**TINY, "name": "another", "n": [100]})
    store.write_manifest(tmp_path, old)
    outputs = {"shards/a/b.parquet": b"shard", "results.csv.gz": b"rows", "rates.txt": b"rates",
               "run.json": b"{}", "check.json": b"{}", "certificates/c.json": b"{}",
               "another.png": b"png", "another.pdf": b"pdf"}
    others = {"notes.txt": b"mine", "study/results.csv.gz": b"a study's"}
    for name, data in {**outputs, **others}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    before = (tmp_path / "manifest.json").read_bytes()
    replaced = store.write_manifest(tmp_path, parse_config(TINY), force=True)
    assert replaced is not None and replaced.parent == tmp_path
    assert replaced.name.startswith("replaced-")
    assert f"moved to {replaced.name}/" in capsys.readouterr().err
    for name, data in outputs.items():
        assert not (tmp_path / name).exists() and (replaced / name).read_bytes() == data
    assert (replaced / "manifest.json").read_bytes() == before
    for name, data in others.items():
        assert (tmp_path / name).read_bytes() == data
    assert store.read_manifest(tmp_path)["config_hash"] == parse_config(TINY).hash
    # resumed, the same config sets nothing aside
    assert store.write_manifest(tmp_path, parse_config(TINY), force=True) is None


def test_a_manifests_name_never_moves_a_file_outside_its_folder(tmp_path):
    out = tmp_path / "run"
    store.write_manifest(out, parse_config({**TINY, "name": "another", "n": [100]}))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["name"] = "../outside"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "outside.png").write_bytes(b"not the run's")
    store.write_manifest(out, parse_config(TINY), force=True)
    assert (tmp_path / "outside.png").read_bytes() == b"not the run's"


@pytest.mark.parametrize(("name", "content", "words"), [
    ("certificate", b"[]", "is not a reference certificate (a JSON list, not an object)"),
    ("certificate", b"null", "is not a reference certificate (a JSON NoneType, not an object)"),
    ("certificate", b"\xff\xfe{}", "is not a reference certificate ('utf-8' codec"),
    ("check", b"[]", "is not an optimiser check (a JSON list, not an object)"),
    ("check", b"{\xff}", "is not valid JSON ('utf-8' codec"),
    ("manifest n", None, "is not a sweep manifest (its config lacks a valid n)"),
    ("manifest rep_block", None, "is not a sweep manifest (its config lacks a valid rep_block)"),
])
def test_a_malformed_side_file_is_named_not_a_traceback(copy, capsys, name, content, words):
    """A certificate or check.json holding a list, null or bytes that are not UTF-8, and a
    manifest whose n or rep_block planning cannot read, were tracebacks (AttributeError, a
    format error, range()'s) or messages naming no file."""
    if name == "certificate":
        (path,) = sorted((copy / "certificates").glob("reference-*.json"))[:1]
    elif name == "check":
        path = copy / "check.json"
    else:
        path = copy / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["config"].update({"n": ["abc"]} if name.endswith(" n") else {"rep_block": 0})
        content = json.dumps(manifest).encode()
    path.write_bytes(content)
    for command in ("rates", "plot", "report"):
        assert main([command, str(copy)]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"moe-theory: error: DIR: {path} {words}"), err


def test_a_read_keeps_the_merged_table_that_holds_a_damaged_shards_rows(local_run, copy, capsys):
    """A shard damaged after its merge: rates, plot, report and merge rewrote results.parquet,
    results.csv and fits.csv.gz without its rows, though the merged table held them whole. They
    are kept (the table read lacks the shard, and says so) until the sweep recomputes it."""
    shards = plan(parse_config(TINY))
    kept = {name: (copy / name).read_bytes()
            for name in ("results.parquet", "results.csv", "fits.csv.gz") if (copy / name).exists()}
    assert "results.parquet" in kept
    damaged = shard_path(copy, shards[1])
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    assert main(["rates", str(copy)]) == 0
    err = capsys.readouterr().err
    assert "results.parquet kept as it is: it holds 1 shard(s) no longer among the finished " \
        f"ones ({shards[1].key})" in err and "3 of 4 shards" in err
    lines: list[str] = []
    assert len(store.merge(copy, report=lines.append)) < len(local_run[1])
    assert any("kept as it is" in line for line in lines)
    assert {name: (copy / name).read_bytes() for name in kept} == kept
    same_table(sweep.run_sweep(parse_config(TINY), copy, log=lambda msg: None), local_run[1])
    same_table(pd.read_parquet(copy / "results.parquet"), local_run[1])


def test_a_merged_table_is_kept_only_for_shards_a_sweep_will_finish(copy, capsys):
    """The kept table is for planned shards a sweep recomputes: without a manifest (no plan)
    nothing is kept, and a merge asked to follow rewritten shards (remeasure --write) writes
    whatever the table held."""
    shards = plan(parse_config(TINY))
    one = len(pd.read_parquet(shard_path(copy, shards[0])))
    damaged = shard_path(copy, shards[1])
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    assert len(store.merge(copy, report=lambda msg: None, keep=False)) == 3 * one
    assert len(pd.read_parquet(copy / "results.parquet")) == 3 * one
    (copy / "manifest.json").unlink()
    shard_path(copy, shards[2]).unlink()
    assert len(store.merge(copy, report=lambda msg: None)) == 2 * one
    assert len(pd.read_parquet(copy / "results.parquet")) == 2 * one


def test_a_shard_that_never_verifies_stops_the_sweep(monkeypatch, tmp_path):
    """A worker whose rows carry another config hash every time (another version of the
    toolkit) had its shard set aside and computed again for ever: after SHARD_RUNS_MAX runs
    the sweep stops naming it, exit 3's ResourceError, finished shards kept."""
    real = sweep.write_shard
    first = plan(parse_config(TINY))[0]

    def foreign(out, shard, rows):
        if shard == first:
            rows = rows.assign(config_hash="0123456789ab")
        return real(out, shard, rows)

    monkeypatch.setattr(sweep, "write_shard", foreign)
    lines: list[str] = []
    with pytest.raises(ResourceError, match=rf"^{first.key}: computed {sweep.SHARD_RUNS_MAX} "
                       r"times by this sweep and set aside each time"):
        sweep.run_sweep(parse_config(TINY), tmp_path / "out", log=lines.append)
    assert sum(f"damaged shard {first.key}: its rows were written by another config (hash "
               "0123456789ab)" in line for line in lines) == sweep.SHARD_RUNS_MAX
    assert len(list((tmp_path / "out" / "shards").rglob("*.parquet"))) == 3


def test_a_merge_cut_between_its_files_leaves_no_copy_that_reads_trust(tmp_path, monkeypatch):
    """results.parquet, whose shard checksums make every read trust the merged files, is
    written after the CSV and fits copies: a merge killed between them leaves a record that no
    longer matches the shards, so the next read merges and writes every file again. Written
    first, it had left the CSV and fits of an earlier, partial merge, trusted by every read."""
    config = parse_config(TINY)
    out = tmp_path / "out"
    store.write_manifest(out, config)
    sweep.prepare_references(config, out, log=lambda msg: None)
    shards = plan(config)
    for shard in shards[:2]:
        sweep.compute_shard(shard, config=config, out=out)
    store.merge(out, report=lambda msg: None)  # a partial merge: its three files
    for shard in shards[2:]:
        sweep.compute_shard(shard, config=config, out=out)

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(store, "write_fits", killed)
        with pytest.raises(Killed):
            store.merge(out, report=lambda msg: None)
    full = store.load_results(out, report=lambda msg: None)
    assert len(full) == len(store._table(out, dict.fromkeys(shards, "")))
    same_table(store.read_csv(out / "results.csv"), full.drop(columns=store.FIT_MEASURE))
    fits = store.read_csv(out / store.FITS_FILE)
    assert len(fits) == len(store.fit_table(full)) == config.reps * len(config.n)


def test_a_table_past_the_csv_limit_leaves_no_stale_csv_beside_it(tmp_path, monkeypatch):
    """Past CSV_MAX_ROWS the merged table has no CSV copy: one an earlier, smaller merge wrote
    is removed (it had stayed beside the full table, the partial one)."""
    config = parse_config(TINY)
    out = tmp_path / "out"
    store.write_manifest(out, config)
    sweep.prepare_references(config, out, log=lambda msg: None)
    shards = plan(config)
    sweep.compute_shard(shards[0], config=config, out=out)
    partial = store.merge(out, report=lambda msg: None)
    assert (out / "results.csv").exists()
    for shard in shards[1:]:
        sweep.compute_shard(shard, config=config, out=out)
    monkeypatch.setattr(store, "CSV_MAX_ROWS", len(partial))
    full = store.merge(out, report=lambda msg: None)
    assert len(full) > len(partial)
    assert not (out / "results.csv").exists() and not (out / "results.csv.gz").exists()
    same_table(store.load_results(out), full)


def test_adopted_certificates_are_copied_whole_and_a_cut_copy_is_replaced(tmp_path):
    """--references-from copies the source's certificates through a temporary file; one that a
    killed copy left cut short (not JSON) is copied again by the next adoption, where it had
    been kept (the target existed) and refused every sweep of the folder."""
    config = parse_config(TINY_GBAR)
    sweep.run_sweep(config, tmp_path / "a", log=lambda msg: None)
    sweep.adopt_references(config, tmp_path / "b", tmp_path / "a")
    (source,) = sorted((tmp_path / "a" / "certificates").glob("*.json"))
    copy = tmp_path / "b" / "certificates" / source.name
    assert copy.read_bytes() == source.read_bytes()
    copy.write_bytes(source.read_bytes()[:40])
    sweep.adopt_references(config, tmp_path / "b", tmp_path / "a")
    assert copy.read_bytes() == source.read_bytes()
    sweep.run_sweep(config, tmp_path / "b", log=lambda msg: None)


def test_three_damaged_copies_set_aside_in_one_second_are_all_kept(tmp_path, monkeypatch):
    """A damaged shard set aside where one of its name already lies gets the time and, within
    one second, an "x" per copy: a third copy in the same second had replaced the second."""
    out = tmp_path / "out"
    shard = out / "shards" / "s" / "n000000100_reps00000-00001.parquet"
    monkeypatch.setattr(store.time, "strftime", lambda fmt, *args: "20261207T000000")
    for i in range(3):
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_bytes(f"damaged copy {i}".encode())
        store.move_aside(out, shard)
    kept = sorted(p.read_bytes() for p in (out / "damaged").rglob("*.parquet*"))
    assert kept == [f"damaged copy {i}".encode() for i in range(3)]


def test_an_atomic_write_flushes_the_bytes_before_the_rename_and_the_rename_after(
        tmp_path, monkeypatch):
    # the rename could reach the disk before the bytes it names: after a power cut the new
    # name held an empty file and the old one was gone. The order of the flushes is what
    # makes the write durable; a power cut cannot be simulated here, the order can.
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")
                       if os.path.exists(f"/proc/self/fd/{fd}") else fd))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "fsync", fsync)
    monkeypatch.setattr(store.os, "replace", replace)
    target = tmp_path / "table.json"
    store.atomic_write(target, lambda p: Path(p).write_text("{}"))
    assert target.read_text() == "{}"
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    if sys.platform.startswith("linux"):
        # the first flush is the temporary file's (the bytes), the last the folder's (the name)
        folder = os.path.realpath(tmp_path)
        assert events[0][1] != folder and os.path.dirname(events[0][1]) == folder
        assert events[2][1] == folder


def test_the_manifest_lock_works_where_flock_needs_a_writable_descriptor(tmp_path, monkeypatch):
    # on NFS, Linux emulates flock by a whole-file POSIX lock, which an exclusive lock takes only
    # on a descriptor open for writing: the lock file was opened read-only, so every manifest
    # update on a shared results folder failed with EBADF. Simulated here: flock refuses a
    # read-only descriptor as NFS does.
    import fcntl

    real_flock = fcntl.flock

    def nfs_flock(fd, op):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    config = parse_config(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", store.StoreWarning)  # locked, not the fallback
        store.write_manifest(tmp_path, config)
    assert store.read_manifest(tmp_path) is not None
    assert not (tmp_path / ".manifest.json.lock").exists()


def test_a_file_system_without_locks_updates_the_manifest_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(store.StoreWarning, match="takes no locks"):
        store.write_manifest(tmp_path, parse_config(TINY))
    assert store.read_manifest(tmp_path) is not None


def test_a_reference_recorded_by_another_sweep_meanwhile_is_not_overwritten(tmp_path,
                                                                            monkeypatch):
    """check_references read the manifest, then recorded its G_bar in a later update: a sweep
    started beside it (another device type: another G_bar) that recorded its own in between
    was overwritten, and its shards, measured against its own, sat under the other's record.
    Checked and recorded as one step, the second is refused, naming the key."""
    config = parse_config(TINY)
    store.write_manifest(tmp_path, config)
    setting = "small-sparse-relu"
    key = f"{setting}/sigmoid"
    ref = mt.get_setting(setting).truth()
    # another device type's G_bar: the same atoms, moved
    other = mt.MixingMeasure(ref.gate, ref.score, ref.expert, ref.d, ref.gate_params + 0.5,
                             ref.expert_params).to_json()
    read = sweep.recorded_references

    def read_then_the_other_sweep_records(out):
        seen = read(out)  # what this sweep checks against ...
        store.record_references(out, {key: other})  # ... before the sweep beside it records
        return seen

    monkeypatch.setattr(sweep, "recorded_references", read_then_the_other_sweep_records)
    with pytest.raises(ValueError, match=f"another sweep recorded the G_bar of {key}"):
        sweep.check_references(tmp_path, {(setting, "sigmoid"): ref}, force=False,
                               log=lambda msg: None, design_size=1234)
    assert store.read_manifest(tmp_path)["references"] == {key: other}
    # two sweeps of one config on one device type compute the same G_bar: the second to record
    # it is no clash (it was refused too)
    other = ref.to_json()
    second = tmp_path / "second"
    store.write_manifest(second, config)
    sweep.check_references(second, {(setting, "sigmoid"): ref}, force=False,
                           log=lambda msg: None, design_size=1234)
    assert store.read_manifest(second)["references"] == {key: other}


def test_a_forced_reference_refused_by_another_sweeps_record_deletes_no_shard(tmp_path,
                                                                             monkeypatch):
    """--force deleted a setting's shards, measured against the recorded G_bar, before its new
    record was checked against the manifest under the lock: refused there (a sweep beside it
    recorded another G_bar meanwhile), it had lost them for nothing. The deletion now waits for
    the record to be sure."""
    from moe_theory.layout import SHARDS_DIR

    config = parse_config(TINY)
    store.write_manifest(tmp_path, config)
    setting = "small-sparse-relu"
    key = f"{setting}/sigmoid"
    ref = mt.get_setting(setting).truth()

    def moved(by):
        return mt.MixingMeasure(ref.gate, ref.score, ref.expert, ref.d, ref.gate_params + by,
                                ref.expert_params).to_json()

    store.record_references(tmp_path, {key: moved(0.25)})
    shard = tmp_path / SHARDS_DIR / setting / "n100_r0.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"rows measured against the recorded G_bar")
    read = sweep.recorded_references

    def read_then_the_other_sweep_records(out):
        seen = read(out)
        store.record_references(out, {key: moved(0.5)})
        return seen

    monkeypatch.setattr(sweep, "recorded_references", read_then_the_other_sweep_records)
    said: list[str] = []
    with pytest.raises(ValueError, match=f"another sweep recorded the G_bar of {key}"):
        sweep.check_references(tmp_path, {(setting, "sigmoid"): ref}, force=True,
                               log=said.append, design_size=1234)
    assert shard.exists() and not said
    assert store.read_manifest(tmp_path)["references"] == {key: moved(0.5)}
    # unhindered, --force deletes them and records the new G_bar
    monkeypatch.undo()
    sweep.check_references(tmp_path, {(setting, "sigmoid"): ref}, force=True, log=said.append,
                           design_size=1234)
    assert not shard.exists() and any("1 shard(s)" in line for line in said)
    assert store.read_manifest(tmp_path)["references"] == {key: ref.to_json()}
    # two references replaced at once (both gates of the setting), with a merged table: the
    # second found the shards and the folder-wide table gone with the first (the deletions had
    # been planned before either ran: "0 shard(s) deleted", then a crash on the table moved)
    both = {f"{setting}/{gate}": moved(0.25) for gate in ("sigmoid", "softmax")}
    store.record_references(tmp_path, both)
    shard.write_bytes(b"rows")
    (tmp_path / store.RESULTS_PARQUET).write_bytes(b"merged rows")
    said.clear()
    sweep.check_references(tmp_path, {(setting, gate): ref for gate in ("sigmoid", "softmax")},
                           force=True, log=said.append, design_size=1234)
    assert not shard.exists() and not (tmp_path / store.RESULTS_PARQUET).exists()
    assert [sum(what in line for line in said) for what in ("shard(s)", "merged table")] == [1, 1]
    assert not any("0 shard(s)" in line for line in said)
    assert store.read_manifest(tmp_path)["references"] == {k: ref.to_json() for k in both}


def test_an_update_failing_on_a_file_system_without_locks_raises_its_own_error(tmp_path,
                                                                              monkeypatch):
    # the fallback closed the lock file's descriptor, then closed it again when the update
    # raised: an OSError (bad descriptor) hid the update's own refusal, or the number, reused
    # meanwhile, closed another file; and the lock file stayed
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(store.StoreWarning), pytest.raises(ValueError, match="the update's own"):
        with store.manifest_update(tmp_path):
            raise ValueError("the update's own error")
    assert not (tmp_path / ".manifest.json.lock").exists()


def test_another_users_manifest_lock_file_is_locked_read_only(tmp_path, monkeypatch):
    # a lock file left by another user's sweep (or held by it now) cannot be opened for writing:
    # every update failed at once, "not ours", where a local flock takes a read-only descriptor
    lock = tmp_path / ".manifest.json.lock"
    lock.write_bytes(b"")
    real_open = os.open

    def theirs(path, flags, *mode):
        if Path(path) == lock and flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(store.os, "open", theirs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", store.StoreWarning)  # locked, not the no-locks fallback
        store.write_manifest(tmp_path, parse_config(TINY))
    assert store.read_manifest(tmp_path) is not None
