"""The names of a results folder's files, in one place (docs/design.md, "Results store").

A sweep's folder holds its shards, its merged table and the tables, records and figure drawn
from them; the store reads and writes them, the certificates, the check, the report and the
preflight add theirs, and ``--force`` over another run sets every one of them aside
(:data:`moe_theory.store.RUN_OUTPUTS`). Each module imports the names from here, below all of
them, so that no two spell one file.
"""

from __future__ import annotations

#: one Parquet file per finished shard, under ``shards/<setting>/``
SHARDS_DIR = "shards"
#: a shard file found unreadable is moved here (the sweep runs it again)
DAMAGED_DIR = "damaged"
#: the shards merged into one table
RESULTS_PARQUET = "results.parquet"
#: the merged table's CSV copy, and its gzip form: a committed figure folder whose table is large
#: keeps the latter (paper_figures/README.md), and whatever rewrites the table keeps its form
RESULTS_CSV = "results.csv"
RESULTS_CSV_GZ = "results.csv.gz"
#: every form the merged table takes (a finished folder may keep any of them alone)
MERGED_TABLES = (RESULTS_PARQUET, RESULTS_CSV, RESULTS_CSV_GZ)
#: each fit's estimate, one row per fit, beside the results table
FITS_FILE = "fits.csv.gz"
#: the sweep's config, its hash and the references its fits were measured against
MANIFEST_FILE = "manifest.json"
#: held (an exclusive ``flock``) by whoever updates the manifest, and removed by its last holder
MANIFEST_LOCK = ".manifest.json.lock"
#: the run's record and its provenance
RUN_FILE = "run.json"
#: summary tables, each written as ``<name>.txt``, ``.csv`` and ``.json``
TABLE_SUFFIXES = (".txt", ".csv", ".json")
RATES_TABLE = "rates"
PREFLIGHT_TABLE = "preflight"
#: the reference certificates, one JSON file per (setting, fitted gate)
REFERENCE_DIR = "certificates"
#: the optimiser check's verdicts, its refits' table, and the refits as they finish (so that an
#: interrupted check resumes)
CHECK_FILE = "check.json"
CHECK_TABLE = "check.parquet"
REFIT_DIR = "check-refits"
#: ``moe-theory report``'s pages
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def table_files(name: str) -> tuple[str, ...]:
    """The files a summary table ``name`` is written as."""
    return tuple(name + suffix for suffix in TABLE_SUFFIXES)
