"""Sweeps: the cross product settings x n x replications, run shard by shard.

A *shard* is (setting, n, block of replications): one batched fit per fitted gate on one draw of
data, returning tidy rows. Each finished shard is written atomically to its own parquet file,
so an interrupted sweep loses at most the shard in flight and a rerun computes only what is
missing. The merged table is rebuilt from the shard files.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from kernels.memory import free_memory
from kernels.moe import precompile
from moe_theory import models
from moe_theory.config import SweepConfig
from moe_theory.data import sample, stable_seed
from moe_theory.estimators import fit_lse
from moe_theory.executors import check_executor, map_shards, parse_gpus
from moe_theory.initialization import NearTruth, near_truth
from moe_theory.measure import MixingMeasure
from moe_theory.population import reference_measure
from moe_theory.settings import Setting, get_setting
from moe_theory.voronoi import PARAMETER_ERRORS, voronoi_loss

RESULT_COLUMNS = [
    "setting", "truth_gate", "fit_gate", "score", "expert", "regime", "reference", "d", "k_true",
    "k_fit", "n", "rep", "seed", "loss_name", "loss_value", "converged", "certified", "n_iter",
    "fit_loss", "ref_loss", "wall_s", "device", "backend", "algorithm", "config_hash",
]
#: The merged table's order (and each shard file's): independent of finishing order and block size.
SORT_KEYS = ["setting", "fit_gate", "loss_name", "n", "rep"]
#: Below this many rows the merged table also gets a CSV copy, easy to open anywhere.
CSV_MAX_ROWS = 200_000
#: Bytes one replication needs, per sample and input coordinate (float64): X and Y themselves,
#: then gate/expert values, residuals and the trial point of LM hold a few more copies of that
#: size. The Jacobian is chunked (kernels.moe.torch_pass) and reserved for separately.
BYTES_PER_REP_SAMPLE_COORD = 8 * 8
#: Share of the free device memory a shard's batch may plan to use; the rest absorbs what the
#: estimate misses (allocator fragmentation, the G_bar reference, other processes).
MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class Shard:
    setting: str
    n: int
    rep_start: int
    rep_stop: int

    @property
    def key(self) -> str:
        return f"{self.setting}/n{self.n:09d}_reps{self.rep_start:05d}-{self.rep_stop:05d}"


def plan(config: SweepConfig) -> list[Shard]:
    shards = []
    for setting in config.settings:
        for n in config.n:
            for start in range(0, config.reps, config.rep_block):
                shards.append(Shard(setting, n, start, min(start + config.rep_block, config.reps)))
    return shards


def applicable_losses(setting: Setting, reference: str, wanted: tuple[str, ...] | None) -> list[str]:
    kinds = ["D3"] if reference == "G_bar" else ["D1", "D2"]
    groups = ["eta"] + (["beta1"] if models.score_has_linear(setting.score) else []) + (
        ["A"] if models.score_has_quadratic(setting.score) else [])
    kinds += [e for e in PARAMETER_ERRORS if e.split("_")[1] in groups]
    return [k for k in kinds if wanted is None or k in wanted]


def shard_data(config: SweepConfig, setting: Setting, n: int, first_rep: int, reps: int,
               device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The replications' data: common random numbers, depending on (setting, seed, n, rep) only."""
    return sample(setting.truth(), n, reps, seed=stable_seed(setting.name, config.seed),
                  first_rep=first_rep, noise_var=setting.noise_var, x_dist=setting.x_dist,
                  device=device)


def shard_init(config: SweepConfig, setting: Setting, n: int, gate: str, ref: MixingMeasure
               ) -> NearTruth:
    """The near-reference start of the fits of ``gate`` at sample size ``n``."""
    return near_truth(ref, setting.k_fit, seed=stable_seed(setting.name, config.seed, n, gate),
                      jitter=config.jitter, split=setting.split)


def run_shard(config: SweepConfig, shard: Shard, *, device: str = "cpu", backend: str = "auto"
              ) -> pd.DataFrame:
    """Fit every gate of the shard's setting on one draw of data; one row per (rep, gate, loss)."""
    setting = config.setting(shard.setting)
    data_seed = stable_seed(setting.name, config.seed)
    R = shard.rep_stop - shard.rep_start
    X, Y = shard_data(config, setting, shard.n, shard.rep_start, R, device)
    rep_ids = list(range(shard.rep_start, shard.rep_stop))
    frames = []
    for gate in config.gates_for(setting):
        ref_kind, ref = reference_measure(setting, gate, device=device, backend=backend)
        init = shard_init(config, setting, shard.n, gate, ref)
        fit = fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score, init=init,
                      algorithm=config.algorithm, backend=backend, reference=ref,
                      max_iter=config.max_iter, sgd=config.sgd_protocol(), rep_ids=rep_ids)
        fitted = fit.measure.to(device="cpu")
        base = {
            "setting": setting.name, "truth_gate": setting.truth_gate, "fit_gate": gate,
            "score": setting.score, "expert": setting.expert, "regime": setting.regime,
            "reference": ref_kind, "d": setting.d, "k_true": setting.k_true,
            "k_fit": setting.k_fit, "n": shard.n, "rep": rep_ids, "seed": data_seed,
            "converged": fit.converged.cpu().numpy(), "certified": fit.certified.cpu().numpy(),
            "n_iter": fit.n_iter.cpu().numpy(), "fit_loss": fit.fit_loss.cpu().numpy(),
            "ref_loss": fit.ref_loss.cpu().numpy(),
            # one batched fit serves R replications: each row carries its share of the time
            "wall_s": fit.wall_s / R, "device": device, "backend": fit.backend,
            "algorithm": config.algorithm, "config_hash": config.hash,
        }
        for loss in applicable_losses(setting, ref_kind, config.losses):
            values = voronoi_loss(fitted, ref, loss).numpy()
            frames.append(pd.DataFrame({**base, "loss_name": loss, "loss_value": values}))
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]


# ---- memory-aware batching -------------------------------------------------------------------

def memory_rep_block(config: SweepConfig, setting: str, n: int, device: str) -> int | None:
    """The most replications one batched fit of ``n`` samples should take on ``device``'s free
    memory (at least 1), or None when free memory is unknown."""
    from kernels.moe.torch_pass import JACOBIAN_CHUNK_BYTES

    free = free_memory(device)
    if free is None:
        return None
    d = get_setting(setting).d
    budget = MEMORY_FRACTION * free - JACOBIAN_CHUNK_BYTES.get(device.split(":")[0], 0)
    return max(1, int(budget // (BYTES_PER_REP_SAMPLE_COORD * n * (d + 1))))


def is_out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError is a RuntimeError saying "out of memory", as is the CPU
    allocator's failure inside some torch kernels; Python's own is MemoryError."""
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err))


def compute_shard(shard: Shard, *, config: SweepConfig, out: str | Path, device: str = "cpu",
                  backend: str = "auto") -> dict:
    """Compute one shard in batches that fit the device, store it atomically, return metadata.

    The replications are fitted in blocks of at most :func:`memory_rep_block`; an out-of-memory
    error halves the block and retries it. Every replication's data and start are seeded by its
    own number, and the batched solvers treat each replication on its own, so the rows depend on
    the block size only through rounding (sums over samples are chunked by the batch's size);
    weakly identified fits, which creep along flat directions for all their iterations, can
    amplify that rounding, so the block is kept at the config's unless memory is short.

    Returns
    -------
    ``{"shard", "rows", "rep_block", "oom_retries", "wall_s", "worker"}``: small, so that a
    remote worker sends back no table.
    """
    start = time.perf_counter()
    block = shard.rep_stop - shard.rep_start
    cap = memory_rep_block(config, shard.setting, shard.n, device)
    if cap is not None:
        block = min(block, cap)
    frames: list[pd.DataFrame] = []
    first, retries = shard.rep_start, 0
    while first < shard.rep_stop:
        sub = Shard(shard.setting, shard.n, first, min(first + block, shard.rep_stop))
        try:
            frames.append(run_shard(config, sub, device=device, backend=backend))
            first = sub.rep_stop
            continue
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or block == 1:
                raise
        # outside the except clause: its traceback no longer pins the failed batch's tensors
        block, retries = block // 2, retries + 1
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    rows = pd.concat(frames, ignore_index=True).sort_values(SORT_KEYS, kind="stable")
    rows = rows.reset_index(drop=True)
    atomic_write(shard_path(Path(out), shard), lambda tmp: rows.to_parquet(tmp, index=False))
    return {"shard": shard.key, "rows": len(rows), "rep_block": block, "oom_retries": retries,
            "wall_s": time.perf_counter() - start, "worker": f"{socket.gethostname()}:{os.getpid()}"}


# ---- the results store ----------------------------------------------------------------------

def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers see either the
    old file or the whole new one, never a partial file, whenever the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates owner-only files; results are for everyone who may read the folder
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def shard_path(out: Path, shard: Shard) -> Path:
    return out / "shards" / f"{shard.key}.parquet"


def remove_partial_files(out: Path) -> None:
    """Temporary files of writers killed before their rename (never read: not ``*.parquet``)."""
    for tmp in (out / "shards").rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_manifest(out: Path, config: SweepConfig, *, force: bool = False) -> None:
    """Record the config hash; refuse to mix shards of a different config unless ``force``."""
    path = out / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("config_hash") != config.hash:
            if not force:
                raise ValueError(
                    f"out: {out} holds results of another config (hash {old.get('config_hash')}, "
                    f"this one {config.hash}); use another --out or --force to start over")
            for stale in (out / "shards").rglob("*.parquet"):
                stale.unlink()
    manifest = {"config_hash": config.hash, "config": config.to_dict(),
                "torch": torch.__version__}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))


def merge(out: Path) -> pd.DataFrame:
    """Rebuild the tidy table from the shard files (sorted: independent of finishing order)."""
    out = Path(out)
    files = sorted((out / "shards").rglob("*.parquet"))
    if not files:
        raise ValueError(f"DIR: no finished shard under {out / 'shards'}")
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    df = df.sort_values(SORT_KEYS, kind="stable")
    df = df.reset_index(drop=True)
    atomic_write(out / "results.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    if len(df) <= CSV_MAX_ROWS:
        atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df


def load_results(out: str | Path) -> pd.DataFrame:
    out = Path(out)
    if (out / "results.parquet").exists():
        return pd.read_parquet(out / "results.parquet")
    if (out / "shards").exists():
        return merge(out)
    if out.is_file() and out.suffix == ".csv":
        return pd.read_csv(out)
    raise ValueError(f"DIR: {out} holds no results (no results.parquet and no shards/)")


# ---- running ----------------------------------------------------------------------------------

def _progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="shard", file=sys.stderr,
                disable=not sys.stderr.isatty(), dynamic_ncols=True)


def _kernel_models(config: SweepConfig) -> list[tuple[str, str, str, int, int]]:
    """``(gate, score, expert, d, k)`` of every model a sweep's passes evaluate: the fitted ones,
    and the truth where it is the reference (its loss certifies the fits; k* atoms compile their
    own kernels, ~7 s on an H100 if left to the first shard)."""
    jobs = []
    for setting in config.setting_objects():
        for gate in config.gates_for(setting):
            jobs.append((gate, setting.score, setting.expert, setting.d, setting.k_fit))
            if setting.reference_kind(gate) == "G*":
                truth = setting.truth()
                jobs.append((truth.gate, truth.score, truth.expert, truth.d, truth.k))
    return jobs


def run_sweep(
    config: SweepConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
    force: bool = False, log: Callable[[str], None] | None = None, executor: str = "local",
    scheduler: str | None = None, local_workers: int | None = None,
    gpus: str | Sequence[int] | None = None,
) -> pd.DataFrame:
    """Run (or finish) a sweep into ``out`` and return the merged table.

    Parameters
    ----------
    config : the validated sweep
    out : results folder (``manifest.json``, ``shards/``, ``results.parquet``); with a remote
        scheduler, a path that every worker can write to
    device, backend : where and how each shard's fits run (with ``gpus``, ``device="cuda"``)
    force : discard the shards of a different config instead of refusing
    log : receives one line per finished shard when stderr is not a terminal
    executor : ``local`` (in-process, the default) or ``dask``
    scheduler, local_workers, gpus : where the ``dask`` executor runs: an existing scheduler's
        address, a ``LocalCluster`` of that many processes, or one worker per GPU (``"all"``,
        ``"0,1"`` or ordinals); see :mod:`moe_theory.executors`

    Finished shards are never recomputed; the merged table is the same whatever the executor,
    the number of workers or the order in which shards finish.
    """
    out = Path(out)
    gpu_ids = parse_gpus(gpus)
    check_executor(executor, scheduler=scheduler, local_workers=local_workers, gpus=gpu_ids)
    if gpu_ids is not None and device != "cuda":
        raise ValueError(f"device: --gpus pins each worker to one GPU, which it sees as 'cuda'; "
                         f"got {device!r}")
    # a remote scheduler's workers may hold GPUs that this machine lacks
    if device.startswith("cuda") and scheduler is None and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    write_manifest(out, config, force=force)
    remove_partial_files(out)
    shards = plan(config)
    todo = [s for s in shards if not shard_path(out, s).exists()]
    if not todo:
        return merge(out)
    if device.startswith("cuda") and scheduler is None and backend != "torch":
        # compile the kernels of every fitted model in the background while G_bar is computed
        precompile(_kernel_models(config))
    if scheduler is None:
        # workers on this machine share the G_bar cache: compute each reference once, here
        for setting in config.setting_objects():
            for gate in config.gates_for(setting):
                if setting.reference_kind(gate) == "G_bar":
                    t0 = time.perf_counter()
                    reference_measure(setting, gate, device=device, backend=backend)
                    log(f"reference G_bar for {setting.name} / {gate} fit ready "
                        f"({time.perf_counter() - t0:.1f} s)")
    if device.startswith("cuda") and executor != "local":
        # the references' fits leave memory in this process's cache that the workers need
        torch.cuda.empty_cache()
    work = functools.partial(compute_shard, config=config, out=str(out.resolve()), device=device,
                             backend=backend)
    bar = _progress(len(shards), len(shards) - len(todo), config.name)
    started = time.perf_counter()
    try:
        for i, meta in enumerate(map_shards(work, todo, executor=executor, scheduler=scheduler,
                                            local_workers=local_workers, gpus=gpu_ids,
                                            device=device), start=1):
            bar.update(1)
            if bar.disable:
                elapsed = time.perf_counter() - started
                eta = elapsed / i * (len(todo) - i)
                retried = f", {meta['oom_retries']} OOM retries" if meta["oom_retries"] else ""
                log(f"[{len(shards) - len(todo) + i}/{len(shards)}] {meta['shard']} done on "
                    f"{meta['worker']} (block {meta['rep_block']}{retried}; {elapsed:.0f} s "
                    f"elapsed, ETA {eta:.0f} s)")
    except KeyboardInterrupt:
        bar.close()
        log(f"interrupted: finished shards are kept in {out / 'shards'}; rerun to finish")
        raise
    bar.close()
    return merge(out)
