"""Sweeps through the executor boundary: Dask equals local, faults, bad input, OOM halving (CPU)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from moe_theory import store, sweep
from moe_theory.cli import main
from moe_theory.config import load_config
from moe_theory.store import SORT_KEYS, Shard, merge, plan, shard_path
from moe_theory.sweep import compute_shard, run_sweep

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
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=BATCH_RTOL, atol=0)
    else:
        pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_THEORY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


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


def test_local_cluster_equals_local(cluster, config_path, local_run, tmp_path):
    lines: list[str] = []
    df = run_sweep(load_config(config_path), tmp_path, executor="dask",
                   scheduler=cluster.scheduler_address, log=lines.append)
    assert_same_table(df, local_run[1])
    assert len(done(lines)) == len(plan(load_config(config_path)))


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
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while (proc.poll() is None and time.monotonic() < deadline
           and not any(shard_path(tmp_path, s).exists() for s in shards)):
        time.sleep(0.01)
    interrupted = proc.poll() is None
    if interrupted:
        os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == (130 if interrupted else 0)
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


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: out of memory")])
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
    from kernels.moe.torch_pass import JACOBIAN_CHUNK_BYTES

    one_rep = sweep.BYTES_PER_REP_SAMPLE_COORD * shard.n * 3
    monkeypatch.setattr(sweep, "physical_memory",
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
    ("n = {min = 400, max = 200, num = 3}\n", "'n'"),
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


def test_reproduce_rejects_bad_workers(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "nguyen2024", "--fast", "--out", str(out), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not out.exists()
