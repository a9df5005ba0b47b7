"""Where benchmark results go and how they are written: one ``write_json`` for every benchmark,
recording the run's provenance (docs/design.md#provenance)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from moe_theory.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def gpu_label(prov: dict) -> str:
    """Short lower-case name of a run's device for file names: ``cpu``, or the GPU's model
    (``"NVIDIA H100 80GB HBM3"`` -> ``h100``; a name without a letters-and-digits word,
    ``"NVIDIA GeForce RTX 4090"``, -> ``nvidia-geforce-rtx-4090``)."""
    if not prov["device"].startswith("cuda"):
        return "cpu"
    name = prov["device_name"]
    for word in re.split(r"[\s\-_]+", name):
        if re.fullmatch(r"[A-Za-z]+\d+[A-Za-z]*", word):
            return word.lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def result_path(benchmark: str, prov: dict, *, label: str | None = None,
                gpu: str | None = None) -> Path:
    """``results/<benchmark>/<date>_<gpu>_<commit7>[_<label>].json`` for a run's provenance.

    ``label`` tells apart runs of one benchmark with the same date, device and commit (a quick
    run and a full one, say); ``gpu`` overrides the label read off the device name (``h200x2``
    for a run over two GPUs).
    """
    date = prov["date"][:10]
    commit = (prov["git_commit"] or "nogit")[:7]
    stem = f"{date}_{gpu or gpu_label(prov)}_{commit}"
    return RESULTS / benchmark / (f"{stem}_{label}.json" if label else f"{stem}.json")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json PATH`` and ``--save`` (the committed-results name, :func:`result_path`)."""
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--save", action="store_true",
                        help="write the results to benchmarks/results/<benchmark>/"
                        "<date>_<gpu>_<commit7>[_<label>].json")


def output_path(args: argparse.Namespace, benchmark: str, prov: dict, *,
                label: str | None = None, gpu: str | None = None) -> Path | None:
    """Where ``--json`` / ``--save`` ask the results to go (None: nowhere)."""
    if args.json:
        return Path(args.json)
    if args.save:
        return result_path(benchmark, prov, label=label, gpu=gpu)
    return None


def write_json(path: str | Path | None, results: dict, device: str | None = None) -> None:
    """Write a benchmark's results to ``path`` (nothing when None), with their provenance.

    Scripts call it after every section, so a run cut short keeps the numbers it has. Results
    without a ``provenance`` entry get one for ``device`` (see
    :func:`moe_theory.provenance.provenance`). Values JSON lacks (dtypes, devices) are written
    as strings.
    """
    if not path:
        return
    if "provenance" not in results:
        results = {"provenance": provenance(device), **results}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # written whole, then renamed: an interrupted write never leaves a truncated JSON
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(path)
