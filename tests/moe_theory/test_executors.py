"""Sweeps through the executor boundary: Dask equals local, faults, bad input, OOM halving;
scheduling (largest first, one cluster for several figures, G_bar computed once) (CPU)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
import torch

from moe_theory import executors, outputs, population, reproduce, store, sweep
from moe_theory.check import refit, run_check
from moe_theory.cli import main
from moe_theory.config import load_config, parse_config
from moe_theory.data import sample
from moe_theory.errors import ResourceError
from moe_theory.estimators import fit_lse
from moe_theory.executors import largest_first, map_shards, shard_cost
from moe_theory.initialization import near_truth
from moe_theory.measure import MixingMeasure
from moe_theory.settings import get_setting
from moe_theory.store import FIT_MEASURE, SORT_KEYS, Shard, merge, plan, read_manifest, shard_path
from moe_theory.studies import StudyOutput
from moe_theory.sweep import compute_shard, run_sweep
from moe_theory.voronoi import voronoi_loss

pytestmark = pytest.mark.usefixtures("module_cache")

TINY = """name = "tiny"
settings = ["small-sparse-relu"]
fit_gates = ["sigmoid"]
n = [200, 300]
reps = 4
rep_block = 2
"""
#: Rows of one shard of TINY: 2 replications x 6 losses of a sigmoid fit (D1, D2, four errors).
SHARD_ROWS = 12
#: Relative tolerance between tables whose replications were batched differently. Each
#: replication's fit only reads its own rows of the batch, so in exact arithmetic the tables are
#: equal; the batched reductions still round differently for another batch size, which moves
#: the last bits: TINY's shards fitted one replication at a time differ from two at a time by
#: up to 1.1e-12 relatively (measured). Tables of the same batching are compared bit for bit.
BATCH_RTOL = 1e-10


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def done(lines: list[str]) -> list[str]:
    """The sweep log's lines of computed shards (it also logs references and certificates)."""
    return [line for line in lines if " done on " in line]


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame, *, batched: bool = False) -> None:
    """Equal up to ``wall_s`` (a timing): bit for bit, or (``batched``: the replications were
    batched differently) to float rounding of at most BATCH_RTOL."""
    got, want = (df.drop(columns="wall_s").reset_index(drop=True) for df in (got, want))
    assert not got.duplicated(SORT_KEYS).any()
    if batched:
        # the estimates (JSON text) to the same rounding, parameter by parameter; parameters are
        # of order one, so the rounding bound serves as an absolute one too
        fits = [torch.stack([torch.cat([m.gate_params.flatten(), m.expert_params.flatten()])
                             for m in map(MixingMeasure.from_json, df[FIT_MEASURE])])
                for df in (got, want)]
        torch.testing.assert_close(fits[0], fits[1], rtol=BATCH_RTOL, atol=BATCH_RTOL)
        # a restart's drop is a difference of two SSRs in nu, each about n nu at a fit: its
        # rounding is that of the SSRs, BATCH_RTOL n in nu, not relative to the drop itself
        # (a restart that moves a fit by 1e-8 nu moves it by 1e-8 nu plus rounding)
        drops = [df["restart_drop"].to_numpy(float) for df in (got, want)]
        np.testing.assert_allclose(drops[0], drops[1], rtol=0,
                                   atol=BATCH_RTOL * float(got["n"].max()))
        got, want = (df.drop(columns=[FIT_MEASURE, "restart_drop"]) for df in (got, want))
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=BATCH_RTOL, atol=0)
    else:
        pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def local_run(config_path, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("local")
    return out, run_sweep(load_config(config_path), out, log=lambda msg: None)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        yield cluster


def test_local_cluster_equals_local(cluster, config_path, local_run, tmp_path, monkeypatch):
    """The shards reach Dask largest first, each with its cost as priority, and the table is the
    serial one bit for bit."""
    from distributed import Client

    submitted: list[tuple[Shard, float]] = []
    real_submit = Client.submit

    def recording_submit(self, *args, **kwargs):
        submitted.append((args[2], kwargs["priority"]))  # the wrapper, the function, the shard
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(Client, "submit", recording_submit)
    config = load_config(config_path)
    lines: list[str] = []
    df = run_sweep(config, tmp_path, executor="dask", scheduler=cluster.scheduler_address,
                   log=lines.append)
    assert_same_table(df, local_run[1])
    assert len(done(lines)) == len(plan(config))
    # the references first, as one task of the cluster; then the shards
    assert not isinstance(submitted[0][0], Shard)
    submitted = [(shard, priority) for shard, priority in submitted if isinstance(shard, Shard)]
    shards = [shard for shard, _ in submitted]
    # TINY plans n = 200 before n = 300: largest first reverses them
    assert [s.n for s in shards] == [300, 300, 200, 200]
    assert shards == largest_first(plan(config), lambda s: shard_cost(config, s))
    priorities = [priority for _, priority in submitted]
    assert priorities == [shard_cost(config, s) for s in shards]
    assert priorities[0] > priorities[-1]


def test_a_sweep_on_a_remote_scheduler_records_its_g_bar(cluster, config_path, tmp_path):
    """With a scheduler's address the references are prepared by one task of the cluster (its
    workers fit on their own device type) and recorded before any shard: skipped, each worker
    had fitted its own G_bar unrecorded, a resumption elsewhere could mix two, and a resumption
    here was refused for a folder "written before references were recorded"."""
    config = parse_config({**tomllib.loads(config_path.read_text()), "name": "tiny-gbar",
                           "fit_gates": ["softmax"]})
    remote = run_sweep(config, tmp_path / "remote", executor="dask",
                       scheduler=cluster.scheduler_address, log=lambda msg: None)
    local = run_sweep(config, tmp_path / "local", log=lambda msg: None)
    key = "small-sparse-relu/softmax"
    recorded = read_manifest(tmp_path / "remote").get("references", {})
    assert recorded[key] == read_manifest(tmp_path / "local")["references"][key]
    assert_same_table(remote, local)
    # a resumption here reads the recorded G_bar
    (first,) = sorted((tmp_path / "remote" / "shards").rglob("*.parquet"))[:1]
    first.unlink()
    assert_same_table(run_sweep(config, tmp_path / "remote", log=lambda msg: None), local)


def test_shard_cost_follows_the_measured_iteration_time():
    """The model reproduces the time it was calibrated on (one LM iteration of twenty N24
    problems, p = 594, n = 10^5: 2.1 ms + 8.9 ms), scales with the iteration cap, and grows with
    n, replications, starts and the model's size, the fixed part not growing."""
    config = parse_config({"name": "c", "settings": ["small-sparse-relu", "nguyen2024-dense-relu"],
                           "fit_gates": ["sigmoid"], "n": [100, 10**5], "reps": 40,
                           "rep_block": 20, "starts": 0, "max_iter": 1})
    from moe_theory.certificates import free_parameters

    setting = get_setting("nguyen2024-dense-relu")
    assert free_parameters("sigmoid", setting.score, setting.expert, setting.d,
                           setting.k_fit) == executors.LM_REFERENCE_P
    measured = shard_cost(config, Shard("nguyen2024-dense-relu", 10**5, 0, 20))
    assert measured == pytest.approx(2.1e-3 + 8.9e-3, rel=1e-12)
    base = shard_cost(config, Shard("small-sparse-relu", 100, 0, 20))
    assert base < shard_cost(config, Shard("small-sparse-relu", 200, 0, 20))
    assert base < shard_cost(config, Shard("small-sparse-relu", 100, 0, 40)) < 2 * base
    more_starts = parse_config({**config.to_dict(), "starts": 1, "start_jitter": 0.1})
    assert shard_cost(more_starts, Shard("small-sparse-relu", 100, 0, 20)) == pytest.approx(
        shard_cost(config, Shard("small-sparse-relu", 100, 0, 40)), rel=1e-12)
    assert shard_cost(config, Shard("nguyen2024-dense-relu", 100, 0, 20)) > base
    longer = parse_config({**config.to_dict(), "max_iter": 10})
    assert shard_cost(longer, Shard("small-sparse-relu", 100, 0, 20)) == pytest.approx(
        10 * base, rel=1e-12)
    first_order = parse_config({**config.to_dict(), "algorithm": "adam"})
    assert shard_cost(first_order, Shard("nguyen2024-dense-relu", 10**5, 0, 20)) < measured


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_map_shards_hands_out_largest_first(executor):
    """Ties keep the plan order; one worker process (this one) takes them in that order."""
    shards = [Shard("s", n, r, r + 1) for n in (100, 300, 200) for r in (0, 1)]
    workers = {"local_workers": 1} if executor == "processes" else {}
    order = list(map_shards(lambda shard: shard, shards, executor=executor, **workers,
                            cost=lambda shard: shard.n))
    assert order == [shards[2], shards[3], shards[4], shards[5], shards[0], shards[1]]
    assert list(map_shards(lambda shard: shard, shards)) == shards  # no cost: as given


def test_process_pool_equals_local(config_path, local_run, tmp_path):
    """``processes``: shards side by side in spawned worker processes give the local table."""
    lines: list[str] = []
    df = run_sweep(load_config(config_path), tmp_path, executor="processes", local_workers=2,
                   log=lines.append)
    assert_same_table(df, local_run[1])
    assert len(done(lines)) == len(plan(load_config(config_path)))
    assert {line.split(" done on ")[1].split(" ")[0] for line in done(lines)} != {
        f"{__import__('socket').gethostname()}:{os.getpid()}"}, "ran in this process"


def test_process_pool_interrupted_then_resumed(config_path, local_run, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) stops a ``processes`` sweep
    with exit code 130 and no hang; what landed is whole, and a rerun finishes the table."""
    shards = plan(load_config(config_path))
    cmd = [sys.executable, "-m", "moe_theory.cli", "sweep", str(config_path), "--out",
           str(tmp_path), "--executor", "processes", "--local-workers", "2"]
    # the sweep's stderr is kept (a file, which a full pipe cannot block) for the message of a
    # failure: an exit code alone does not say which exception ended the run
    err = tmp_path.parent / f"{tmp_path.name}-stderr.txt"
    with open(err, "w") as stderr:
        # SIGINT at its default in the sweep whatever this process was started with: a test run
        # started in a shell's background ignores SIGINT, the sweep would inherit that, and
        # Python then installs no KeyboardInterrupt handler (the sweep ran to its end, exit 0)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while (proc.poll() is None and time.monotonic() < deadline
           and not any(shard_path(tmp_path, s).exists() for s in shards)):
        time.sleep(0.01)
    interrupted = proc.poll() is None
    if interrupted:
        os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=60)
    assert code == (130 if interrupted else 0), err.read_text()[-3000:]
    assert interrupted, "the sweep finished before the first shard was seen"
    for s in shards:
        if shard_path(tmp_path, s).exists():
            assert len(pd.read_parquet(shard_path(tmp_path, s))) == SHARD_ROWS
    subprocess.run(cmd, check=True, timeout=300, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert_same_table(pd.read_parquet(tmp_path / "results.parquet"), local_run[1])


def test_worker_killed_mid_shard_is_recomputed(cluster, config_path, local_run, tmp_path):
    from distributed import Client

    result: dict = {}
    lines: list[str] = []

    def sweep_in_background():
        result["df"] = run_sweep(load_config(config_path), tmp_path, executor="dask",
                                 scheduler=cluster.scheduler_address, log=lines.append)

    with Client(cluster) as client:
        pids = client.run(os.getpid)
        thread = threading.Thread(target=sweep_in_background)
        thread.start()
        deadline, busy = time.monotonic() + 60, []
        while not busy and time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            time.sleep(0.01)
        assert busy, "no shard ever started"
        killed = pids[busy[0]]
        os.kill(killed, signal.SIGKILL)
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert_same_table(result["df"], local_run[1])
    # the killed worker finished nothing: its shard was run again by another worker
    assert len(done(lines)) == 4 and not any(f":{killed} " in line for line in done(lines))
    assert not list((tmp_path / "shards").rglob(".*.tmp"))


#: The command line on a machine whose free memory has shrunk to just above the CPU's Jacobian
#: reserve, as a page cache grown since the first attempt leaves it (``os.sysconf`` reports the
#: free pages): a batch planned from the free count would shrink, and the rows change in the last
#: bits with the batch.
LOW_FREE_MEMORY_CLI = """
import os, sys
real, free = os.sysconf, int(sys.argv.pop(1))
os.sysconf = lambda name: free // real("SC_PAGE_SIZE") if name == "SC_AVPHYS_PAGES" else real(name)
from moe_theory.check import refit, run_check
from moe_theory.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sweep_killed_at_random_moments_then_resumed(config_path, local_run, tmp_path):
    """kill -9 at three random moments, later attempts on a machine with less free memory, then
    a rerun: every shard that landed is whole, and the table is bit for bit the uninterrupted
    one, shards of later attempts included."""
    from kernels.moe.torch_pass import JACOBIAN_CHUNK_BYTES

    config = load_config(config_path)
    shards = plan(config)
    args = ["sweep", str(config_path), "--out", str(tmp_path)]
    low_free = [sys.executable, "-c", LOW_FREE_MEMORY_CLI,
                str(2 * JACOBIAN_CHUNK_BYTES["cpu"] + 100_000), *args]
    rng = random.Random(6)
    killed_mid_sweep = 0
    for attempt in range(3):
        landed = sum(shard_path(tmp_path, s).exists() for s in shards)
        cmd = [sys.executable, "-m", "moe_theory.cli", *args] if attempt == 0 else low_free
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # a random moment: after a random number of the missing shards have landed, a random
        # fraction of a shard's time later (possibly before the first, possibly while writing one)
        wait_for = landed + rng.randrange(max(1, len(shards) - landed - 1))
        deadline = time.monotonic() + 120
        while (proc.poll() is None and time.monotonic() < deadline
               and sum(shard_path(tmp_path, s).exists() for s in shards) < wait_for):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            killed_mid_sweep += 1
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for s in shards:  # whatever landed is whole
            if shard_path(tmp_path, s).exists():
                assert len(pd.read_parquet(shard_path(tmp_path, s))) == SHARD_ROWS
    assert killed_mid_sweep == 3
    subprocess.run(low_free, check=True, timeout=300, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert_same_table(pd.read_parquet(tmp_path / "results.parquet"), local_run[1])


def test_out_of_memory_halves_the_block(monkeypatch, config_path, local_run, tmp_path):
    real = sweep.run_shard
    blocks: list[int] = []

    def run_shard_with_little_memory(config, shard, **kwargs):
        blocks.append(shard.rep_stop - shard.rep_start)
        if blocks[-1] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(config, shard, **kwargs)

    monkeypatch.setattr(sweep, "run_shard", run_shard_with_little_memory)
    config = load_config(config_path)
    shard = plan(config)[-1]
    meta = compute_shard(shard, config=config, out=tmp_path)
    assert blocks == [2, 1, 1]
    assert (meta["rep_block"], meta["oom_retries"]) == (1, 1)
    assert_same_table(pd.read_parquet(shard_path(tmp_path, shard)),
                      pd.read_parquet(shard_path(local_run[0], shard)), batched=True)


#: What torch 2.11 raised on an H100 shared by three sweeps of 4-6 processes (2026-12-06): the
#: GPU full, not a broken solver.
CUSOLVER_HANDLE = ("cusolver error: CUSOLVER_STATUS_INTERNAL_ERROR, when calling "
                   "`cusolverDnCreate(handle)`. If you keep seeing this error, you may use "
                   "`torch.backends.cuda.preferred_linalg_library()`")


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: out of memory"),
                                   RuntimeError(CUSOLVER_HANDLE)])
def test_host_out_of_memory_is_retried_too(monkeypatch, config_path, local_run, tmp_path, error):
    real, raised = sweep.run_shard, []

    def fails_once(config, shard, **kwargs):
        if not raised:
            raised.append(shard)
            raise error
        return real(config, shard, **kwargs)

    monkeypatch.setattr(sweep, "run_shard", fails_once)
    config = load_config(config_path)
    shard = plan(config)[0]
    meta = compute_shard(shard, config=config, out=tmp_path)
    assert (meta["rep_block"], meta["oom_retries"]) == (1, 1)
    assert_same_table(pd.read_parquet(shard_path(tmp_path, shard)),
                      pd.read_parquet(shard_path(local_run[0], shard)), batched=True)


def _whole_waits(waited: list[float]):
    """A ``_wait_for_memory`` that takes no time: each wait is appended to ``waited`` and
    counted whole (no other process frees memory during it)."""
    def wait(device: str, seconds: float, need: int | None) -> float:
        waited.append(seconds)
        return seconds

    return wait


def test_one_replication_without_memory_waits_for_it(monkeypatch, config_path, local_run,
                                                    tmp_path):
    """On a GPU other processes hold memory for a while: with one replication per block, or a
    plan that cannot ask how much is free, the shard waits for memory (instant waits here, as
    many as GPU_MEMORY_WAITS_S allows) and then the error ends it."""
    real, calls, waited = sweep.run_shard, [], []
    monkeypatch.setattr(sweep, "_memory_waits", lambda device: (0.0, 0.0))
    monkeypatch.setattr(sweep, "_wait_for_memory", _whole_waits(waited))
    plan_fails = iter([True])
    real_plan = sweep.memory_rep_block

    def plan_without_memory(*args):
        if next(plan_fails, False):
            raise torch.OutOfMemoryError("CUDA error: out of memory")  # the driver's own query
        return real_plan(*args)

    def frees_memory_at_the_third_call(config, shard, **kwargs):
        calls.append(shard.rep_stop - shard.rep_start)
        if len(calls) < 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(config, shard, **kwargs)

    monkeypatch.setattr(sweep, "memory_rep_block", plan_without_memory)
    monkeypatch.setattr(sweep, "run_shard", frees_memory_at_the_third_call)
    config = load_config(config_path)
    shard = plan(config)[-1]
    meta = compute_shard(shard, config=config, out=tmp_path)
    # the plan waited once; 2 replications halved to 1; that one waited once more, then fitted
    assert calls == [2, 1, 1, 1] and waited == [0.0, 0.0]
    assert (meta["rep_block"], meta["oom_retries"]) == (1, 3)
    assert_same_table(pd.read_parquet(shard_path(tmp_path, shard)),
                      pd.read_parquet(shard_path(local_run[0], shard)), batched=True)

    # the waits spent, the error ends the shard and nothing is stored
    monkeypatch.setattr(sweep, "memory_rep_block", real_plan)
    monkeypatch.setattr(sweep, "run_shard", lambda *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")))
    waited.clear()
    # said as the machine's refusal of the shard's sample size (it was the allocator's traceback)
    one = re.escape(Shard(shard.setting, shard.n, shard.rep_start, shard.rep_start + 1).key)
    with pytest.raises(ResourceError, match=rf"^{one}: one replication at "
                       rf"n = {shard.n} does not fit in the memory of cpu \(OutOfMemoryError: "
                       r"CUDA out of memory\. Tried to allocate 9\.00 GiB\); lower n"):
        compute_shard(shard, config=config, out=tmp_path / "never")
    assert waited == [0.0, 0.0] and not (tmp_path / "never" / "shards").exists()


def _gpu_full_for(failures: int, run_shard, calls: list[int]):
    """A ``run_shard`` on a simulated "cuda" whose first ``failures`` batches find no memory;
    then it fits on the CPU. Each batch's size is appended to ``calls``."""
    def fits_on_the_cpu(config, shard, **kwargs):
        calls.append(shard.rep_stop - shard.rep_start)
        if len(calls) <= failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run_shard(config, shard, **{**kwargs, "device": "cpu"})

    return fits_on_the_cpu


def test_a_gpu_too_full_for_a_context_still_waits(monkeypatch, config_path, local_run):
    """On "cuda" (simulated here: the fits run on the CPU) a batch without memory waits the GPU's
    own waits, and emptying the cache on a GPU too full for a CUDA context is no error. The
    GPU is this process's alone here: a block of 2 that does not fit is halved at once."""
    real, calls, waited = sweep.run_shard, [], []
    monkeypatch.setattr(sweep, "memory_rep_block", lambda *args: None)
    monkeypatch.setattr(sweep, "held_by_others", lambda device: False)
    monkeypatch.setattr(sweep, "_wait_for_memory", _whole_waits(waited))

    def no_context():
        raise torch.AcceleratorError("CUDA error: out of memory")

    monkeypatch.setattr(torch.cuda, "empty_cache", no_context)

    monkeypatch.setattr(sweep, "run_shard", _gpu_full_for(2, real, calls))
    config = load_config(config_path)
    shard = plan(config)[-1]
    rows, block, retries = sweep.fit_in_blocks(shard, config, "cuda", "auto", None)
    assert calls == [2, 1, 1, 1] and waited == [sweep.GPU_MEMORY_WAITS_S[0]]
    assert (block, retries) == (1, 2)
    assert_same_table(rows, pd.read_parquet(shard_path(local_run[0], shard)), batched=True)


@pytest.mark.parametrize("others", ["hold memory", "fill the GPU past a query"])
def test_a_block_waits_while_other_processes_hold_the_gpu(monkeypatch, config_path, local_run,
                                                          others):
    """On a GPU that other processes fill, a block without memory waits for them and runs again
    whole: the rows are an undisturbed run's bit for bit, not a smaller block's (simulated
    "cuda", the fits on the CPU). Its waits spent, it is halved, and the log says the rows
    are another block's."""
    real, calls, waited = sweep.run_shard, [], []
    monkeypatch.setattr(sweep, "memory_rep_block", lambda *args: 8)  # planned: the shard's 2
    monkeypatch.setattr(sweep, "_wait_for_memory", _whole_waits(waited))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def held_by_others(device):
        if others == "hold memory":
            return True
        raise torch.AcceleratorError("CUDA error: out of memory")  # no room for the query

    monkeypatch.setattr(sweep, "held_by_others", held_by_others)
    monkeypatch.setattr(sweep, "run_shard", _gpu_full_for(3, real, calls))
    config = load_config(config_path)
    shard = plan(config)[-1]
    rows, block, retries = sweep.fit_in_blocks(shard, config, "cuda", "auto", None)
    assert calls == [2, 2, 2, 2] and waited == list(sweep.GPU_MEMORY_WAITS_S[:3])
    assert (block, retries) == (2, 3)
    assert_same_table(rows, pd.read_parquet(shard_path(local_run[0], shard)))

    # other processes that never let go: the block's waits spent, it is halved
    calls.clear(), waited.clear()
    freed_after = len(sweep.GPU_MEMORY_WAITS_S) + 1
    monkeypatch.setattr(sweep, "run_shard", _gpu_full_for(freed_after, real, calls))
    rows, block, retries = sweep.fit_in_blocks(shard, config, "cuda", "auto", None)
    assert calls == [2] * freed_after + [1, 1] and waited == list(sweep.GPU_MEMORY_WAITS_S)
    assert (block, retries) == (1, len(sweep.GPU_MEMORY_WAITS_S) + 1)
    assert_same_table(rows, pd.read_parquet(shard_path(local_run[0], shard)), batched=True)
    lines = []
    meta = {"shard": shard.key, "reps": 2, "rep_block": 1, "oom_retries": retries, "worker": "w"}
    sweep._log_shard(meta, lines.append, sweep._progress(1, 0, "t"), index=1, total=1,
                     elapsed=1.0, computed=1)
    assert "fitted in blocks of 1 of its 2 replications" in lines[0]


class _SharedGpu:
    """A clock and a GPU's free memory for :func:`sweep._wait_for_memory`: sleeping moves the
    clock; 1 GiB is free, and 4 GiB from second ``at`` on (never, if None), when another
    process's batch ends; the driver cannot answer before second ``answers_from``."""

    def __init__(self, monkeypatch, at: float | None, answers_from: float = 0.0):
        self.now, self.slept, self.at, self.answers_from = 0.0, [], at, answers_from
        monkeypatch.setattr(sweep.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(sweep.time, "sleep", self.sleep)
        monkeypatch.setattr(sweep, "free_bytes", self.free)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def free(self, device) -> int:
        if self.now < self.answers_from:
            raise torch.AcceleratorError("CUDA error: out of memory")
        return (4 if self.at is not None and self.now >= self.at else 1) * 2**30


@pytest.mark.parametrize("at, need, slept", [
    (3.0, 3 * 2**30, 3.0), (None, 3 * 2**30, 7.5), (0.5, 3 * 2**30, 1.0), (3.0, 5 * 2**30, 7.5),
    (3.0, None, 7.5)], ids=["freed at 3 s", "never freed", "freed within the first look",
                           "freed too little", "no need planned"])
def test_a_wait_ends_once_the_planned_need_is_free(monkeypatch, at, need, slept):
    """A wait for memory looks at the GPU's free memory every MEMORY_POLL_S and ends at the
    first look that finds the batch's planned need free; otherwise (memory freed but not
    enough, or work without a plan) it is whole, its last look cut to the time left."""
    gpu = _SharedGpu(monkeypatch, at)
    assert sweep._wait_for_memory("cuda", 7.5, need) == slept
    assert gpu.slept == [1.0] * int(slept) + ([0.5] if slept == 7.5 else [])


def test_a_look_the_driver_cannot_answer_finds_nothing_free(monkeypatch):
    """A GPU too full for the driver's query at a look: that look finds nothing free, and the
    next one that can answer ends the wait."""
    gpu = _SharedGpu(monkeypatch, 0.0, answers_from=2.5)
    assert sweep._wait_for_memory("cuda", 7.5, 2**30) == 3.0 and gpu.slept == [1.0] * 3
    assert sweep._wait_for_memory("cpu", 2.0, 1) == 2.0  # no GPU to watch


def test_a_block_waits_for_its_planned_need(monkeypatch, config_path, local_run):
    """A block of replications waits for the memory its plan says it needs (sweep.memory_need,
    the numbers memory_rep_block plans with), for the block it runs."""
    real, calls, needs = sweep.run_shard, [], []
    monkeypatch.setattr(sweep, "memory_rep_block", lambda *args: 8)
    monkeypatch.setattr(sweep, "held_by_others", lambda device: True)
    monkeypatch.setattr(sweep, "_wait_for_memory", lambda device, s, need: needs.append(need) or s)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(sweep, "run_shard", _gpu_full_for(1, real, calls))
    config = load_config(config_path)
    shard = plan(config)[-1]
    sweep.fit_in_blocks(shard, config, "cuda", "auto", None)
    setting = config.setting_objects()[0]
    per_rep = sweep.BYTES_PER_REP_SAMPLE_COORD * shard.n * (setting.d + 1)
    assert needs == [2 * per_rep + sweep.JACOBIAN_CHUNK_BYTES["cuda"]]
    assert needs == [sweep.memory_need(shard.setting, shard.n, 2, "cuda")]
    # the plan and the need are one formula: a block of the planned size needs at most its share
    cap = sweep.memory_rep_block(config, shard.setting, shard.n, "cpu")
    if cap is not None and cap > 1:
        assert sweep.memory_need(shard.setting, shard.n, cap, "cpu") <= (
            sweep.MEMORY_FRACTION * sweep.total_memory("cpu"))


def test_a_wait_cut_short_is_finished_at_the_next_shortage(monkeypatch):
    """A wait that ended early (the need free) leaves its rest for the next shortage, before the
    next wait of GPU_MEMORY_WAITS_S: the waits never sum to more than those, nor run out
    sooner. Other processes here free the need 2 s into every wait, and then take it again."""
    waits, calls = [], []

    def two_seconds(device, seconds, need):
        waits.append(seconds)
        return min(seconds, 2.0)

    def never_fits():
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sweep, "_memory_waits", lambda device: (5.0, 3.0))
    monkeypatch.setattr(sweep, "_wait_for_memory", two_seconds)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    lines = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sweep.waiting_for_memory(never_fits, "cuda", "block", lines.append, need=2**30)
    assert waits == [5.0, 3.0, 1.0, 3.0, 1.0] and len(calls) == len(waits) + 1
    assert sum(min(w, 2.0) for w in waits) == 8.0 and len(lines) == len(waits)
    assert "in 5 s, or once it is free" in lines[0] and "in 1 s" in lines[2]


def test_the_checks_refits_halve_their_block_too(monkeypatch, config_path):
    """The optimiser check's refits are fitted in blocks as the sweep's shards are: memory short
    on a shared GPU halves the block instead of ending the check, and the rows come in the
    order an unblocked refit writes them (the order of the refits stored since their first run)."""
    config = load_config(config_path)
    whole = refit(config, 2)
    real, blocks = sweep.run_shard, []

    def little_memory(config, shard, **kwargs):
        blocks.append(shard.rep_stop - shard.rep_start)
        if blocks[-1] > 1:
            raise RuntimeError(CUSOLVER_HANDLE)
        return real(config, shard, **kwargs)

    monkeypatch.setattr(sweep, "run_shard", little_memory)
    halved = refit(config, 2)
    assert sorted(set(blocks)) == [1, 2] and blocks.count(2) == 4  # 2 variants x 2 n, one gate
    keys = ["variant", "fit_gate", "loss_name", "n", "rep"]
    pd.testing.assert_frame_equal(halved[keys], whole[keys])
    for variant, got in halved.groupby("variant", sort=False):
        assert_same_table(got.drop(columns="variant"),
                          whole[whole["variant"] == variant].drop(columns="variant"), batched=True)


def test_the_references_stage_waits_for_memory_and_runs_again(monkeypatch, config_path,
                                                             tmp_path):
    """The G_bar references and their certificates cannot be fitted in smaller batches: on a GPU
    that other processes fill (simulated: an out-of-memory error from the certificates) the stage
    waits and runs again, and writes what an undisturbed stage writes (every value; the timings
    aside); the waits spent, the error ends it; another error is not retried."""
    config, logs, waited = load_config(config_path), [], []
    sweep.prepare_references(config, tmp_path / "calm", log=lambda msg: None)
    monkeypatch.setattr(sweep, "_memory_waits", lambda device: (0.0, 0.0))
    monkeypatch.setattr(sweep, "_wait_for_memory", _whole_waits(waited))
    real, calls = sweep.certify_references, []

    def full_gpu_at_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "certify_references", full_gpu_at_first)
    sweep.prepare_references(config, tmp_path / "shared", log=logs.append)
    assert len(calls) == 2 and waited == [0.0]
    assert any("too little memory" in line and "trying again" in line for line in logs)

    def written(folder: Path) -> dict:  # every file, a JSON one without its timing
        return {p.relative_to(folder): ({k: v for k, v in json.loads(p.read_text()).items()
                                         if k != "wall_s"} if p.suffix == ".json" else p.read_bytes())
                for p in sorted(folder.rglob("*")) if p.is_file()}

    calm = written(tmp_path / "calm")
    assert calm and any(p.parts[0] == sweep.REFERENCE_DIR for p in calm)
    assert written(tmp_path / "shared") == calm

    def always_full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.00 GiB")

    monkeypatch.setattr(sweep, "certify_references", always_full)
    waited.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError, match="7.00 GiB"):
        sweep.prepare_references(config, tmp_path / "full", log=lambda msg: None)
    assert waited == [0.0, 0.0]

    monkeypatch.setattr(sweep, "certify_references", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("shape mismatch")))
    waited.clear()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sweep.prepare_references(config, tmp_path / "broken", log=lambda msg: None)
    assert waited == []


def test_the_g_bar_search_waits_for_memory_too(monkeypatch, tmp_path):
    """A G_bar search that finds the GPU full (simulated) waits, then the stage runs again and
    records the G_bar an undisturbed sweep records."""
    (tmp_path / "fig-a.toml").write_text(FIGURE_A)
    config = load_config(tmp_path / "fig-a.toml")
    for name in ("calm", "shared"):  # as a sweep starts its folder
        store.make_folder(tmp_path / name)
        store.write_manifest(tmp_path / name, config, force=False)
    sweep.prepare_references(config, tmp_path / "calm", log=lambda msg: None)
    monkeypatch.setattr(sweep, "_memory_waits", lambda device: (0.0,))
    monkeypatch.setattr(sweep, "_wait_for_memory", _whole_waits([]))
    real, calls, logs = sweep.reference_measure, [], []

    def full_gpu_at_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "reference_measure", full_gpu_at_first)
    sweep.prepare_references(config, tmp_path / "shared", log=logs.append)
    assert len(calls) == 2 and any("G_bar references: the GPU" in line for line in logs)
    assert (sweep.recorded_references(tmp_path / "shared")
            == sweep.recorded_references(tmp_path / "calm") != {})


def test_other_errors_are_not_retried(monkeypatch, config_path, tmp_path):
    def broken(config, shard, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(sweep, "run_shard", broken)
    config = load_config(config_path)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        compute_shard(plan(config)[0], config=config, out=tmp_path)
    assert not (tmp_path / "shards").exists()


def test_block_follows_the_machine_memory(monkeypatch, config_path, local_run, tmp_path):
    config = load_config(config_path)
    shard = Shard("small-sparse-relu", 300, 0, 2)
    assert sweep.memory_rep_block(config, shard.setting, shard.n, "cpu") >= 2
    # room for one replication of n = 300, d = 2 next to no Jacobian chunk (CPU reserves one)
    import kernels.memory
    from kernels.moe.torch_pass import JACOBIAN_CHUNK_BYTES

    one_rep = sweep.BYTES_PER_REP_SAMPLE_COORD * shard.n * 3
    monkeypatch.setattr(kernels.memory, "physical_memory",
                        lambda: (JACOBIAN_CHUNK_BYTES["cpu"] + 1.5 * one_rep) / 0.5)
    assert sweep.memory_rep_block(config, shard.setting, shard.n, "cpu") == 1
    meta = compute_shard(shard, config=config, out=tmp_path)
    assert meta["rep_block"] == 1
    assert_same_table(pd.read_parquet(shard_path(tmp_path, shard)),
                      pd.read_parquet(shard_path(local_run[0], shard)), batched=True)


MALFORMED = [
    ("colour = 'red'\n", "colour"),
    ("reps = 0\n", "reps"),
    ("reps = '4'\n", "reps"),
    ("n = []\n", "'n'"),
    ("n = {min = 400, max = 200, num = 3}\n", "'n.max'"),
    ("n = [200, -400]\n", "'n'"),
    ("seed = -1\n", "seed"),
    ("rep_block = 1.5\n", "rep_block"),
    ("max_iter = 0\n", "max_iter"),
    ("k_fit = 1\n", "k_fit"),
    ("fit_gates = []\n", "fit_gates"),
    ("fit_gates = ['sigmoid', 'sigmoid']\n", "fit_gates"),
    ("settings = ['no-such-setting']\n", "settings"),
    ("jitter = -0.1\n", "jitter"),
    ("sgd = {lr = -1.0}\n", "sgd.lr"),
    ("sgd = {epochs = 'ten'}\n", "sgd.epochs"),
]


def _override(text: str, line: str) -> str:
    key = line.split("=")[0].strip()
    kept = [x for x in text.splitlines() if x.split("=")[0].strip() != key]
    return "\n".join(kept) + "\n" + line


@pytest.mark.parametrize("line, key", MALFORMED)
def test_malformed_config_exits_2_naming_the_key(tmp_path, capsys, line, key):
    path = tmp_path / "bad.toml"
    path.write_text(_override(TINY, line))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    assert key in capsys.readouterr().err
    assert not out.exists()  # rejected before any work


@pytest.mark.parametrize("flags, name", [
    (["--local-workers", "2"], "--local-workers"),
    (["--executor", "dask", "--local-workers", "0"], "--local-workers"),
    (["--executor", "dask", "--local-workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
     "--local-workers"),
    (["--executor", "dask", "--gpus", "7"], "--gpus"),
    (["--executor", "processes", "--local-workers", "0"], "--local-workers"),
    (["--executor", "processes", "--gpus", "0"], "--gpus"),
])
def test_bad_executor_options_exit_2(config_path, tmp_path, capsys, flags, name):
    out = tmp_path / "out"
    assert main(["sweep", str(config_path), "--out", str(out), *flags]) == 2
    assert name in capsys.readouterr().err
    assert not out.exists()


def test_unknown_executor_is_an_argparse_error(config_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(config_path), "--executor", "ray"])
    assert exit_.value.code == 2
    assert "--executor" in capsys.readouterr().err


def test_changed_config_refuses_old_shards_unless_forced(config_path, local_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.replace("reps = 4", "reps = 2"))
    assert main(["sweep", str(changed), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert len(list((out / "shards").rglob("*.parquet"))) == 4  # untouched
    store.write_manifest(out, load_config(changed), force=True)
    assert not list((out / "shards").rglob("*.parquet"))


def test_merge_command_rebuilds_the_table(local_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    (out / "results.parquet").unlink()
    assert main(["merge", str(out)]) == 0
    assert f"{len(local_run[1])} rows" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), local_run[1])
    assert main(["merge", str(tmp_path / "nothing")]) == 2


def test_resume_after_lost_shard_recomputes_only_it(config_path, local_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    config = load_config(config_path)
    lost = plan(config)[1]
    shard_path(out, lost).unlink()
    # a temporary file of a writer killed before its rename (its process is gone)
    dead = _dead_pid()
    (out / "shards" / lost.setting / f".x.parquet~{store.HOST}~{dead}~0.tmp").write_bytes(b"half")
    lines: list[str] = []
    df = run_sweep(config, out, log=lines.append)
    assert [line.split()[1] for line in done(lines)] == [lost.key]
    assert_same_table(df, local_run[1])
    assert not list((out / "shards").rglob(".*.tmp"))
    assert_same_table(merge(out), local_run[1])


def test_check_refuses_refits_of_another_config(local_run, tmp_path):
    """Refits computed beforehand (beside the sweep's shards) must be the folder's own."""
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    one_n = tmp_path / "one-n.toml"
    one_n.write_text(TINY.replace("n = [200, 300]", "n = [200]"))
    other = refit(load_config(one_n), 1)
    with pytest.raises(ValueError, match="refits"):
        run_check(out, reps=1, refits=other)
    assert not (out / "check.json").exists()


def test_check_interrupted_then_resumed_refits_only_what_is_missing(local_run, tmp_path,
                                                                    monkeypatch):
    """An optimiser check stopped after two refits keeps them (check-refits/); the rerun refits
    only the others and writes the check.parquet of an uninterrupted check, bit for bit."""
    import moe_theory.check as check

    whole = tmp_path / "whole"
    shutil.copytree(local_run[0], whole)
    run_check(whole, reps=1)
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    original, calls = check._refit_job, []

    def stop_after_two(job, **kw):
        calls.append(job)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(job, **kw)

    monkeypatch.setattr(check, "_refit_job", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_check(out, reps=1)
    assert not (out / "check.json").exists()
    stored = list((out / check.REFIT_DIR).rglob("*.parquet"))
    assert len(stored) == 2
    calls.clear()
    lines: list[str] = []
    monkeypatch.setattr(check, "_refit_job", lambda job, **kw: (calls.append(job),
                                                                original(job, **kw))[1])
    run_check(out, reps=1, log=lines.append)
    config = check.read_manifest_config(out)
    # one job per fitted gate: variants x n x gates (TINY fits one gate)
    total = len(check.variants(config)) * len(config.n) * len(config.fit_gates)
    assert len(calls) == total - 2, "the stored refits were computed again"
    assert any(f"2 of {total} refits stored" in line for line in lines)
    assert not any("other code" in line for line in lines)  # one version throughout
    got, want = (pd.read_parquet(folder / check.CHECK_TABLE).drop(columns="wall_s")
                 for folder in (out, whole))
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert json.loads((out / "check.json").read_text())["curves"] == json.loads(
        (whole / "check.json").read_text())["curves"]
    # resumed by other code (a toolkit updated in between), the check says so
    (out / "check.json").unlink()
    for path in sorted((out / check.REFIT_DIR).rglob("*.parquet"))[2:]:
        store.checksum_path(path).unlink()
        path.unlink()
    monkeypatch.setattr(check, "code_version", lambda: "0123456789ab")
    lines.clear()
    run_check(out, reps=1, log=lines.append)
    assert any("warning: check: 2 of the 2 stored refits were computed by other code" in line
               for line in lines)


def test_a_gate_fitted_alone_gives_the_rows_of_the_whole_shard(config_path, local_run):
    """The optimiser check fits one gate per job (run_shard's ``gates``): each gate's rows are
    those of the sweep's shard, which fits every gate on the same data, bit for bit but the
    wall time, so a check split by gate compares the same fits."""
    from dataclasses import replace

    config = replace(load_config(config_path), fit_gates=("sigmoid", "softmax"))
    shard = store.Shard(config.settings[0], config.n[0], 0, config.rep_block)
    whole = sweep.run_shard(config, shard).drop(columns="wall_s")
    assert list(whole["fit_gate"].unique()) == ["sigmoid", "softmax"]
    split = pd.concat([sweep.run_shard(config, shard, gates=[gate])
                       for gate in ("sigmoid", "softmax")], ignore_index=True).drop(columns="wall_s")
    pd.testing.assert_frame_equal(split, whole, check_exact=True)
    # and the sweep's own sigmoid rows of that shard are those of the sigmoid job
    swept = local_run[1].query(f"n == {shard.n} and rep < {shard.rep_stop}").drop(columns="wall_s")
    mine = split[split["fit_gate"] == "sigmoid"]
    mine, swept = (df.drop(columns="config_hash").sort_values(["rep", "loss_name"])
                   .reset_index(drop=True) for df in (mine, swept))
    pd.testing.assert_frame_equal(mine, swept, check_exact=True)


def test_check_refits_of_another_reference_are_not_read_back(local_run, tmp_path):
    """Stored refits are keyed by the variant's config and the manifest's G_bar references: a
    folder whose references changed (a forced recompute) refits from scratch and drops them."""
    from moe_theory.check import read_manifest_config, refit_store, variants
    from moe_theory.layout import REFIT_DIR

    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    run_check(out, reps=1)
    config = read_manifest_config(out)
    gates = config.fit_gates
    before = {refit_store(out, v, g) for v in variants(config).values() for g in gates}
    assert all(path.is_dir() for path in before)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.setdefault("references", {})["small-sparse-relu/sigmoid"] = "another"
    (out / "manifest.json").write_text(json.dumps(manifest))
    after = {refit_store(out, v, g) for v in variants(config).values() for g in gates}
    assert not before & after
    run_check(out, reps=1)
    assert {p for p in (out / REFIT_DIR).iterdir()} == after


def test_reproduce_rejects_bad_workers(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "nguyen2024", "--fast", "--out", str(out), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not out.exists()


def test_check_rejects_bad_workers_and_writes_nothing(local_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(local_run[0], out)
    assert main(["check", str(out), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (out / "check.json").exists() and not (out / "check-refits").exists()


def test_check_on_worker_processes_equals_the_local_check(local_run, tmp_path):
    """`moe-theory check --workers 2` refits in spawned processes: the same refits, bit for bit,
    as one process computes."""
    tables = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        shutil.copytree(local_run[0], out)
        assert main(["check", str(out), "--reps", "1", "--workers", workers]) == 0
        tables[workers] = pd.read_parquet(out / "check.parquet").drop(columns="wall_s")
    pd.testing.assert_frame_equal(tables["1"], tables["2"], check_exact=True)


# ---- G_bar computed once, one cluster for several figures ----------------------------------------

#: Two figures that share a G_bar reference (the sparse truth is sigmoid-gated: the softmax fit
#: is measured against its own G_bar) and differ in the rest (seed, n, shard size).
FIGURE_A = """name = "fig-a"
settings = ["small-sparse-relu"]
fit_gates = ["softmax"]
n = [200, 400]
reps = 2
rep_block = 1
starts = 0
max_iter = 20
"""
FIGURE_B = """name = "fig-b"
settings = ["small-sparse-relu"]
fit_gates = ["softmax"]
n = [200, 300]
reps = 2
rep_block = 2
seed = 1
starts = 0
max_iter = 20
"""
#: A smaller population design than the CPU's default (2 10^5, ~5 s per G_bar on one core):
#: what is tested is who computes it, not how well.
SMALL_DESIGN = 20_000


@pytest.fixture
def counted_gbar(monkeypatch, tmp_path):
    """A fresh G_bar cache, a small design, and the list of population fits computed."""
    monkeypatch.setenv("MOE_THEORY_CACHE", str(tmp_path / "gbar-cache"))
    monkeypatch.setitem(population.DESIGN_SIZE, "cpu", SMALL_DESIGN)
    fits: list[tuple[str, str]] = []
    real = population._fit_population

    def counting(setting, fit_gate, *args):
        fits.append((setting.name, fit_gate))
        return real(setting, fit_gate, *args)

    monkeypatch.setattr(population, "_fit_population", counting)
    return fits


def test_gbar_is_computed_once_by_concurrent_threads(counted_gbar):
    setting = get_setting("small-sparse-relu")
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(
        population.population_lse(setting, "softmax"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert counted_gbar == [("small-sparse-relu", "softmax")]
    assert len(got) == 4 and len({g.to_json() for g in got}) == 1
    assert len({id(g) for g in got}) == 4  # each caller its own object


def test_gbar_waits_for_the_process_computing_it(counted_gbar):
    """Another process holding the entry's file lock is computing it: a caller waits, then
    reads what that process wrote instead of fitting its own."""
    setting = get_setting("small-sparse-relu")
    key = population._cache_key(setting, "softmax", SMALL_DESIGN, "cpu", "auto")
    path = population.cache_dir() / f"gbar-{setting.name}-softmax-{key[:16]}.json"
    path.parent.mkdir(parents=True)
    # a stand-in the caller cannot have computed itself (of the entry's gate and atoms)
    written = near_truth(setting.truth(), setting.k_fit, seed=9).draw(1, "softmax").to_json()
    got: list = []
    with open(path.with_name(path.name + ".lock"), "w") as other:  # another open file: flock
        fcntl.flock(other, fcntl.LOCK_EX)  # conflicts as between processes
        waiter = threading.Thread(target=lambda: got.append(
            population.population_lse(setting, "softmax")))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and not got, "did not wait for the lock"
        path.write_text(population.cache_entry(key, written))
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(timeout=60)
    assert [g.to_json() for g in got] == [written]
    assert counted_gbar == []


def test_a_cache_entry_that_is_not_its_key_s_g_bar_is_set_aside_and_computed_again(
        counted_gbar, capsys, monkeypatch):
    """An entry is its measure with its key and checksum, and a measure of the entry's gate and
    atoms: a cut, empty, altered, other-format or other-key file, or a measure of another gate
    or number of atoms, is set aside (named) and G_bar computed again, where each had been used
    as G_bar or failed every later run. The device type and the backend are in the key."""
    setting = get_setting("small-sparse-relu")
    fitted = near_truth(setting.truth(), setting.k_fit, seed=1).draw(1, "softmax")

    def fit(setting, fit_gate, *args):  # the cache's logic, not the fit, is tested here
        counted_gbar.append((setting.name, fit_gate))
        return fitted

    monkeypatch.setattr(population, "_fit_population", fit)
    good = population.population_lse(setting, "softmax").to_json()
    assert counted_gbar == [("small-sparse-relu", "softmax")]
    key = population._cache_key(setting, "softmax", SMALL_DESIGN, "cpu", "auto")
    path = population.cache_dir() / f"gbar-{setting.name}-softmax-{key[:16]}.json"
    entry = path.read_text()
    assert json.loads(entry) == {"key": key, "sha256": json.loads(entry)["sha256"],
                                 "measure": good}
    other = near_truth(setting.truth(), setting.k_fit, seed=9).draw(1, "softmax").to_json()
    wrong_gate = near_truth(setting.truth(), setting.k_fit, seed=9).draw(1, "sigmoid").to_json()
    altered = json.loads(entry)
    altered["measure"] = altered["measure"].replace("1", "2", 1)
    bad = {"cut": entry[:40], "empty": "", "measure alone": good,
           "altered": json.dumps(altered),
           "other key": population.cache_entry("0" * 64, other),
           "other gate": population.cache_entry(key, wrong_gate)}
    for name, text in bad.items():
        population._read_entries.clear()  # another process, which has not read the entry
        path.write_text(text)
        counted_gbar.clear()
        assert population.population_lse(setting, "softmax").to_json() == good, name
        assert counted_gbar == [("small-sparse-relu", "softmax")], name
        assert "is not the entry its name says" in capsys.readouterr().err, name
        assert path.read_text() == entry, name
    assert len(list(path.parent.glob(path.name + ".invalid-*"))) == len(bad)
    keys = {population._cache_key(setting, "softmax", SMALL_DESIGN, device, backend)
            for device in ("cpu", "cuda") for backend in ("auto", "torch", "triton")}
    assert len(keys) == 6


def test_the_g_bar_cache_key_holds_the_truth_not_only_its_recipe(monkeypatch):
    """A setting's recipe (its to_dict) can stay the same while the truth it draws changes (the
    sparse softmax pin of 2026-12-07 changed user settings' truths): the key must follow the
    truth, or the old truth's G_bar is read for the new one."""
    setting = get_setting("small-sparse-relu")
    before = population._cache_key(setting, "softmax", SMALL_DESIGN, "cpu", "auto")
    truth = setting.truth()
    moved = truth.replace(truth.gate_params + 0.5, truth.expert_params)
    monkeypatch.setattr(type(setting), "truth", lambda self: moved)
    assert population._cache_key(setting, "softmax", SMALL_DESIGN, "cpu", "auto") != before


def toy_study(*, fast: bool, device: str) -> StudyOutput:
    """A study of a moment: one fit's D1 loss (seeded, so each run gives the same table)."""
    truth = get_setting("small-sparse-relu").truth()
    X, Y = sample(truth, 300, 1, seed=5)
    fit = fit_lse(X, Y, 2, "sigmoid", "relu", init=near_truth(truth, 2, seed=5), max_iter=20)
    table = pd.DataFrame({"n": [300], "D1": voronoi_loss(fit.measure, truth, "D1").numpy()})
    return StudyOutput(results=table, table=table, table_name="toy", text=table.to_string(),
                       draw=lambda stem: [])


def _table(folder: Path, name: str) -> pd.DataFrame:
    """A figure's results, check or rates table without its timings."""
    df = pd.read_parquet(folder / f"{name}.parquet") if name in ("results", "check") else (
        pd.read_csv(folder / f"{name}.csv"))
    return df.drop(columns=[c for c in df.columns if c == "wall_s"])


# an in-process scheduler still serves HTTP (health, metrics) on Dask's default port, taken
# while another cluster of this machine holds it
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_figures_share_one_cluster_and_equal_the_serial_run(counted_gbar, tmp_path, monkeypatch):
    """Two certified figures and a study on one local Dask cluster (its workers threads of this
    process, to start in a moment): one cluster started, G_bar fitted once for both figures, and
    every table (results, the optimiser check's refits, rates, the study's) bit for bit the
    serial run's."""
    distributed = pytest.importorskip("distributed")
    # the figures' drawing (seconds of matplotlib each) is not what is compared
    monkeypatch.setattr(outputs, "plot_panels", lambda *args, **kwargs: None)
    monkeypatch.setitem(reproduce.EXPERIMENTS, "toy-study", toy_study)
    paths = []
    for text in (FIGURE_A, FIGURE_B):
        path = tmp_path / (text.split('"')[1] + ".toml")
        path.write_text(text)
        paths.append(path)
    paths.append(Path("toy-study"))
    serial = reproduce.reproduce_figures([(p, tmp_path / "serial" / p.stem) for p in paths],
                                         certify=True)
    assert counted_gbar == [("small-sparse-relu", "softmax")]
    counted_gbar.clear()
    monkeypatch.setenv("MOE_THEORY_CACHE", str(tmp_path / "second-cache"))

    started: list[dict] = []
    real_cluster = distributed.LocalCluster

    def threads_cluster(**kwargs):
        started.append(kwargs)
        # in-process workers talk over Dask's inproc transport, which takes no host
        return real_cluster(**{**kwargs, "processes": False, "host": None})

    monkeypatch.setattr(distributed, "LocalCluster", threads_cluster)
    shared = reproduce.reproduce_figures([(p, tmp_path / "dask" / p.stem) for p in paths],
                                         local_workers=2, certify=True)
    assert len(started) == 1 and started[0]["n_workers"] == 2
    assert counted_gbar == [("small-sparse-relu", "softmax")]
    for p in paths[:2]:
        for name in ("results", "check", "rates"):
            pd.testing.assert_frame_equal(_table(tmp_path / "dask" / p.stem, name),
                                          _table(tmp_path / "serial" / p.stem, name),
                                          check_exact=True)
    pd.testing.assert_frame_equal(_table(tmp_path / "dask" / "toy-study", "toy"),
                                  _table(tmp_path / "serial" / "toy-study", "toy"),
                                  check_exact=True)
    pd.testing.assert_frame_equal(shared.drop(columns="wall_s"), serial.drop(columns="wall_s"),
                                  check_exact=True)
    assert executors._shared == []  # the session ended with the call


def _move_computed_g_bar(monkeypatch, move) -> None:
    """Make every G_bar computed from now on ``move(G_bar)``: a reference computed again
    elsewhere (another device type's design, another machine's rounding)."""
    real = sweep.reference_measure

    def elsewhere(setting, gate, **kw):
        kind, ref = real(setting, gate, **kw)
        return kind, move(ref) if kind == "G_bar" else ref

    monkeypatch.setattr(sweep, "reference_measure", elsewhere)


def test_check_refits_against_the_g_bar_its_sweep_recorded(tmp_path, monkeypatch):
    """The check's refits start near, and are measured against, the G_bar the sweep's manifest
    records, not one computed again where the check runs: G_bar's design depends on the device
    type, so a GPU sweep checked on a CPU would otherwise be refitted against another
    reference. Here G_bar computed again is made another one; the refits must not change."""
    from dataclasses import replace

    path = tmp_path / "softmax.toml"
    # a softmax fit of TINY's sigmoid-gated truth is measured against its own G_bar
    path.write_text(TINY.replace('fit_gates = ["sigmoid"]', 'fit_gates = ["softmax"]')
                    .replace("n = [200, 300]", "n = [200]"))
    config = load_config(path)
    out = tmp_path / "run"
    run_sweep(config, out, log=lambda msg: None)
    key = f"{config.settings[0]}/softmax"
    assert key in json.loads((out / "manifest.json").read_text())["references"]
    want = refit(config, 1, folder=out).drop(columns="wall_s")
    shutil.rmtree(out / "check-refits")
    _move_computed_g_bar(monkeypatch, lambda ref: replace(
        ref, gate_params=ref.gate_params + 0.05, expert_params=ref.expert_params - 0.05))
    # the monkeypatch takes: a shard fitted without the recorded references sees the other G_bar
    shard = store.Shard(config.settings[0], config.n[0], 0, 1)
    moved = sweep.run_shard(config, shard, gates=["softmax"])
    first = want[want["variant"] == want["variant"].iloc[0]]
    assert (moved["ref_loss"].to_numpy() != first["ref_loss"].to_numpy()).all()
    got = refit(config, 1, folder=out).drop(columns="wall_s")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # a manifest without the G_bar is refused, naming the field and the key
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["references"][key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"references: .*{key}"):
        refit(config, 1, folder=out)


def test_gate_reps_fits_a_gate_on_the_first_replications_only(tmp_path):
    """``gate_reps``: the softmax fit takes replications 0-1 of 4, whole shards, on the same
    data as the sigmoid fit's; the sigmoid rows are bit for bit those of the sweep that fits
    both gates on every replication (a gate's rows do not depend on the gates beside it), and
    the optimiser check refits each gate within its replications."""
    both = TINY.replace('fit_gates = ["sigmoid"]', 'fit_gates = ["sigmoid", "softmax"]') \
        .replace("n = [200, 300]", "n = [200]")
    full_path, fewer_path = tmp_path / "full.toml", tmp_path / "fewer.toml"
    full_path.write_text(both)
    fewer_path.write_text(both + "gate_reps = { softmax = 2 }\n")
    full = run_sweep(load_config(full_path), tmp_path / "full", log=lambda msg: None)
    fewer = run_sweep(load_config(fewer_path), tmp_path / "fewer", log=lambda msg: None)
    soft = fewer[fewer["fit_gate"] == "softmax"]
    assert sorted(set(soft["rep"])) == [0, 1]
    assert sorted(set(fewer.loc[fewer["fit_gate"] == "sigmoid", "rep"])) == [0, 1, 2, 3]
    want = full[(full["fit_gate"] == "sigmoid") | (full["rep"] < 2)]
    assert (fewer["config_hash"] != want["config_hash"].iloc[0]).all()  # other results
    assert_same_table(*(df.sort_values(SORT_KEYS).drop(columns="config_hash")
                        for df in (fewer, want)))
    refits = refit(load_config(fewer_path), 4, folder=tmp_path / "fewer")
    for gate, reps in (("sigmoid", [0, 1, 2, 3]), ("softmax", [0, 1])):
        assert sorted(set(refits.loc[refits["fit_gate"] == gate, "rep"])) == reps


def test_a_resumed_sweep_measures_against_the_recorded_g_bar(tmp_path, monkeypatch):
    """A resumption whose G_bar, computed again, differs from the recorded one by rounding (another
    machine's arithmetic: accepted with a warning, the record kept) fits its shards near, and
    measures them against, the recorded G_bar: the table is the uninterrupted run's bit for bit,
    so no curve mixes two references."""
    from dataclasses import replace

    path = tmp_path / "softmax.toml"
    # a softmax fit of TINY's sigmoid-gated truth is measured against its own G_bar
    path.write_text(TINY.replace('fit_gates = ["sigmoid"]', 'fit_gates = ["softmax"]'))
    config = load_config(path)
    whole = tmp_path / "whole"
    want = run_sweep(config, whole, log=lambda msg: None)
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    lost = plan(config)[0]
    shard_path(out, lost).unlink()
    _move_computed_g_bar(monkeypatch,
                         lambda ref: replace(ref, gate_params=ref.gate_params * (1 + 1e-9)))
    lines: list[str] = []
    got = run_sweep(config, out, log=lines.append)
    assert [line.split()[1] for line in done(lines)] == [lost.key]
    assert any("G_bar" in line and "recorded one" in line for line in lines)
    assert_same_table(got, want)


# ---- a process that loses its GPU context ------------------------------------------------------

#: What torch raises once a kernel has faulted (the first line of its message); CUDA repeats it
#: at every later call of that process.
CUDA_FAULT = "CUDA error: an illegal memory access was encountered"


def _first(marker: str) -> bool:
    """Whether this process is the first to get here in the whole run (``marker`` records it)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _lose_context(marker: str, who: str, parent: int, always: object, shard):
    """A shard function for spawned workers: the first shard that a process of kind ``who``
    (``"worker"``, ``"here"``: the calling process) computes loses its GPU context, once in the
    whole run (``marker`` records the process), or every time for the shard ``always``.
    Otherwise ``(shard, pid)``."""
    mine = (os.getpid() == parent) == (who == "here")
    if shard == always:
        raise RuntimeError(f"{CUDA_FAULT}\nCUDA kernel errors might be asynchronously reported")
    if mine and _first(marker):
        raise RuntimeError(f"{CUDA_FAULT}\nCUDA kernel errors might be asynchronously reported")
    time.sleep(0.05)  # long enough for the processes to share the shards
    return shard, os.getpid()


@pytest.fixture
def fresh_context(monkeypatch):
    """This process's context as not lost, and so again after the test."""
    monkeypatch.setattr(executors, "_lost", None)


@pytest.mark.parametrize(("err", "lost"), [
    (RuntimeError(CUDA_FAULT), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("Triton Error [CUDA]: unspecified launch failure"), True),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasDgemm( handle, ...)`"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("CUDA error: out of memory"), False),
    (RuntimeError("cusolverDnCreate(handle) failed: CUSOLVER_STATUS_INTERNAL_ERROR"), False),
    (RuntimeError("shape mismatch"), False),
    (ValueError("expert: CUDA error is not an expert"), False),
])
def test_a_lost_gpu_context_is_told_from_a_lack_of_memory(err, lost):
    """A lack of memory is waited for in the same process (sweep.waiting_for_memory); any other
    CUDA error ends the process's part (executors.map_shards)."""
    from moe_theory.errors import is_device_lost, is_out_of_memory

    assert is_device_lost(err) is lost
    assert not (is_device_lost(err) and is_out_of_memory(err))


@pytest.mark.parametrize("who", ["worker", "here"])
def test_a_shard_whose_process_lost_its_gpu_runs_again_elsewhere(who, fresh_context, tmp_path):
    """``processes``: the shard whose process lost its GPU context is computed by another
    process, and the lost process computes nothing after: a spawned worker's pool is replaced;
    this process leaves every later shard to its workers, in a later call too."""
    marker, lines = tmp_path / "lost", []
    fn = functools.partial(_lose_context, str(marker), who, os.getpid(), None)
    shards = list(range(8))
    got = list(map_shards(fn, shards, executor="processes", local_workers=3, log=lines.append))
    lost_pid = int(marker.read_text())
    assert sorted(shard for shard, _ in got) == shards  # each once
    assert lost_pid not in {pid for _, pid in got}
    assert (lost_pid == os.getpid()) == (who == "here")
    assert len(lines) == 1 and "runs again in another process (retry 1 of 2)" in lines[0]
    assert "illegal memory access" in lines[0] and "CUDA kernel errors" not in lines[0]
    if who == "here":
        again = list(map_shards(fn, shards, executor="processes", local_workers=2))
        assert sorted(s for s, _ in again) == shards
        assert os.getpid() not in {pid for _, pid in again}


@pytest.mark.parametrize("who", ["worker", "here"])
def test_a_shard_lost_too_often_ends_the_run(who, fresh_context, tmp_path):
    """A shard that loses its process's context at every run (a fault that is the shard's, not
    the device's) ends the run after DEVICE_LOST_RETRIES runs again, naming the shard; the
    error maps to exit code 3 (moe_theory.errors)."""
    from moe_theory.errors import DeviceLost, ResourceError

    # "here" takes the first shard, a worker the second
    always = 0 if who == "here" else 1
    fn = functools.partial(_lose_context, str(tmp_path / "unused"), "nobody", os.getpid(), always)
    lines: list[str] = []
    with pytest.raises(DeviceLost, match=rf"computing {always} \(3 time\(s\) in all.*run the same "
                                         "command again") as err:
        list(map_shards(fn, range(6), executor="processes", local_workers=2, log=lines.append))
    assert isinstance(err.value, ResourceError)
    # (a lost worker may have taken another shard before its pool was replaced: that one runs
    # again too)
    retried = [line.split("(retry ")[1][:6] for line in lines if f"; {always} runs again" in line]
    assert retried == ["1 of 2", "2 of 2"]


def test_a_lost_context_with_no_other_process_ends_the_run(fresh_context, tmp_path):
    from moe_theory.errors import DeviceLost

    fn = functools.partial(_lose_context, str(tmp_path / "lost"), "here", os.getpid(), None)
    with pytest.raises(DeviceLost, match="computing 0 .*run the same command again"):
        list(map_shards(fn, range(3)))


def test_other_errors_of_a_worker_still_stop_the_run(fresh_context):
    with pytest.raises(ValueError, match="invalid literal"):
        list(map_shards(int, ["1", "2", "x", "4"], executor="processes", local_workers=2))


def test_a_dask_worker_that_lost_its_gpu_is_replaced(cluster, fresh_context, tmp_path):
    """Dask: the worker exits (its nanny starts another) and the scheduler runs its task again."""
    marker = tmp_path / "lost"
    fn = functools.partial(_lose_context, str(marker), "worker", os.getpid(), None)
    got = list(map_shards(fn, range(4), executor="dask", scheduler=cluster.scheduler_address))
    assert sorted(shard for shard, _ in got) == list(range(4))
    assert int(marker.read_text()) not in {pid for _, pid in got}


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_sweep_goes_on_when_a_worker_loses_its_gpu_or_dies(how, config_path, local_run,
                                                              tmp_path):
    """The whole sweep through the command line: the shard of a worker that lost its GPU
    context, or was killed mid-shard (its claim left behind), is computed again by another
    process and the table is bit for bit the undisturbed one."""
    marker = tmp_path.parent / f"{tmp_path.name}-lost"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(repo / "tests" / "scripts" / "lose_gpu_cli.py"), "sweep",
         str(config_path), "--out", str(tmp_path), "--executor", "processes",
         "--local-workers", "3"],
        capture_output=True, text=True, timeout=300,
        # the script's folder, not the repository, heads its path: the package from the latter
        env={**os.environ, "LOSE_WHO": "worker", "LOSE_HOW": how, "LOSE_MARKER": str(marker),
             "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists(), "no worker computed a shard"
    if how == "raise":
        assert f"process {marker.read_text()} lost its GPU context" in proc.stderr
        assert "runs again in another process (retry 1 of 2)" in proc.stderr
    else:
        assert "a worker process died mid-shard" in proc.stderr
        assert "runs again in another process (retry 1 of 2)" in proc.stderr
    assert not list((tmp_path / "claims").rglob("*.claim"))  # the dead worker's claim is gone
    assert_same_table(pd.read_parquet(tmp_path / "results.parquet"), local_run[1])


def _die_in_worker(marker: str, parent: int, always: object, shard):
    """A shard function whose spawned worker is killed mid-shard (as by the host's out-of-memory
    killer): the first worker to compute a shard, once in the whole run (``marker`` records it),
    or every worker that computes the shard ``always``. Otherwise ``(shard, pid)``."""
    if os.getpid() != parent:
        if shard == always:
            os.kill(os.getpid(), signal.SIGKILL)
        if _first(marker):
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)  # long enough for the processes to share the shards
    return shard, os.getpid()


def test_a_worker_killed_mid_shard_costs_a_run_of_its_shard(fresh_context, tmp_path):
    """``processes``: a killed worker breaks its pool, whose shards run again in a new one, each
    computed once in the end and never by the dead process; the log says so in a line per
    shard that ran again."""
    marker, lines = tmp_path / "killed", []
    fn = functools.partial(_die_in_worker, str(marker), os.getpid(), None)
    shards = list(range(8))
    got = list(map_shards(fn, shards, executor="processes", local_workers=3, log=lines.append))
    assert sorted(shard for shard, _ in got) == shards  # each once
    assert int(marker.read_text()) not in {pid for _, pid in got}
    # the dead worker's shard, and its pool mate's if it held one
    assert 1 <= len(lines) <= 2, lines
    assert all("a worker process died mid-shard" in line and "(retry 1 of 2)" in line
               for line in lines)


def test_a_shard_killed_too_often_ends_the_run(fresh_context, monkeypatch, tmp_path):
    """A shard whose worker dies at every run ends the run after DEVICE_LOST_RETRIES runs again,
    naming it, as an environment error (exit code 3) that says a rerun finishes."""
    from moe_theory.errors import ResourceError

    # this process lost: every shard goes to the (one) spawned worker
    monkeypatch.setattr(executors, "_lost", "RuntimeError: CUDA error: (a test)")
    fn = functools.partial(_die_in_worker, str(tmp_path / "unused"), os.getpid(), 1)
    (tmp_path / "unused").write_text("")  # no first-worker kill: only shard 1's
    lines: list[str] = []
    with pytest.raises(ResourceError, match=r"a worker process died mid-shard .*computing 1 \(3 "
                                            r"time\(s\) in all.*run the same command again"):
        list(map_shards(fn, range(4), executor="processes", local_workers=2, log=lines.append))
    retried = [line.split("(retry ")[1][:6] for line in lines if "; 1 runs again" in line]
    assert retried == ["1 of 2", "2 of 2"]


#: Set by the feeder thread of ``_map_processes`` when it first asks whether this process may
#: still hand a shard back (it asks with no shard in flight, once it found the queue empty).
_FEEDER_ASKS = threading.Event()


class _FeederWaitsForTheHandBack(threading.Event):
    """``_map_processes``' ``busy_here``: the feeder's first look at it waits until this process
    has handed its shard back and cleared it. So the feeder sees the queue empty before the
    shard is back and this process done after: the one order in which the shard was lost."""

    def set(self) -> None:
        self.was_set = True
        super().set()

    def is_set(self) -> bool:
        if (getattr(self, "was_set", False) and threading.current_thread().name == "shard-feeder"
                and not _FEEDER_ASKS.is_set()):
            _FEEDER_ASKS.set()
            deadline = time.monotonic() + 60
            while super().is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().is_set()


def _lost_here_after_the_feeder_asks(marker: str, parent: int, shard):
    """A shard function: this process (``parent``) loses its GPU context on its shard once the
    feeder has found the queue empty; a spawned worker computes its shard once this process
    holds its own (``marker``), so that the queue is empty then. Returns ``(shard, pid)``."""
    if os.getpid() == parent:
        Path(marker).touch()
        assert _FEEDER_ASKS.wait(60), "the feeder never asked"
        raise RuntimeError(f"{CUDA_FAULT}\nCUDA kernel errors might be asynchronously reported")
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    return shard, os.getpid()


def test_a_shard_handed_back_after_the_feeder_found_the_queue_empty_still_runs(
        fresh_context, monkeypatch, tmp_path):
    """``processes``: this process hands its shard back to the queue and then says it takes no
    more; the feeder, which had found the queue empty just before, saw that it took no more and
    ended, and the shard was never computed: ``map_shards`` ended without its result, and no
    error. The order is forced (``_FeederWaitsForTheHandBack``)."""
    _FEEDER_ASKS.clear()
    monkeypatch.setattr(executors, "threading", types.SimpleNamespace(
        **{**vars(threading), "Event": _FeederWaitsForTheHandBack}))
    fn = functools.partial(_lost_here_after_the_feeder_asks, str(tmp_path / "here"), os.getpid())
    lines: list[str] = []
    got = list(map_shards(fn, [0, 1], executor="processes", local_workers=2, log=lines.append))
    assert _FEEDER_ASKS.is_set()  # the order was the one forced
    assert sorted(shard for shard, _ in got) == [0, 1]
    assert os.getpid() not in {pid for _, pid in got}
    assert len(lines) == 1 and "runs again in another process (retry 1 of 2)" in lines[0]


def test_a_process_gives_back_cublas_workspaces_before_its_cache(monkeypatch):
    """kernels.memory.release_cache, the sweep's between shards and after a failed batch: cuBLAS's
    workspaces go first (a live one pins its segment through empty_cache), then the cached
    blocks; off a GPU nothing is touched."""
    import kernels.memory
    from moe_theory.sweep import _empty_cache

    calls = []
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces",
                        lambda: calls.append("workspaces"), raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cache"))
    kernels.memory.release_cache("cpu")
    _empty_cache("cpu")
    assert calls == []
    _empty_cache("cuda")
    assert calls == ["workspaces", "cache"]
    # a PyTorch without the private hook still empties the cache
    monkeypatch.delattr(torch._C, "_cuda_clearCublasWorkspaces")
    kernels.memory.release_cache("cuda:0")
    assert calls == ["workspaces", "cache", "cache"]


_ORPHAN = """
import concurrent.futures as cf, multiprocessing as mp, os, signal, time
from moe_theory import executors
if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                                  initializer=executors._start_worker, initargs=(os.getpid(), 1))
    worker = pool.submit(os.getpid).result()
    pool.submit(time.sleep, 120)  # a long shard in flight
    print(worker, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_spawned_worker_ends_when_its_sweep_is_killed(tmp_path):
    """kill -9 of a sweep left its spawned workers running: they finished their shards, wrote
    them into a folder another config might have taken meanwhile, and then waited for ever. A
    worker watches the process that spawned it and ends once re-parented (PARENT_POLL_S)."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10 * executors.PARENT_POLL_S + 5
    while store._process_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = store._process_alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the orphaned worker was still running"


def test_a_bare_memory_error_is_said_too(monkeypatch, config_path):
    """Python's own MemoryError may carry no message: the shard's error said so was an
    IndexError of its first line."""
    monkeypatch.setattr(sweep, "run_shard", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    config = load_config(config_path)
    shard = plan(config)[0]
    one = Shard(shard.setting, shard.n, 0, 1)
    with pytest.raises(ResourceError, match=r"does not fit in the memory of cpu \(MemoryError: "
                       r"no message\); lower n"):
        sweep.fit_in_blocks(one, config, "cpu", "auto", None)
