"""From a config to paper figures: sweep, rates table with verdicts, and log-log figures; and the
studies that are not sweeps (:mod:`moe_theory.studies`), written by the same writer.

Every figure folder gets its summary table (``rates`` or another name) as text, CSV and JSON, its
figure as PNG and PDF, its tidy results as CSV, and ``run.json``: wall times and the provenance
of the run (git commit and whether the tree was dirty, device, library versions;
docs/design.md#provenance), written by :mod:`moe_theory.outputs`.

With a Dask cluster (``gpus`` or ``local_workers``), every figure of the call runs on one cluster,
started in the background while this process computes the largest figure's references, and the
figures overlap: their references, shards, optimiser checks and studies are all tasks of that
cluster, largest first, while this process writes and draws the finished ones
(docs/design.md#scheduling).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from moe_theory import baseline
from moe_theory.certificates import CHECK_REPS
from moe_theory.check import refit, run_check
from moe_theory.config import SweepConfig, load_config, named_configs
from moe_theory.console import log_stderr
from moe_theory.executors import (
    device_workers,
    map_shards,
    process_options,
    shard_cost,
    shared_cluster,
    shared_cluster_ready,
)
from moe_theory.outputs import (
    default_folder,
    write_report,
    write_run,
    write_table,
)
from moe_theory.population import cache_dir
from moe_theory.preflight import NOT_MEASURABLE, folder_outlook
from moe_theory.rates import format_rates_table
from moe_theory.store import plan, read_manifest, refuse_sweep_folder, write_manifest
from moe_theory.studies import StudyOutput, attention_regularity, attention_teacher
from moe_theory.sweep import (
    adopt_references,
    check_sweep_options,
    prepare_references_task,
    run_sweep,
)
from moe_theory.validation import check_device

#: Figures that are not sweeps of a config: name -> the study's ``run(fast=, device=)``.
EXPERIMENTS: dict[str, Callable[..., StudyOutput]] = {
    "attention-teacher": attention_teacher.run,
    "attention-regularity": attention_regularity.run,
}
#: The cluster priority of a study (one task whose length is not known beforehand): above every
#: figure's work, so that it starts first and does not run alone at the end.
STUDY_PRIORITY = sys.float_info.max
#: Held while a figure starts its baseline: baseline.start sets and restores environment
#: variables around the spawn, which two figures' threads doing it at once would leave changed.
_BASELINE_START = threading.Lock()


def _stage(step: int, stages: int, what: str, start: float) -> None:
    """A stage line of a long run on stderr; the sweep's shard lines carry the ETA."""
    log_stderr(f"[stage {step}/{stages}] {what} ({time.perf_counter() - start:.0f} s elapsed)")


def reproduce(name: str, *, fast: bool = False, out: str | Path | None = None,
              device: str = "cpu", backend: str = "auto", workers: int | None = None,
              certify: bool = False, gpus: str | Sequence[int] | None = None,
              local_workers: int | None = None, force: bool = False,
              references_from: str | Path | None = None) -> pd.DataFrame:
    """Run a named config into ``results/<name>[-fast]/`` (or ``out``) and write its report there.

    ``certify``: also run the optimiser check (:func:`moe_theory.check.run_check`) before the
    report, so that its verdicts can be firm.

    ``workers``: processes that compute shards side by side on ``device`` (default
    :data:`moe_theory.executors.GPU_PROCESSES` on a GPU, 1 on the CPU); with ``gpus``, per GPU.
    The table does not depend on it.

    ``gpus`` (``"all"``, ``"0,1"`` or ordinals; ``device="cuda"``) or ``local_workers``: the
    shards run on one Dask cluster for the whole call, ``workers`` processes pinned to each GPU
    or a ``LocalCluster`` of that many processes (:func:`reproduce_figures`).

    ``force``: discard a folder's shards of another config, or measured against another G_bar
    (docs/design.md#results-store), instead of refusing.

    ``references_from``: a folder whose recorded G_bar references of the same settings (fitted
    on this device type) the fits use instead of fitting them again
    (:func:`moe_theory.sweep.adopt_references`); one config only.
    """
    # before anything is written: adopting references writes into the folder (and force sets
    # its run aside); the cluster's options first, so that --gpus on a machine without GPUs is
    # named as the sweep names it
    _cluster_options(gpus, local_workers, device, backend)
    workers = device_workers(workers, device)
    check_device("device", device)
    if references_from is not None:
        if name == "all" or name in EXPERIMENTS:
            raise ValueError(f"references_from: give one config, not {name!r} (a study or "
                             "every figure has no single folder of references to adopt)")
        config, folder = _config_folder(name, None if out is None else Path(out), fast)
        adopt_references(config, folder, references_from, device=device, force=force)
    if name == "all":
        # one folder per config: a shared one would mix configs (refused by the manifest check)
        suffix = "-fast" if fast else ""
        figures = [(n, None if out is None else Path(out) / (n + suffix))
                   for n in named_configs() + list(EXPERIMENTS)]
    else:
        figures = [(name, None if out is None else Path(out))]
    return reproduce_figures(figures, fast=fast, device=device, backend=backend, workers=workers,
                             certify=certify, gpus=gpus, local_workers=local_workers, force=force)


def reproduce_figures(figures: Sequence[tuple[str | Path, Path | None]], *, fast: bool = False,
                      device: str = "cpu", backend: str = "auto", workers: int = 1,
                      certify: bool = False, gpus: str | Sequence[int] | None = None,
                      local_workers: int | None = None, force: bool = False) -> pd.DataFrame:
    """Run each figure (a config's name or path, or an experiment of :data:`EXPERIMENTS`) into
    its folder (None: ``results/<name>[-fast]/``); their summary tables, concatenated in order.

    Without a cluster the figures run one after the other, the shards in ``workers`` processes
    on ``device``. With ``gpus`` or ``local_workers`` they share one Dask cluster (started once,
    in the background) and overlap: each figure's references (G_bar, certificates), its shards,
    its optimiser check's refits and each study are tasks of the cluster, which holds the work
    of every figure at once and runs the largest first
    (:func:`moe_theory.executors.shard_cost`); this process prepares the largest figure's
    references while the cluster starts, and writes and draws each figure as it finishes, one at
    a time. The tables are those of a serial run.
    """
    gpu_ids = _cluster_options(gpus, local_workers, device, backend)
    common = {"fast": fast, "device": device, "backend": backend, "certify": certify,
              "force": force}
    if gpu_ids is None and local_workers is None:
        options = process_options(workers)
        return pd.concat([
            reproduce_experiment(str(fig), fast=fast, out=folder, device=device)
            if str(fig) in EXPERIMENTS else
            _sweep_figure(*_config_folder(fig, folder, fast), **common, workers=workers,
                          sweep_options=options)
            for fig, folder in figures], ignore_index=True)
    cluster = {"gpus": gpu_ids} if gpu_ids is not None else {"local_workers": local_workers}
    with shared_cluster(**cluster, processes_per_gpu=workers if gpu_ids is not None else 1):
        return _overlapped(figures, common, workers=workers,
                           sweep_options={"executor": "dask", **cluster})


def _cluster_options(gpus: str | Sequence[int] | None, local_workers: int | None, device: str,
                     backend: str) -> tuple[int, ...] | None:
    """The GPU ordinals of ``gpus``: the options checked as a sweep's, the cluster that
    ``gpus`` or ``local_workers`` ask for being Dask's."""
    executor = "local" if gpus is None and local_workers is None else "dask"
    return check_sweep_options(device=device, backend=backend, executor=executor,
                               local_workers=local_workers, gpus=gpus)


def _config_folder(fig: str | Path, folder: Path | None, fast: bool) -> tuple[SweepConfig, Path]:
    config = load_config(fig, fast=fast)
    return config, Path(folder) if folder is not None else default_folder(config.name, fast)


def _overlapped(figures: Sequence[tuple[str | Path, Path | None]], common: dict, *,
                workers: int, sweep_options: dict) -> pd.DataFrame:
    """:func:`reproduce_figures` on a shared cluster: a thread per figure, whose computations
    (references, shards, the check's refits, a study) are tasks of the cluster, except the
    largest figure's references while the cluster starts; this process writes and draws, one
    figure at a time (``driver``)."""
    driver = threading.Lock()
    tables: dict[int, pd.DataFrame] = {}
    errors: list[BaseException] = []
    device, backend, fast = common["device"], common["backend"], common["fast"]
    cluster = {k: v for k, v in sweep_options.items() if k != "executor"}

    def on_cluster(fn: Callable, item: Any, priority: float) -> Any:
        """``fn(item)`` as one task of the shared cluster, with this priority."""
        (result,) = map_shards(fn, [item], executor="dask", cost=lambda _: priority,
                               device=device, **cluster)
        return result

    def figure(i: int, config: SweepConfig, folder: Path, first: bool) -> None:
        try:
            start = time.perf_counter()
            _stage(1, 3 if common["certify"] else 2,
                   f"{config.name}: G_bar references (cached in {cache_dir()}) and their "
                   "certificates", start)
            prepare = functools.partial(prepare_references_task, out=str(folder), device=device,
                                        backend=backend, force=common["force"])
            if first and not shared_cluster_ready(**cluster):
                # the cluster is still starting (seconds: worker processes import PyTorch and
                # make CUDA contexts): this process prepares the largest figure meanwhile
                prepare(config)
            else:
                # the references gate all of the figure's shards: they go before any one of them
                on_cluster(prepare, config, figure_cost(config))
            tables[i] = _sweep_figure(config, folder, **common, workers=workers,
                                      sweep_options=sweep_options, driver=driver, start=start)
        except BaseException as err:  # raised by the caller once every figure has ended
            errors.append(err)

    def study(i: int, name: str, folder: Path | None) -> None:
        try:
            start = time.perf_counter()
            # one task of unknown length: first, so that it does not run alone at the end
            output = on_cluster(functools.partial(_run_study, fast=fast, device=device), name,
                                STUDY_PRIORITY)
            with driver:
                tables[i] = _write_study(name, output, folder, fast=fast, device=device,
                                         start=start)
        except BaseException as err:
            errors.append(err)

    threads = []
    sweeps = []
    for i, (fig, folder) in enumerate(figures):
        if str(fig) in EXPERIMENTS:
            refuse_sweep_folder(folder if folder is not None else default_folder(str(fig), fast))
            threads.append(threading.Thread(target=study, args=(i, str(fig), folder),
                                            daemon=True, name=f"study-{fig}"))
            continue
        config, folder = _config_folder(fig, folder, fast)
        existing = read_manifest(folder)
        if existing is None or existing.get("config_hash") != config.hash:
            # refuses another config's folder (unless empty) before anything is written there
            write_manifest(folder, config, force=common["force"])
        sweeps.append((i, config, folder))
    # the largest figure first: its references are the ones prepared here while the cluster
    # starts, and its shards reach the cluster first
    sweeps.sort(key=lambda job: -figure_cost(job[1]))
    for rank, (i, config, folder) in enumerate(sweeps):
        threads.insert(rank, threading.Thread(target=figure, args=(i, config, folder, rank == 0),
                                              daemon=True, name=f"figure-{config.name}"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return pd.concat([tables[i] for i in range(len(figures))], ignore_index=True)


def figure_cost(config: SweepConfig) -> float:
    """A sweep's work: the sum of its shards' costs (:func:`moe_theory.executors.shard_cost`)."""
    return sum(shard_cost(config, shard) for shard in plan(config))


#: A reason in the early outlook is cut here: the whole of it is in `moe-theory preflight`.
OUTLOOK_REASON_CHARS = 110


def _without_parentheses(text: str) -> str:
    """A reason without its parenthesised numbers and explanations (the whole table has them):
    "error at n=1000 (31) exceeds ... (1.1)" -> "error at n=1000 exceeds ..."."""
    while True:
        shorter = re.sub(r" \([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def _log_outlook(folder: Path, config: SweepConfig) -> None:
    """Before the fits, what the references already say of each plotted curve (the preflight's
    outlook, docs/theory.md#planning), so that a long run says early which curves it cannot
    measure and why; the verdicts at its end are the fits'. An outlook that cannot be read
    (a folder's certificates of an older version) is said, and the run goes on."""
    try:
        table = folder_outlook(folder, config)
    except (ValueError, KeyError) as err:
        log_stderr(f"preflight outlook not available ({err}); the run goes on")
        return
    log_stderr("preflight, from the references before any fit (the whole table: "
                "`moe-theory preflight`):")
    for row in table.itertuples():
        reason = _without_parentheses(row.reasons.split("; ")[0]) \
            if row.outlook == NOT_MEASURABLE else ""
        if len(reason) > OUTLOOK_REASON_CHARS:
            reason = reason[:OUTLOOK_REASON_CHARS] + "..."
        log_stderr(f"  {row.setting} / {row.fit_gate} / {row.loss_name}: {row.outlook}"
                    + (f" ({reason})" if reason else ""))


def _run_study(name: str, *, fast: bool, device: str) -> StudyOutput:
    """A study's computation (a cluster task); its output is written by the caller."""
    return EXPERIMENTS[name](fast=fast, device=device)


def _sweep_figure(config: SweepConfig, folder: Path, *, fast: bool, device: str, backend: str,
                  certify: bool, workers: int, sweep_options: dict, force: bool = False,
                  driver: AbstractContextManager | None = None, start: float | None = None
                  ) -> pd.DataFrame:
    """One config's sweep, optimiser check and report into ``folder``; ``driver`` is held while
    this process computes the check (unless its refits run on the cluster) and draws (one
    figure at a time)."""
    driver = driver if driver is not None else nullcontext()
    start = start if start is not None else time.perf_counter()
    # on a GPU, the CPU baseline runs beside the sweep (the ratio it is judged by,
    # docs/kernels.md#measuring-speed)
    with _BASELINE_START:
        pending = baseline.start(config) if device.startswith("cuda") else None
    stages = 3 if certify else 2
    _stage(1, stages, f"{config.name}: sweep: G_bar references (cached in {cache_dir()}) and "
                      "their certificates, then the fits", start)
    on_cluster = sweep_options if sweep_options.get("executor") == "dask" else {}
    side = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="check-refits")
    try:
        # on a cluster, the optimiser check's refits (which do not depend on the sweep's fits)
        # are submitted beside the shards, largest first among all figures' work; otherwise
        # they run after the sweep on its worker processes; either way each is stored in the
        # folder as it finishes (moe_theory.check.refit_store)
        early = side.submit(refit, config, min(CHECK_REPS, config.reps), device=device,
                            backend=backend, folder=folder,
                            **on_cluster) if certify and on_cluster else None
        df = run_sweep(config, folder, device=device, backend=backend, force=force,
                       on_references=functools.partial(_log_outlook, folder, config),
                       **sweep_options)
        sweep_s = time.perf_counter() - start
        refits = early.result() if early is not None else None
    finally:
        side.shutdown(wait=False)  # after an error, not waiting for the refits still running
    if certify:
        _stage(2, stages, f"{config.name}: certificates: the optimiser check", start)
        with driver if not on_cluster else nullcontext():
            run_check(folder, device=device, backend=backend, refits=refits, log=log_stderr,
                      **sweep_options)
    scipy_baseline = baseline.summarise(pending, df)  # waits for it: not while drawing
    with driver:
        _stage(stages, stages, f"{config.name}: rates, verdicts and figures", start)
        table = write_report(df, config, folder)
        run = write_run(folder, {
            "config": config.name, "fast": fast, "config_hash": config.hash,
            "wall_s_this_call": round(time.perf_counter() - start, 2),
            "fit_wall_s": round(float(df.drop_duplicates(
                ["setting", "fit_gate", "n", "rep"]).wall_s.sum()), 2),
            "sweep_wall_s": round(sweep_s, 2), "workers": workers, "rows": len(df),
            "executor": sweep_options.get("executor", "local"),
            **({"gpus": list(sweep_options["gpus"])} if "gpus" in sweep_options else {}),
            "scipy_baseline": scipy_baseline,
        }, device)
        print(format_rates_table(table))
        if run["scipy_baseline"] and "error" not in run["scipy_baseline"]:
            b = run["scipy_baseline"]
            print(f"\nscipy baseline (1 CPU thread, {b['setting']} {b['fit_gate']} n={b['n']}): "
                  f"{b['scipy_s_per_fit_estimate']:.1f} s per fit vs ours "
                  f"{b['ours_s_per_fit']:.3f} s ({b['speedup_per_fit']:.0f}x); whole grid "
                  f"~{b['scipy_full_grid_estimate_s']:.0f} s vs ours "
                  f"{b['ours_full_grid_fit_s']:.0f} s of fits")
        print(f"\nwrote {folder}/ ({config.name}.png/.pdf, rates.txt/.csv/.json, results.csv); "
              f"{run['wall_s_this_call']:.0f} s on {device}")
    return table


def reproduce_experiment(name: str, *, fast: bool = False, out: str | Path | None = None,
                         device: str = "cpu") -> pd.DataFrame:
    """Run a study of :data:`EXPERIMENTS` into ``results/<name>[-fast]/`` (or ``out``); its
    summary."""
    check_device("device", device)
    refuse_sweep_folder(Path(out) if out is not None else default_folder(name, fast))
    start = time.perf_counter()
    return _write_study(name, _run_study(name, fast=fast, device=device), out, fast=fast,
                        device=device, start=start)


def _write_study(name: str, study: StudyOutput, out: str | Path | None, *, fast: bool,
                 device: str, start: float) -> pd.DataFrame:
    """A study's tables, figure and ``run.json``; its summary."""
    folder = Path(out) if out is not None else default_folder(name, fast)
    write_table(folder, study.table, study.text, name=study.table_name, results=study.results)
    study.draw(folder / name)
    run = write_run(folder, {"experiment": name, "fast": fast,
                             "wall_s_this_call": round(time.perf_counter() - start, 2)}, device)
    print(study.text)
    print(f"wrote {folder}/ ({name}.png/.pdf, {study.table_name}.txt/.csv/.json, results.csv); "
          f"{run['wall_s_this_call']:.0f} s on {device}")
    return study.table
