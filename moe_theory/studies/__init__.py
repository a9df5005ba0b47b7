"""Studies: figures that are not sweeps of a config, each run by ``moe-theory reproduce NAME``.

A study module runs a model (:mod:`moe_theory.attention_teacher`, :mod:`moe_theory.regularity`)
over its grid and returns a :class:`StudyOutput`; :mod:`moe_theory.reproduce` writes it through
the same writer as a sweep's report (tables as text, CSV and JSON, the tidy results, the figure,
``run.json`` with provenance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class StudyOutput:
    """What a study hands to the report writer.

    Attributes
    ----------
    results : the tidy table of every computed value (written as ``results.csv``)
    table : its summary: a rates table, or another table of slopes
    table_name : file stem of the summary (``rates`` -> ``rates.txt``, ``.csv``, ``.json``)
    text : the summary as printed and written to ``<table_name>.txt``
    draw : draws the figure at a path stem (``.png`` and ``.pdf``), returns the paths
    """

    results: pd.DataFrame
    table: pd.DataFrame
    table_name: str
    text: str
    draw: Callable[[Path], list[Path]]
