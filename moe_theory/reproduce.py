"""From a config to paper figures: sweep, rates table with verdicts, and log-log figures."""

from __future__ import annotations

import json
import platform
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from moe_theory import baseline
from moe_theory.config import SweepConfig, load_config, named_configs
from moe_theory.executors import GPU_PROCESSES
from moe_theory.plotting import plot_panels
from moe_theory.rates import format_rates_table, rates_table
from moe_theory.sweep import atomic_write, run_sweep

#: What a fitted gate is drawn with when the config's [plot] table does not say: the first loss
#: of this list that the results hold for that curve.
DEFAULT_PLOT_LOSSES = ("D3", "D1")
DEFAULT_OUT = Path("paper_figures")
#: Figures that are not sweeps of a config: name -> "module:function". The function takes the
#: output folder, ``fast`` and ``device``, writes its PNG, PDF and CSV files there and returns its
#: summary table.
EXPERIMENTS = {
    "attention-teacher": "moe_theory.teacher_student:reproduce",
    "attention-regularity": "moe_theory.regularity:reproduce",
}


def plot_losses(config: SweepConfig, gate: str) -> tuple[str, ...]:
    chosen = config.plot.get(gate)
    if chosen is None:
        return DEFAULT_PLOT_LOSSES
    return (chosen,) if isinstance(chosen, str) else tuple(chosen)


def figure_panels(df: pd.DataFrame, config: SweepConfig) -> list[tuple[str, str, list]]:
    panels = []
    for setting in config.settings:
        sub = df[df.setting == setting]
        curves = []
        for gate in sorted(sub.fit_gate.unique()):
            rows = sub[(sub.fit_gate == gate) & (sub.loss_value > 0) & np.isfinite(sub.loss_value)]
            # a loss that is NaN or 0 in every fit (no over-specified cell, say) cannot be drawn
            # on log axes: fall through to the next candidate
            have = {name for name, g in rows.groupby("loss_name") if g.n.nunique() >= 2}
            loss = next((loss for loss in plot_losses(config, gate) if loss in have), None)
            if loss is not None:
                curves.append((gate, loss))
        if curves:
            panels.append((setting, setting, curves))
    return panels


def write_report(df: pd.DataFrame, config: SweepConfig, out: Path) -> pd.DataFrame:
    """Rates table (text, CSV, JSON) and the figure of a finished sweep in ``out``."""
    table = rates_table(df)
    text = format_rates_table(table)
    atomic_write(out / "rates.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(out / "rates.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out / "rates.json",
                  lambda tmp: Path(tmp).write_text(table.to_json(orient="records", indent=1)))
    panels = figure_panels(df, config)
    if panels:
        plot_panels(df, panels, out / config.name, title=config.name)
    return table


def reproduce(name: str, *, fast: bool = False, out: str | Path | None = None,
              device: str = "cpu", backend: str = "auto", workers: int | None = None
              ) -> pd.DataFrame:
    """Run a named config into ``paper_figures/<name>[-fast]/`` and write its report there.

    ``workers``: processes that compute shards side by side on ``device`` (default
    :data:`moe_theory.executors.GPU_PROCESSES` on a GPU, 1 on the CPU); the table does not depend
    on it.
    """
    if workers is None:
        workers = GPU_PROCESSES if device.startswith("cuda") else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers: must be a positive integer, got {workers!r}")
    if name == "all":
        # one folder per config: a shared one would mix configs (refused by the manifest check)
        suffix = "-fast" if fast else ""
        return pd.concat([reproduce(n, fast=fast, out=None if out is None else Path(out) / (n + suffix),
                                    device=device, backend=backend, workers=workers)
                          for n in named_configs() + list(EXPERIMENTS)], ignore_index=True)
    if name in EXPERIMENTS:
        return reproduce_experiment(name, fast=fast, out=out, device=device)
    config = load_config(name, fast=fast)
    folder = Path(out) if out is not None else DEFAULT_OUT / (config.name + ("-fast" if fast else ""))
    start = time.perf_counter()
    # on a GPU, the CPU baseline runs beside the sweep (the ratio it is judged by,
    # docs/kernels.md#measuring-speed)
    pending = baseline.start(config, fast) if device.startswith("cuda") else None
    df = run_sweep(config, folder, device=device, backend=backend,
                   **({"executor": "processes", "local_workers": workers} if workers > 1 else {}))
    sweep_s = time.perf_counter() - start
    table = write_report(df, config, folder)
    run = {
        "config": config.name, "fast": fast, "config_hash": config.hash, "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else
        platform.processor() or platform.machine(),
        "wall_s_this_call": round(time.perf_counter() - start, 2),
        "fit_wall_s": round(float(df.drop_duplicates(["setting", "fit_gate", "n", "rep"]).wall_s.sum()), 2),
        "sweep_wall_s": round(sweep_s, 2), "workers": workers, "torch": torch.__version__,
        "rows": len(df),
        "scipy_baseline": baseline.summarise(pending, df),
    }
    atomic_write(folder / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(run, indent=2)))
    print(format_rates_table(table))
    if run["scipy_baseline"] and "error" not in run["scipy_baseline"]:
        b = run["scipy_baseline"]
        print(f"\nscipy baseline (1 CPU thread, {b['setting']} {b['fit_gate']} n={b['n']}): "
              f"{b['scipy_s_per_fit_estimate']:.1f} s per fit vs ours {b['ours_s_per_fit']:.3f} s "
              f"({b['speedup_per_fit']:.0f}x); whole grid ~{b['scipy_full_grid_estimate_s']:.0f} s "
              f"vs ours {b['ours_full_grid_fit_s']:.0f} s of fits")
    print(f"\nwrote {folder}/ ({config.name}.png/.pdf, rates.txt/.csv/.json, results.csv); "
          f"{run['wall_s_this_call']:.0f} s on {device}")
    return table


def reproduce_experiment(name: str, *, fast: bool = False, out: str | Path | None = None,
                         device: str = "cpu") -> pd.DataFrame:
    """Run a non-sweep figure of :data:`EXPERIMENTS` into ``paper_figures/<name>[-fast]/``."""
    folder = Path(out) if out is not None else DEFAULT_OUT / (name + ("-fast" if fast else ""))
    module, function = EXPERIMENTS[name].split(":")
    start = time.perf_counter()
    table = getattr(import_module(module), function)(folder, fast=fast, device=device)
    run = {
        "experiment": name, "fast": fast, "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else
        platform.processor() or platform.machine(),
        "wall_s_this_call": round(time.perf_counter() - start, 2), "torch": torch.__version__,
    }
    atomic_write(folder / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(run, indent=2)))
    print(f"wrote {folder}/ ({name}.png/.pdf and CSV tables); {run['wall_s_this_call']:.0f} s on "
          f"{device}")
    return table
