"""Sweeps: the cross product settings x n x replications, run shard by shard.

A *shard* is (setting, n, block of replications): one batched fit per fitted gate on one draw of
data, returning tidy rows. Each finished shard goes to the results store (:mod:`moe_theory.store`:
one verified file per shard, one writer per shard), so an interrupted sweep loses at most the
shard in flight, a rerun computes only what is missing, and sweeps started side by side into one
folder share the work. The merged table is rebuilt from the shard files.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kernels.memory import free_bytes, held_by_others, release_cache, total_memory
from kernels.moe import precompile, resolve_backend
from kernels.moe.torch_pass import JACOBIAN_CHUNK_BYTES
from moe_theory.certificates import (
    ReferenceCertificate,
    certify_references,
    reference_path,
)
from moe_theory.config import SweepConfig
from moe_theory.console import log_stderr
from moe_theory.data import sample, stable_seed
from moe_theory.errors import ResourceError, is_out_of_memory
from moe_theory.estimators import Bounds, box_bounds, fit_lse
from moe_theory.executors import check_executor, map_shards, parse_gpus, shard_cost
from moe_theory.initialization import NearTruth, multi_start
from moe_theory.layout import CHECK_FILE, CHECK_TABLE, FITS_FILE, MERGED_TABLES, REFERENCE_DIR
from moe_theory.measure import MixingMeasure
from moe_theory.population import design_size_for, reference_measure
from moe_theory.provenance import code_version
from moe_theory.settings import Setting, get_setting
from moe_theory.store import (
    FIT_MEASURE,
    HOST,
    SORT_KEYS,
    Claim,
    ClaimLost,
    Shard,
    atomic_write,
    claim_holder,
    discard_setting,
    heartbeat,
    make_folder,
    merge,
    plan,
    read_manifest,
    record_references,
    record_rivals,
    remove_stale_temp_files,
    set_aside,
    setting_shards,
    shard_code_versions,
    shard_path,
    try_claim,
    verified_shards,
    write_manifest,
    write_shard,
)
from moe_theory.sublevel import SUBLEVEL_LOSS, start_sublevel
from moe_theory.validation import check_device
from moe_theory.voronoi import (
    applicable_losses,
    voronoi_loss,
)

T = TypeVar("T")

RESULT_COLUMNS = [
    "setting", "truth_gate", "fit_gate", "score", "expert", "regime", "reference", "d", "k_true",
    "k_fit", "n", "rep", "seed", "loss_name", "loss_value", SUBLEVEL_LOSS, "converged",
    "stop_reason", "restart_drop", "certified",
    "n_iter", "fit_loss", "ref_loss", "bound_active", "proj_grad_max", "n_starts", "ssr_spread",
    "starts_near_best", "wall_s", "device", "backend", "algorithm", "config_hash", "code",
    FIT_MEASURE,
]
#: Bytes one replication needs, per sample and input coordinate (float64): X and Y themselves,
#: then gate/expert values, residuals and the trial point of LM hold a few more copies of that
#: size. The Jacobian is chunked (kernels.moe.torch_pass) and reserved for separately.
BYTES_PER_REP_SAMPLE_COORD = 8 * 8
#: Share of the device's whole memory (:func:`memory_rep_block`) a shard's batch may plan to use;
#: the rest absorbs what the estimate misses (allocator fragmentation, the G_bar reference). What
#: other processes hold is waited for, not planned around (:func:`fit_in_blocks`).
MEMORY_FRACTION = 0.5
#: Seconds to wait, one after the other, when a batch finds the GPU's memory held by other
#: processes, whose batches end and free it (on an H100, 2026-12-06, eleven sweeps of 2-3
#: processes each filled it and stopped every one), or when even one replication finds no memory
#: or the plan cannot ask (the driver's own query needs some). About 5 minutes per batch, then
#: the error (one replication) or a halved block. A block of replications ends its wait early
#: once the GPU has what it is planned to need free (:func:`_wait_for_memory`); the part left
#: over is waited at the next shortage before the next wait begins, so a batch waits no longer
#: in all, and halves no sooner, than these sum.
GPU_MEMORY_WAITS_S = (5, 10, 20, 30, 60, 60, 60, 60)
#: Seconds between looks at the GPU's free memory during a wait (a look is one driver query).
MEMORY_POLL_S = 1.0

#: Largest relative change of a recorded G_bar (max |change| over max |parameter|) that a
#: resumed sweep accepts as rounding (another machine's or library's arithmetic) rather than
#: another reference: far below the statistical error of any fit measured against it, which the
#: reference certificate already asks G_bar's own design error to stay under (docs/theory.md).
REFERENCE_RTOL = 1e-6

#: Seconds between looks at shards that other sweeps hold, once nothing else is left to do.
CLAIM_POLL_S = 2.0


def shard_data(config: SweepConfig, setting: Setting, n: int, first_rep: int, reps: int,
               device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The replications' data: common random numbers, depending on (setting, seed, n, rep) only."""
    return sample(setting.truth(), n, reps, seed=stable_seed(setting.name, config.seed),
                  first_rep=first_rep, noise_var=setting.noise_var, x_dist=setting.x_dist,
                  device=device)


def shard_init(config: SweepConfig, setting: Setting, n: int, gate: str, ref: MixingMeasure
               ) -> list[NearTruth]:
    """The starts of the fits of ``gate`` at sample size ``n``: the near-reference one first,
    then ``config.starts`` perturbed ones (docs/theory.md#multi-start); each replication's are
    seeded by (setting, seed, n, gate, start, rep) alone, never by the data."""
    return multi_start(ref, setting.k_fit, seed=stable_seed(setting.name, config.seed, n, gate),
                       jitter=config.jitter, extra=config.starts, start_jitter=config.start_jitter,
                       split=reference_split(setting, ref),
                       every_split=config.start_splits == "every")


def shard_box(config: SweepConfig, setting: Setting, gate: str, ref: MixingMeasure) -> Bounds:
    """The box of the fits of ``gate`` (docs/theory.md#compact-parameter-set): around the
    reference as the starts split it, every split where they cycle through them."""
    return box_bounds(ref, setting.k_fit, config.bound_scale, gate=gate,
                      split=reference_split(setting, ref),
                      every_split=config.start_splits == "every")


def reference_split(setting: Setting, ref: MixingMeasure) -> tuple[int, ...] | None:
    """The setting's split of ``G*``'s atoms, for a reference that still needs splitting; a
    ``G_bar`` has the fit's k atoms already (splitting it again was an error)."""
    return setting.split if ref.k < setting.k_fit else None


def run_shard(config: SweepConfig, shard: Shard, *, device: str = "cpu", backend: str = "auto",
              gates: Sequence[str] | None = None,
              references: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Fit every gate of the shard's setting that fits its replications (``gate_reps``), or
    ``gates``, a subset in that order, on one draw of data; one row per (rep, gate, loss). A
    gate's rows do not depend on the other gates fitted beside it: the optimiser check fits
    one gate per job, so that its longest job (and what an interrupted check loses) is half a
    shard.

    ``references``: the G_bar of each ``"setting/gate"`` (its JSON, as a results folder's
    manifest records it) to start near and measure against, where it is given; else G_bar is
    computed, or read from the cache, for ``device``. The sweep's shards and the optimiser
    check's refits pass their folder's record (:func:`recorded_references`): G_bar's design, so
    G_bar itself, depends on the device type, and its computation on the library's version, so
    a sweep resumed or checked elsewhere would otherwise fit near, and measure against, another
    reference than its first shards."""
    setting = config.setting(shard.setting)
    data_seed = stable_seed(setting.name, config.seed)
    R = shard.rep_stop - shard.rep_start
    X, Y = shard_data(config, setting, shard.n, shard.rep_start, R, device)
    rep_ids = list(range(shard.rep_start, shard.rep_stop))
    frames = []
    for gate in config.gates_in(setting, shard.rep_start) if gates is None else gates:
        recorded = (references or {}).get(f"{setting.name}/{gate}")
        if recorded is not None and setting.reference_kind(gate) == "G_bar":
            ref_kind, ref = "G_bar", MixingMeasure.from_json(recorded)
        else:
            ref_kind, ref = reference_measure(
                setting, gate, device=device, backend=backend,
                design_size=design_size_for(device, config.g_bar_design_size))
        init = shard_init(config, setting, shard.n, gate, ref)
        bounds = shard_box(config, setting, gate, ref)
        fit = fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score, init=init,
                      algorithm=config.algorithm, backend=backend, reference=ref, bounds=bounds,
                      noise_var=setting.noise_var, max_iter=config.max_iter,
                      sgd=config.sgd_protocol(), rep_ids=rep_ids, gram_dtype=config.gram_dtype)
        fitted = fit.measure.to(device="cpu")
        base = {
            "setting": setting.name, "truth_gate": setting.truth_gate, "fit_gate": gate,
            "score": setting.score, "expert": setting.expert, "regime": setting.regime,
            "reference": ref_kind, "d": setting.d, "k_true": setting.k_true,
            "k_fit": setting.k_fit, "n": shard.n, "rep": rep_ids, "seed": data_seed,
            "converged": fit.converged.cpu().numpy(), "certified": fit.certified.cpu().numpy(),
            "n_iter": fit.n_iter.cpu().numpy(), "fit_loss": fit.fit_loss.cpu().numpy(),
            "ref_loss": fit.ref_loss.cpu().numpy(), "stop_reason": fit.stop_reason,
            "restart_drop": fit.restart_drop.cpu().numpy(),
            "bound_active": fit.bound_active.cpu().numpy(),
            "proj_grad_max": fit.proj_grad_max.cpu().numpy(), "n_starts": fit.n_starts,
            "ssr_spread": fit.ssr_spread.cpu().numpy(),
            "starts_near_best": fit.starts_near_best.cpu().numpy(),
            # one batched fit serves R replications: each row carries its share of the time
            "wall_s": fit.wall_s / R, "device": device, "backend": fit.backend,
            "algorithm": config.algorithm, "config_hash": config.hash,
            # which code fitted it: a sweep resumed after the code changed mixes two versions,
            # which its rates table then names (moe_theory.rates)
            "code": code_version(),
            # the estimate itself, so that a loss can be measured again without refitting
            # (moe_theory.remeasure); compact JSON, exact for float64 (repr round-trips)
            FIT_MEASURE: fitted.to_json_rows(),
        }
        # with one start there is no other fit of the data to read: NaN, not the kept loss
        starts = fit.start_measure.to(device="cpu") if fit.n_starts > 1 else None
        inside = None if starts is None else fit.start_certified.cpu().numpy()
        for loss in applicable_losses(setting, ref_kind, config.losses, gate):
            values = voronoi_loss(fitted, ref, loss).numpy()
            reach = np.full(R, np.nan) if starts is None else start_sublevel(
                voronoi_loss(starts, ref, loss).numpy().reshape(fit.n_starts, R).T, inside)
            frames.append(pd.DataFrame({**base, "loss_name": loss, "loss_value": values,
                                        SUBLEVEL_LOSS: reach}))
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]


# ---- memory-aware batching -------------------------------------------------------------------

def memory_rep_block(config: SweepConfig, setting: str, n: int, device: str) -> int | None:
    """The most replications one batched fit of ``n`` samples should take on ``device`` (at least
    1), or None when its memory is unknown.

    The plan is made against the device's whole memory (the machine's physical memory, a GPU's
    total), a fixed number, never the free count: that moves with the page cache and the other
    processes on a GPU, and a block chosen from it made a resumed CPU sweep's rows, and a GPU
    sweep's beside other processes, differ in the last bits from an undisturbed run's (the rows
    depend on the block through rounding, :func:`compute_shard`). What other processes hold
    when the batch runs it waits for (:func:`fit_in_blocks`).
    """
    memory = total_memory(device)
    if memory is None:
        return None
    budget = MEMORY_FRACTION * memory - _jacobian_bytes(device)
    return max(1, int(budget // _rep_bytes(setting, n)))


def memory_need(setting: str, n: int, reps: int, device: str) -> int:
    """Bytes a batched fit of ``reps`` replications of ``n`` samples is planned to need on
    ``device``: what :func:`memory_rep_block` plans with, and what a block that waits for memory
    waits to see free."""
    return reps * _rep_bytes(setting, n) + _jacobian_bytes(device)


def _rep_bytes(setting: str, n: int) -> int:
    return BYTES_PER_REP_SAMPLE_COORD * n * (get_setting(setting).d + 1)


def _jacobian_bytes(device: str) -> int:
    """The Jacobian's chunk, reserved once per batch (kernels.moe.torch_pass)."""
    return JACOBIAN_CHUNK_BYTES.get(device.split(":")[0], 0)


def compute_shard(shard: Shard, *, config: SweepConfig, out: str | Path, device: str = "cpu",
                  backend: str = "auto") -> dict:
    """Claim one shard, compute it in batches that fit the device, store it, return metadata.

    A shard that another live writer has claimed, or that is already stored, is left alone
    (``status`` says so); the claim is released whatever happens, and one left by a killed
    writer goes stale (:mod:`moe_theory.store`).

    The replications are fitted in blocks of at most :func:`memory_rep_block`, waiting for
    memory that other processes hold and halving a block that does not fit the device alone
    (:func:`fit_in_blocks`). Every replication's data and start are seeded by its own number,
    and the batched solvers treat each replication on its own, so the rows depend on the block
    size only through rounding (on a GPU, sums over samples are chunked by the batch's size);
    weakly identified fits, which creep along flat directions for all their iterations, can
    amplify that rounding, so the block is kept at the config's unless the device is too small.

    Returns
    -------
    ``{"shard", "status", "rows", "reps", "rep_block", "oom_retries", "wall_s", "worker"}``:
    small, so that a remote worker sends back no table. ``status`` is ``computed``, ``stored``
    (finished meanwhile by another writer), ``claimed`` (another writer holds it: ``worker``
    names it) or ``lost`` (another writer took the claim over while this one computed, as
    stale: this process was stopped past ``STALE_AFTER_S``, say; nothing is stored, the shard
    is the new writer's, which ``worker`` names, empty where the claim was removed).
    """
    out = Path(out)
    start = time.perf_counter()
    meta = {"shard": shard.key, "status": "computed", "rows": 0,
            "reps": shard.rep_stop - shard.rep_start, "rep_block": 0, "oom_retries": 0,
            "wall_s": 0.0, "worker": f"{HOST}:{os.getpid()}"}
    claim = try_claim(out, shard)
    if not isinstance(claim, Claim):
        return {**meta, "status": "claimed", "worker": str(claim)}
    try:
        # a writer that held the claim until a moment ago may have stored the shard
        if verified_shards(out, [shard], report=lambda msg: None, config_hash=config.hash):
            return {**meta, "status": "stored"}
        with heartbeat(claim):
            rows, block, retries = fit_in_blocks(shard, config, device, backend,
                                                 recorded_references(out))
            # stored only under a claim still this process's, just refreshed: no other writer
            # takes it over before STALE_AFTER_S, far longer than the write
            claim.confirm()
            write_shard(out, shard, rows)
        # the other processes on the GPU wait for the memory this shard's batches cached rather
        # than shrink their blocks (fit_in_blocks): give it back between shards
        _empty_cache(device)
    except ClaimLost as lost:
        return {**meta, "status": "lost", "worker": str(lost.holder or "")}
    finally:
        claim.release()
    return {**meta, "rows": len(rows), "rep_block": block, "oom_retries": retries,
            "wall_s": time.perf_counter() - start}


def recorded_references(out: str | Path) -> dict[str, str]:
    """The G_bar references (``"setting/gate"`` -> JSON) the manifest in ``out`` records: those
    its shards were measured against (:func:`check_references`); empty before any is recorded
    (a sweep on a Dask scheduler's workers, which compute their own)."""
    return dict((read_manifest(Path(out)) or {}).get("references", {}))


def _memory_waits(device: str) -> tuple[float, ...]:
    """The waits for memory (:data:`GPU_MEMORY_WAITS_S`) on a GPU, which several processes share
    by design (:data:`moe_theory.executors.GPU_PROCESSES`); none on the CPU, whose one
    replication too large for the machine will stay so."""
    return GPU_MEMORY_WAITS_S if device.startswith("cuda") else ()


def _empty_cache(device: str) -> None:
    """Give the failed batch's cached blocks back to the GPU, for the other processes too
    (:func:`kernels.memory.release_cache`)."""
    try:
        release_cache(device)
    except RuntimeError as err:  # a context the full GPU had no room for: nothing cached
        if not is_out_of_memory(err):
            raise


def _ask_driver(query: Callable[[str], T], device: str, *, no_gpu: T, too_full: T) -> T:
    """``query(device)`` on a GPU; ``no_gpu`` on the CPU, ``too_full`` where the GPU has no
    memory left for the driver's own query (the context or the query's allocation fails)."""
    if not device.startswith("cuda"):
        return no_gpu
    try:
        return query(device)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        return too_full


def _free_memory(device: str) -> int | None:
    """Bytes the driver counts free on the GPU ``device``; None where it cannot say."""
    return _ask_driver(free_bytes, device, no_gpu=None, too_full=None)


def _wait_for_memory(device: str, seconds: float, need: int | None) -> float:
    """Sleep up to ``seconds``, looking every :data:`MEMORY_POLL_S` at the GPU's free memory, and
    stop at the first look that finds ``need`` bytes free: the seconds slept. Without a need
    (work with no memory plan) the wait is whole; a look the driver cannot answer (a GPU too
    full for its query) finds nothing free. Waiting for the planned need, not for any memory
    freed, keeps processes that wait side by side from waking each other: each one's failed
    attempt frees what it took, which is no sign that a batch fits (on an H100, two sweeps of
    four processes woken by any 1 GiB freed retried one block 16 times)."""
    start = time.monotonic()
    while (slept := time.monotonic() - start) < seconds:
        time.sleep(min(MEMORY_POLL_S, seconds - slept))
        free = _free_memory(device) if need is not None else None
        if free is not None and free >= need:
            return time.monotonic() - start
    return slept


def _others_hold_memory(device: str) -> bool:
    """Whether other processes hold memory on the GPU ``device`` (:func:`held_by_others`); a GPU
    too full to answer is held by them. Never on the CPU."""
    return _ask_driver(held_by_others, device, no_gpu=False, too_full=True)


def waiting_for_memory(run: Callable[[], T], device: str, what: str,
                       log: Callable[[str], None], *, divisible: bool = False,
                       need: int | None = None) -> T:
    """``run()``, and again after each wait for memory (:func:`_memory_waits`) while the GPU has
    too little: the same computation is repeated, so the result is the one an undisturbed run
    gives; the waits spent, the error.

    For work that cannot be split into smaller batches (one replication, the memory plan's own
    query, a G_bar search on its whole design, the reference certificates) every shortage is
    waited for. ``divisible``: work that can (a block of replications, :func:`fit_in_blocks`),
    whose rows a smaller block would change in the last bits; it waits only while other
    processes hold memory (:func:`_others_hold_memory`), and otherwise the error returns at
    once: the block does not fit the GPU alone, and a wait would not change that. ``need``: the
    bytes the work is planned to need (:func:`memory_need`); a wait ends once they are free."""
    waits, left = iter(_memory_waits(device)), 0.0  # left: a wait that memory freed cut short
    while True:
        try:
            return run()
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            # the reserve this process holds is subtracted, failed batch or not (held_by_others)
            if divisible and not _others_hold_memory(device):
                raise
            if left <= 0:
                left = next(waits, None)
                if left is None:
                    raise
        # outside the except clause: its traceback no longer pins the failed attempt's tensors
        _empty_cache(device)
        log(f"{what}: the GPU has too little memory free (other processes hold it); "
            f"trying again in {left:.3g} s" + (", or once it is free" if need else ""))
        left -= _wait_for_memory(device, left, need)


def fit_in_blocks(shard: Shard, config: SweepConfig, device: str, backend: str,
                  references: Mapping[str, str] | None,
                  gates: Sequence[str] | None = None, *, sort: bool = True
                  ) -> tuple[pd.DataFrame, int, int]:
    """The shard's rows (:func:`run_shard`), the block size that fitted and the number of
    out-of-memory retries: the sweep's shards and the optimiser check's refits alike.

    The block is the shard's unless the memory plan (:func:`memory_rep_block`, made against the
    device's whole memory) caps it, so the rows are the same bit for bit whatever other
    processes hold. On a GPU that other processes fill, a block without memory waits for their
    batches to end and runs again whole (:func:`waiting_for_memory`); one that does not fit
    alone, or whose waits are spent, is halved (its rows then differ from an undisturbed run's
    in the last bits: :func:`_log_shard` says so). One replication, or a plan that cannot ask
    the device, waits in any case, and the waits spent, the error ends the shard (stored shards
    are kept: a resumed sweep goes on). Each wait and each halving counts as a retry.

    The rows come sorted by the store's keys (a sweep's shard), or with ``sort=False`` in
    :func:`run_shard`'s own order (gate, loss, replication: the check's refits, stored in that
    order since their first run); either order is the same whatever the blocks."""
    waited: list[str] = []  # one line per wait (a worker has no log of its own to write to)
    cap = waiting_for_memory(lambda: memory_rep_block(config, shard.setting, shard.n, device),
                             device, f"{shard.key}: the memory plan", waited.append)
    block = shard.rep_stop - shard.rep_start
    block = block if cap is None else min(block, cap)
    frames: list[pd.DataFrame] = []
    first, halvings = shard.rep_start, 0
    while first < shard.rep_stop:
        sub = Shard(shard.setting, shard.n, first, min(first + block, shard.rep_stop))
        fit = functools.partial(run_shard, config, sub, device=device, backend=backend,
                                gates=gates, references=references)
        try:
            need = memory_need(shard.setting, shard.n, sub.rep_stop - sub.rep_start, device)
            frames.append(waiting_for_memory(fit, device, sub.key, waited.append,
                                             divisible=block > 1, need=need))
            first = sub.rep_stop
            continue
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            if block == 1:
                # nothing smaller to try: the machine's answer, said as the sample size that
                # asked too much (it was a traceback of numpy's or torch's allocator); Python's
                # own MemoryError may carry no message at all
                said = str(err).partition("\n")[0][:200] or "no message"
                raise ResourceError(
                    f"{sub.key}: one replication at n = {shard.n} does not fit in the memory "
                    f"of {device} ({type(err).__name__}: {said}); lower n, or run on a "
                    "machine with more memory: finished shards are kept") from None
        # outside the except clause: its traceback no longer pins the failed batch's tensors
        block, halvings = block // 2, halvings + 1
        _empty_cache(device)
    rows = pd.concat(frames, ignore_index=True)
    if sort:
        rows = rows.sort_values(SORT_KEYS, kind="stable")
    elif len(frames) > 1:  # each block's (gate, loss) groups in turn, their reps in block order
        rows = pd.concat([group for _, group in rows.groupby(["fit_gate", "loss_name"], sort=False)])
    return rows.reset_index(drop=True), block, halvings + len(waited)


# ---- running ----------------------------------------------------------------------------------

def _progress(total: int, initial: int, desc: str):
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


#: Times one sweep computes a shard that then does not verify before it stops: a shard written
#: wrong every time (a worker whose toolkit computes another config hash than this process's,
#: a disk that corrupts what it is given) would otherwise be set aside and computed for ever.
SHARD_RUNS_MAX = 2


def _refuse_endless_recompute(runs: dict[str, int], finished: set[str], config_hash: str
                              ) -> None:
    lost = sorted(key for key, count in runs.items()
                  if count >= SHARD_RUNS_MAX and key not in finished)
    if lost:
        raise ResourceError(
            f"{lost[0]}: computed {runs[lost[0]]} times by this sweep and set aside each time "
            f"(see the lines above: rows of another config than {config_hash}, a worker running "
            "another version of the toolkit, or a file damaged as written); finished shards "
            f"are kept{f', {len(lost) - 1} other shard(s) alike' if len(lost) > 1 else ''}")


def _log_shard(meta: dict, log: Callable[[str], None], bar, *, index: int, total: int,
               elapsed: float, computed: int) -> None:
    """Advance the progress bar, or (stderr not a terminal) log one line, for a computed shard:
    the ``index``-th finished of ``total``, the ``computed``-th this run, ``elapsed`` s in. A
    shard fitted in smaller blocks than its own is logged in any case: its rows are another
    block's, the same as an undisturbed run's only to rounding (:func:`fit_in_blocks`)."""
    bar.update(1)
    if meta["rep_block"] < meta["reps"]:
        log(f"{meta['shard']}: fitted in blocks of {meta['rep_block']} of its {meta['reps']} "
            "replications (memory short): its rows equal a run with these blocks bit for bit, "
            "one with the shard's own blocks to rounding")
    if bar.disable:
        eta = elapsed / computed * (total - index)
        retried = f", {meta['oom_retries']} OOM retries" if meta["oom_retries"] else ""
        log(f"[{index}/{total}] {meta['shard']} done on {meta['worker']} (block "
            f"{meta['rep_block']}{retried}; {elapsed:.0f} s elapsed, ETA {eta:.0f} s)")


def prepare_references(config: SweepConfig, out: str | Path, *, device: str = "cpu",
                       backend: str = "auto", log: Callable[[str], None],
                       force: bool = False) -> None:
    """The sweep's G_bar references, each computed once here (or read from the cache) before any
    shard needs it, checked against those the folder's shards were measured against
    (:func:`check_references`), and their certificates saved in ``out``; workers of this machine
    then read the cache instead of racing to compute the same reference.

    Neither can be split into batches, so on a GPU that other processes fill each waits for
    memory and runs again (:func:`waiting_for_memory`): G_bars found before the wait are read
    from the cache, and the result is the one an undisturbed run gives."""
    waiting_for_memory(
        lambda: _fit_references(config, out, device=device, backend=backend, log=log,
                                force=force),
        device, "the G_bar references", log)
    # is each reference identified? (docs/theory.md#certificates; saved beside the shards)
    certify(config, out, device=device, backend=backend, log=log)


def _fit_references(config: SweepConfig, out: str | Path, *, device: str, backend: str,
                    log: Callable[[str], None], force: bool) -> None:
    refs = {}
    adopted = _adopted_references(Path(out), design_size_for(device, config.g_bar_design_size))
    for setting in config.setting_objects():
        for gate in config.gates_for(setting):
            if setting.reference_kind(gate) == "G_bar":
                key = f"{setting.name}/{gate}"
                if key in adopted:
                    refs[setting.name, gate] = MixingMeasure.from_json(adopted[key])
                    log(f"reference G_bar for {setting.name} / {gate} fit read from the "
                        "folder's manifest (adopted with --references-from)")
                    continue
                t0 = time.perf_counter()
                _, refs[setting.name, gate] = reference_measure(
                    setting, gate, device=device, backend=backend,
                    design_size=design_size_for(device, config.g_bar_design_size))
                log(f"reference G_bar for {setting.name} / {gate} fit ready "
                    f"({time.perf_counter() - t0:.1f} s)")
    check_references(Path(out), refs, force=force, log=log,
                     design_size=design_size_for(device, config.g_bar_design_size))


def adopt_references(config: SweepConfig, out: str | Path, source: str | Path, *,
                     device: str = "cpu", force: bool = False) -> list[str]:
    """Start ``out`` from the G_bar references another folder records (``--references-from``):
    a figure re-run to record more than its first run did, or run further (more sample sizes or
    replications), whose fits must be measured against the references the first run's were,
    without fitting them again.

    G_bar depends on the setting, the fitted gate and the design (:func:`design_size_for`: the
    device type, or the config's ``g_bar_design_size``), not on the grid: ``source`` must record,
    for every G_bar this config uses, one of the same setting (fitted with as many atoms) on the
    design ``device`` fits. Its references, their design sizes and rivals are recorded in
    ``out``'s manifest with ``references_from``, which makes :func:`prepare_references` read
    them instead of fitting them, now and when the sweep resumes; where ``source`` ran this very
    config its reference certificates are copied too (another grid's are recomputed, against the
    adopted G_bar). The setting's name stands for its definition (the registry's; the tests pin
    the committed folders'). A folder that already records other references is refused before
    anything is written into it. Returns the adopted keys."""
    out, source = Path(out), Path(source)
    if source.exists() and not source.is_dir():
        # bad input (exit 2), not the file system's "Not a directory" (exit 3)
        raise ValueError(f"references_from: {source} is a file, not a sweep folder")
    theirs = read_manifest(source)
    if theirs is None:
        raise ValueError(f"references_from: {source} has no manifest.json (not a sweep folder)")
    size = design_size_for(device, config.g_bar_design_size)
    recorded, sizes = theirs.get("references", {}), theirs.get("reference_design_sizes", {})
    k_fits = {s.name: s.k_fit for s in config.setting_objects()}
    keys = [f"{s.name}/{g}" for s in config.setting_objects() for g in config.gates_for(s)
            if s.reference_kind(g) == "G_bar"]
    for key in keys:
        if key not in recorded:
            raise ValueError(f"references_from: {source / 'manifest.json'} records no G_bar "
                             f"for {key}")
        atoms = MixingMeasure.from_json(recorded[key]).k
        if atoms != k_fits[key.split("/")[0]]:
            raise ValueError(f"references_from: the G_bar of {key} in {source} has {atoms} "
                             f"atoms, this config fits {k_fits[key.split('/')[0]]}")
        if key not in sizes:
            raise ValueError(f"references_from: {source / 'manifest.json'} records no design "
                             f"size for the G_bar of {key} (written before they were recorded)")
        if sizes[key] != size:
            raise ValueError(
                f"references_from: the G_bar of {key} in {source} was fitted on {sizes[key]} "
                f"design points, a sweep on {device} fits {size} (G_bar depends on the device "
                f"type, or the config's g_bar_design_size): run it where {source} ran")
    # refused before anything is written into ``out``
    mine = read_manifest(out) or {}
    held = mine.get("references", {}) if mine.get("config_hash") == config.hash else {}
    clash = [k for k in keys if k in held and held[k] != recorded[k]]
    if clash:
        raise ValueError(f"references_from: {out} already records other references for "
                         f"{', '.join(clash)}; use another --out")
    make_folder(out)
    write_manifest(out, config, force=force)
    # ``seen``: checked and recorded as one step, under the manifest's lock: a sweep started in
    # ``out`` meanwhile may have recorded a G_bar of its own, which this must not overwrite
    record_references(out, {k: recorded[k] for k in keys}, {k: size for k in keys},
                      adopted_from=source, seen=held, refused=lambda moved: (
                          f"references_from: another sweep recorded the G_bar of "
                          f"{', '.join(moved)} in {out} while this one adopted those of "
                          f"{source}; use another --out"))
    rivals = {k: v for k, v in theirs.get("rival_references", {}).items() if k in keys}
    if rivals:
        record_rivals(out, rivals)
    if theirs.get("config_hash") == config.hash:
        # a certificate depends on the grid too: only this config's are the ones it would write
        for path in sorted((source / REFERENCE_DIR).glob("*.json")):
            target = out / REFERENCE_DIR / path.name
            if not _json_file(target):
                # whole or not at all: a copy cut short had left JSON that no re-run replaced
                atomic_write(target, functools.partial(shutil.copyfile, path))
    return keys


def _json_file(path: Path) -> bool:
    """Whether ``path`` holds a whole JSON document."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _adopted_references(out: Path, design_size: int) -> dict[str, str]:
    """The G_bar references ``out``'s manifest adopted from another folder
    (:func:`adopt_references`), refused where this device fits another design."""
    manifest = read_manifest(out) or {}
    if manifest.get("references_from") is None:
        return {}
    sizes = manifest.get("reference_design_sizes", {})
    wrong = {k: v for k, v in sizes.items() if v != design_size}
    if wrong:
        key, size = next(iter(wrong.items()))
        raise ValueError(f"reference: {out} adopted the G_bar of {key}, fitted on {size} design "
                         f"points, and this device fits {design_size}: resume the sweep on the "
                         f"device type that made {manifest['references_from']}")
    return dict(manifest.get("references", {}))


def certify(config: SweepConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
            log: Callable[[str], None] | None = None, force: bool = False
            ) -> list[ReferenceCertificate]:
    """The reference certificates of ``config``'s fits in ``out``
    (:func:`~moe_theory.certificates.certify_references`), with the losses the sweep measures
    and the box its fits use; on a GPU that other processes fill they wait for memory and are
    computed again (:func:`waiting_for_memory`), each the same as undisturbed."""
    return waiting_for_memory(
        lambda: certify_references(
            config, out, device=device, backend=backend, log=log, force=force,
            losses=functools.partial(applicable_losses, wanted=config.losses),
            box=functools.partial(shard_box, config)),
        device, "the reference certificates", log or (lambda msg: None))


def check_references(out: Path, refs: dict[tuple[str, str], MixingMeasure], *, force: bool,
                     log: Callable[[str], None], design_size: int) -> None:
    """Refuse to add shards measured against another G_bar than the folder's.

    G_bar depends on more than the config: its design size on the device type
    (``moe_theory.population.DESIGN_SIZE``) and its computation on the library's version
    (``CACHE_VERSION``). A sweep interrupted on a CPU and resumed on a GPU, or resumed after that
    computation changed, would otherwise merge rows measured against two references into one
    curve. The manifest records each reference the shards use; a resumed sweep whose G_bar
    differs beyond rounding (:data:`REFERENCE_RTOL`) raises, naming it, unless ``force``, which
    deletes that setting's shards and reference certificates so that they are recomputed.
    Shards written before references were recorded cannot be checked and are refused alike.
    Each new record carries ``design_size``, the design its G_bar was fitted on.
    """
    recorded = recorded_references(out)
    changed, clearing = {}, []
    for (setting, gate), ref in refs.items():
        key, text = f"{setting}/{gate}", ref.to_json()
        old = recorded.get(key)
        if old == text:
            continue
        if old is not None:
            before = MixingMeasure.from_json(old)
            gap = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-300))
                      for a, b in ((before.gate_params, ref.gate_params),
                                   (before.expert_params, ref.expert_params)))
            if gap <= REFERENCE_RTOL:
                # the record stays, and the shards computed now are measured against it
                # (run_shard's references), so no curve mixes two references
                log(f"warning: the G_bar of {key} computed here differs from the one recorded "
                    f"in {out} by {gap:.1e} (relative; rounding, in the last bits): the shards "
                    f"computed now start near, and are measured against, the recorded one")
                continue
            why = f"it differs by {gap:.1e} (relative) from the one recorded in the manifest"
        else:
            why = "the folder's shards were written before references were recorded"
        shards = setting_shards(out, setting)
        # a finished folder may keep its merged table alone (a committed figure's): its rows
        # were measured against the recorded G_bar as much as shards are
        merged = [name for name in MERGED_TABLES if (out / name).exists()]
        if (shards or merged) and not force:
            held = (f"the {len(shards)} shard(s) of {setting}" if shards else
                    f"the merged table ({', '.join(merged)})")
            raise ValueError(
                f"reference: the G_bar of {key} is not the one {held} in {out} were measured "
                f"against ({why}; G_bar depends on the device's design size and on the "
                f"library's version); finish the sweep where it started, use another --out, "
                f"or --force to recompute that setting's shards")
        clearing.append((setting, gate, key, why))
        changed[key] = text

    def clear() -> None:
        # what was measured against the records replaced, removed only once the new record is
        # sure to be made: a record refused after the deletions had lost the shards for nothing.
        # What is there is looked at here, key by key: an earlier key (another gate of the
        # setting; any setting for the folder-wide merged table) may have removed it already
        for setting, gate, key, why in clearing:
            n = discard_setting(out, setting)
            if n:
                log(f"--force: {n} shard(s) of {setting} were measured against another G_bar "
                    f"of {key} ({why}) and were deleted")
            merged = [name for name in MERGED_TABLES if (out / name).exists()]
            aside = set_aside(out, names=(*merged, FITS_FILE)) if merged else None
            if aside is not None:
                log(f"--force: the merged table measured {setting} against another G_bar of "
                    f"{key} ({why}): moved to {aside.name}/ (the shards on disk, if any, merge "
                    "anew)")
            # a certificate already in the folder is another G_bar's (or of unknown G_bar)
            reference_path(out, setting, gate).unlink(missing_ok=True)

    if changed:
        # checked and recorded as one step: a sweep started beside this one may have recorded
        # its own since this one read the manifest
        record_references(out, changed, {key: design_size for key in changed}, seen=recorded,
                          clear=clear)
        # the optimiser check's verdicts and refits measured the fits against the G_bar replaced
        # here, and its config hash (the same config) would not tell: kept beside, never read
        aside = set_aside(out, names=(CHECK_FILE, CHECK_TABLE))
        if aside is not None:
            log(f"the optimiser check in {out} measured another G_bar of "
                f"{', '.join(sorted(changed))}: moved to {aside.name}/; run moe-theory check "
                "again")


def prepare_references_task(config: SweepConfig, *, out: str, device: str, backend: str,
                            force: bool = False) -> None:
    """:func:`prepare_references` as one task of a cluster (picklable; its lines to the
    worker's stderr)."""
    prepare_references(config, out, device=device, backend=backend, log=log_stderr, force=force)


def _warn_other_code(out: Path, finished: Mapping[Shard, str], log: Callable[[str], None]) -> None:
    """Say so where a resumed sweep's finished shards were computed by other code than this
    process runs: the table will mix the two versions (its rates notes name them,
    moe_theory.rates.code_versions_note), which a run of either alone may not reproduce."""
    mine = code_version()
    other = {code: count for code, count in shard_code_versions(out, finished).items()
             if code != mine}
    if not other:
        return
    named = ", ".join(f"{count} by {code or 'code whose version was not recorded'}"
                      for code, count in sorted(other.items(), key=lambda kv: str(kv[0])))
    this = f"this process runs {mine}" if mine else "this process's code has no version"
    log(f"warning: {sum(other.values())} of the {len(finished)} finished shard(s) in {out} were "
        f"computed by other code than this ({named}; {this}): the table will mix versions, and "
        "its rates notes name them; another --out runs this version alone")


def check_sweep_options(*, device: str = "cpu", backend: str = "auto", executor: str = "local",
                        scheduler: str | None = None, local_workers: int | None = None,
                        gpus: str | Sequence[int] | None = None) -> tuple[int, ...] | None:
    """Refuse :func:`run_sweep`'s inconsistent options (each message names its flag); the GPU
    ordinals of ``gpus``. Called before anything is written into a folder, by the sweep and by
    whatever writes into the folder before it (:func:`adopt_references`)."""
    gpu_ids = parse_gpus(gpus)
    check_executor(executor, scheduler=scheduler, local_workers=local_workers, gpus=gpu_ids)
    if gpu_ids is not None and device != "cuda":
        raise ValueError(f"device: --gpus pins each worker to one GPU, which it sees as 'cuda'; "
                         f"got {device!r}")
    if scheduler is None:
        # a remote scheduler's workers may hold GPUs (and kernels) that this machine lacks
        resolve_backend(backend, check_device("device", device))
    return gpu_ids


def run_sweep(
    config: SweepConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
    force: bool = False, log: Callable[[str], None] | None = None, executor: str = "local",
    scheduler: str | None = None, local_workers: int | None = None,
    gpus: str | Sequence[int] | None = None, on_references: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """Run (or finish) a sweep into ``out`` and return the merged table.

    Parameters
    ----------
    config : the validated sweep
    out : results folder (``manifest.json``, ``shards/``, ``results.parquet``); with a remote
        scheduler, a path that every worker can write to
    device, backend : where and how each shard's fits run (with ``gpus``, ``device="cuda"``)
    force : set a different config's outputs aside (``moe_theory.store.set_aside``) instead of
        refusing
    log : receives one line per finished shard when stderr is not a terminal
    executor : ``local`` (in-process, the default) or ``dask``
    scheduler, local_workers, gpus : where the ``dask`` executor runs: an existing scheduler's
        address, a ``LocalCluster`` of that many processes, or one worker per GPU (``"all"``,
        ``"0,1"`` or ordinals); see :mod:`moe_theory.executors`
    on_references : called once the references and their certificates are ready, before any
        shard is fitted (where this process prepares them: not with a remote scheduler, nor
        for a folder already finished)

    Finished shards are never recomputed; the merged table is the same whatever the executor,
    the number of workers or the order in which shards finish.
    """
    out = Path(out)
    gpu_ids = check_sweep_options(device=device, backend=backend, executor=executor,
                                  scheduler=scheduler, local_workers=local_workers, gpus=gpus)
    log = log or log_stderr
    make_folder(out)
    before = read_manifest(out)
    write_manifest(out, config, force=force, log=log)
    threads = before.get("cpu_threads") if before is not None else None
    if device == "cpu" and threads is not None and threads != torch.get_num_threads():
        # a CPU's reductions split by thread count: the rows differ in the last bits
        log(f"warning: the shards in {out} were computed with {threads} CPU thread(s), this "
            f"process uses {torch.get_num_threads()}: rows computed now may differ from theirs "
            f"in the last bits (MOE_THEORY_THREADS sets the count)")
    remove_stale_temp_files(out)
    shards = plan(config)
    finished = verified_shards(out, shards, report=log, config_hash=config.hash)
    if len(finished) == len(shards):
        return merge(out, report=log)
    if device.startswith("cuda") and scheduler is None and backend != "torch":
        # compile the kernels of every fitted model in the background while G_bar is computed
        precompile(_kernel_models(config))
    if scheduler is None:
        prepare_references(config, out, device=device, backend=backend, log=log,
                           force=force)
        if on_references is not None:
            on_references()
    else:
        # the remote workers fit G_bar on their own device type: one of them prepares and
        # records the references, before any shard (skipped, each worker had fitted its own
        # G_bar unrecorded, and a resumption elsewhere could mix two)
        prepare = functools.partial(prepare_references_task, out=str(out.resolve()),
                                    device=device, backend=backend, force=force)
        list(map_shards(prepare, [config], executor=executor, scheduler=scheduler,
                        device=device, log=log))
    if device.startswith("cuda") and executor != "local":
        # the references' fits leave memory in this process's cache that the workers need
        release_cache(device)
    # after the references: a --force there deletes the shards measured against another G_bar
    finished = {shard: digest for shard, digest in finished.items()
                if shard_path(out, shard).exists()}
    _warn_other_code(out, finished, log)
    work = functools.partial(compute_shard, config=config, out=str(out.resolve()), device=device,
                             backend=backend)
    bar = _progress(len(shards), len(finished), config.name)
    started, computed, waiting_for = time.perf_counter(), 0, None
    runs: dict[str, int] = {}  # shard key -> times computed by this sweep
    try:
        while len(finished) < len(shards):
            todo = [s for s in shards if s not in finished]
            # shards that other sweeps hold are left to them; a claim they leave behind when
            # killed goes stale and is taken over
            free = [s for s in todo if claim_holder(out, s) is None]
            if not free:
                held = sorted({str(h) for s in todo if (h := claim_holder(out, s)) is not None})
                if held != waiting_for:
                    waiting_for = held
                    log(f"waiting for {len(todo)} shard(s) that other sweeps are computing "
                        f"({', '.join(held)})")
                time.sleep(CLAIM_POLL_S)
            else:
                index = len(finished)
                for meta in map_shards(work, free, executor=executor, scheduler=scheduler,
                                       local_workers=local_workers, gpus=gpu_ids, device=device,
                                       cost=functools.partial(shard_cost, config), log=log):
                    if meta["status"] == "lost":
                        whose = (f"taken over by {meta['worker']}, whose the shard is now"
                                 if meta["worker"] else "removed; the shard runs again")
                        log(f"{meta['shard']}: the claim of the process computing it was "
                            f"{whose} (it had looked stale: was the process stopped?); its "
                            f"rows are not stored")
                    if meta["status"] == "computed":
                        runs[meta["shard"]] = runs.get(meta["shard"], 0) + 1
                        computed, index = computed + 1, index + 1
                        _log_shard(meta, log, bar, index=index, total=len(shards),
                                   elapsed=time.perf_counter() - started, computed=computed)
            finished = verified_shards(out, shards, report=log, config_hash=config.hash)
            _refuse_endless_recompute(runs, {s.key for s in finished}, config.hash)
    except KeyboardInterrupt:
        bar.close()
        log(f"interrupted: finished shards are kept in {out / 'shards'}; rerun to finish")
        raise
    bar.close()
    return merge(out, report=log)
