"""On a real GPU, a sweep's G_bar search, reference certificates and blocks of replications wait
for memory that another process holds, then give what an undisturbed run gives
(``moe_theory.sweep.waiting_for_memory``): a block keeps its size, so its rows are the same bit for
bit.

On a CPU nothing here runs (the ``gpu`` marker skips it): tests/moe_theory/test_executors.py
simulates the error; only a device shows that a G_bar search's real out-of-memory error is
recognised as one, and that the search, repeated once the memory is back, is the same search.
"""

import gc
import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from kernels.memory import CONTEXT_BYTES, held_by_others, release_cache
from moe_theory import store, sweep
from moe_theory.config import load_config
from moe_theory.store import Shard

pytestmark = pytest.mark.gpu

#: What the other process leaves free: on an H100 a G_bar search of CONFIG's setting (10^6
#: design points, d = 2) finds 64 MiB too little (2026-12-06: three waits, then the search).
LEFT_FREE_MIB = 64
#: How long it holds the rest: past the first wait (5 s), within the second, which ends at its
#: first look at the free memory after the holder exits (sweep.MEMORY_POLL_S).
HOLD_S = 12.0

#: The other process: takes all but LEFT_FREE_MIB, says how much, holds it, exits.
HOLDER = """
import sys, time, torch
free, _ = torch.cuda.mem_get_info()
held = torch.empty(max(0, free - int(sys.argv[1]) * 2**20) // 8, dtype=torch.float64, device="cuda")
open(sys.argv[2], "w").write(str(held.numel() * 8))
time.sleep(float(sys.argv[3]))
"""

#: A softmax fit of the small sparse (sigmoid-gated) truth: measured against its own G_bar.
CONFIG = """name = "memory-waits"
settings = ["small-sparse-relu"]
fit_gates = ["softmax"]
n = [200, 400]
reps = 2
"""


def _references_stage(config, out, monkeypatch, cache, holder=None):
    """Run the sweep's references stage into a new folder ``out`` with a G_bar cache of its own
    (a search of its own); its log, recorded G_bars and certificates (timings aside)."""
    monkeypatch.setenv("MOE_THEORY_CACHE", str(cache))
    store.make_folder(out)
    store.write_manifest(out, config, force=False)
    logs = []
    try:
        sweep.prepare_references(config, out, device="cuda", log=logs.append)
    finally:
        if holder is not None:
            holder.wait()
    certificates = [{k: v for k, v in json.loads(p.read_text()).items() if k != "wall_s"}
                    for p in sorted((out / sweep.REFERENCE_DIR).glob("*.json"))]
    return logs, sweep.recorded_references(out), certificates


def _hold(tmp_path, left_free_mib: int, hold_s: float) -> subprocess.Popen:
    """Start the other process and return once it holds the GPU but ``left_free_mib``."""
    # this process's cached memory back to the GPU, for the holder: memory it kept (a segment a
    # live cuBLAS workspace pinned after test_int32_offsets.py, H100, 2026-12-07) the work would
    # fit in without waiting
    gc.collect()
    release_cache("cuda")
    spare = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    assert spare < LEFT_FREE_MIB * 2**20, (
        f"this process keeps {spare / 2**20:.0f} MiB reserved and unused, room the test's work "
        "would use instead of waiting")
    flag = tmp_path / "held"
    flag.unlink(missing_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(left_free_mib), str(flag),
                               str(hold_s)])
    while not flag.exists():
        assert holder.poll() is None, "the holding process ended before it held the memory"
        time.sleep(0.1)
    return holder


def test_the_g_bar_search_waits_for_another_processes_memory(tmp_path, monkeypatch):
    (tmp_path / "memory-waits.toml").write_text(CONFIG)
    config = load_config(tmp_path / "memory-waits.toml")
    _, calm_refs, calm_certs = _references_stage(config, tmp_path / "calm", monkeypatch,
                                                 tmp_path / "cache-calm")
    holder = _hold(tmp_path, LEFT_FREE_MIB, HOLD_S)
    assert torch.cuda.mem_get_info()[0] < 2 * LEFT_FREE_MIB * 2**20
    logs, refs, certs = _references_stage(config, tmp_path / "shared", monkeypatch,
                                          tmp_path / "cache-shared", holder)
    assert any(line.startswith("the G_bar references: the GPU has too little memory")
               for line in logs)
    assert refs == calm_refs != {}
    assert certs == calm_certs != []


def test_a_block_waits_for_another_processes_memory_and_keeps_its_size(tmp_path, monkeypatch):
    """A block of 4 replications at n = 10^5 (tens of MiB) fitted alone, then while another
    process leaves the GPU 64 MiB: it waits, runs again whole, and its rows are the calm
    block's bit for bit. Alone, this process's own context is not counted as another's."""
    (tmp_path / "block.toml").write_text(CONFIG.replace("n = [200, 400]", "n = [100000]")
                                         .replace("reps = 2", "reps = 4"))
    config = load_config(tmp_path / "block.toml")
    shard = Shard("small-sparse-relu", 100_000, 0, 4)
    monkeypatch.setenv("MOE_THEORY_CACHE", str(tmp_path / "cache"))  # a G_bar of its own
    references = None
    calm, calm_block, calm_retries = sweep.fit_in_blocks(shard, config, "cuda", "auto", references)
    free, total = torch.cuda.mem_get_info()
    outside = total - free - torch.cuda.memory_reserved()
    print(f"this process outside its allocator's reserve: {outside / 2**20:.0f} MiB")
    assert not held_by_others("cuda") and outside < CONTEXT_BYTES
    assert (calm_block, calm_retries) == (4, 0)

    holder = _hold(tmp_path, LEFT_FREE_MIB, HOLD_S)
    start = time.monotonic()
    try:
        assert held_by_others("cuda")
        assert torch.cuda.mem_get_info()[0] < 2 * LEFT_FREE_MIB * 2**20
        rows, block, retries = sweep.fit_in_blocks(shard, config, "cuda", "auto", references)
    finally:
        holder.wait()
    # a measurement for the log, not a test of speed: the fit ends about when the holder does
    print(f"held {HOLD_S:g} s; the block fitted {time.monotonic() - start:.1f} s after the hold "
          f"began, {retries} retries")
    assert block == 4 and retries >= 1
    pd.testing.assert_frame_equal(rows.drop(columns="wall_s"), calm.drop(columns="wall_s"),
                                  check_exact=True)
