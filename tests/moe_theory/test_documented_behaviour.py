"""What the README and docs/ say about behaviour, held to the code: every command-line option is
in the command reference (docs/theory.md#public-interface), every config key in the key table
(docs/design.md#configs) with the code's default and bounds, and every column a results folder
writes in docs/theory.md#results-table."""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

import pandas as pd
import pytest

from moe_theory import config as config_module
from moe_theory import models
from moe_theory.cli import DEVICES, build_parser
from moe_theory.config import SweepConfig, parse_config

pytestmark = pytest.mark.usefixtures("module_cache")

ROOT = Path(__file__).resolve().parents[2]
THEORY = (ROOT / "docs" / "theory.md").read_text()
DESIGN = (ROOT / "docs" / "design.md").read_text()
#: Options every fitting command takes, which the sentence under the command table states once.
SHARED_OPTIONS = {"--device", "--backend"}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def command_rows() -> dict[str, str]:
    """The rows of the command table of docs/theory.md#public-interface, by each command its
    first cell names."""
    table = THEORY[THEORY.index("The command line, `moe-theory`"):]
    table = table[:table.index("\n\n", table.index("| command |"))]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        first = re.match(r"^\| (.+?) \| ", line)
        if first is None:
            continue
        for name in re.findall(r"(?:^|, )`([a-z]+)", first.group(1)):
            rows[name] = line
    return rows


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (escaped pipes kept in their cell)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or set(line.replace("|", "").strip()) <= {"-"}:
            continue
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows[1:]  # the header


def test_every_option_of_every_command_is_in_its_row_of_the_command_table():
    """A flag added to a command but not to its row is one a reader of the reference cannot find
    (`sweep --references-from`, `preflight --json`, `loss --r` were missing)."""
    rows = command_rows()
    missing = []
    for name, parser in subparsers().items():
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and option not in SHARED_OPTIONS:
                    if option not in rows[name]:
                        missing.append(f"{name} {option}")
    assert not missing, missing


def test_the_shared_options_are_stated_with_their_choices():
    after = THEORY[THEORY.index("The command line, `moe-theory`"):]
    sentence = after[after.index("Commands that fit take"):][:200]
    for parser in subparsers().values():
        for action in parser._actions:
            if set(action.option_strings) & SHARED_OPTIONS:
                stated = re.search(rf"`{action.option_strings[0]} ([a-z|\\]+)`", sentence)
                assert stated, action.option_strings
                assert stated.group(1).replace("\\", "").split("|") == list(action.choices)
    assert list(DEVICES) == ["cpu", "cuda"]


def key_table() -> dict[str, list[str]]:
    text = section(DESIGN, "## Configs")
    rows = table_rows(text[text.index("| key |"):])
    return {re.fullmatch(r"`([a-z_0-9]+)`", row[0]).group(1): row for row in rows}


def test_every_config_key_is_in_the_key_table():
    """Every key the parser accepts is documented and every documented key is accepted."""
    assert set(key_table()) == config_module._KEYS


def test_the_key_table_states_the_code_defaults():
    from moe_theory.estimators import SGDProtocol
    from moe_theory.estimators.bounds import DEFAULT_BOUND_SCALE
    from moe_theory.initialization import DEFAULT_EXTRA_STARTS, START_JITTER_FACTOR
    from moe_theory.outputs import DEFAULT_PLOT_LOSSES
    from moe_theory.population import DESIGN_SIZE

    table = key_table()
    default = {key: row[1] for key, row in table.items()}
    fields = SweepConfig.__dataclass_fields__
    for key in ("rep_block", "seed", "max_iter"):
        assert int(default[key]) == fields[key].default, key
    assert float(default["jitter"]) == fields["jitter"].default
    for key in ("algorithm", "start_splits", "gram_dtype"):
        assert default[key] == f"`{fields[key].default}`", key
    assert float(default["bound_scale"]) == DEFAULT_BOUND_SCALE == fields["bound_scale"].default
    assert "(groups not named: 10)" in table["bound_scale"][2]
    assert int(default["starts"]) == DEFAULT_EXTRA_STARTS == fields["starts"].default
    assert default["start_jitter"] == f"{START_JITTER_FACTOR:g} x `jitter`"
    assert default["description"] == '`""`' and fields["description"].default == ""
    assert default["plot"] == f"`{list(DEFAULT_PLOT_LOSSES)}` for every gate".replace("'", '"')
    assert DESIGN_SIZE == {"cuda": 10**6, "cpu": 2 * 10**5}
    assert "10^6 on a GPU, 2·10^5 on a CPU" in default["g_bar_design_size"]
    sgd = SGDProtocol()
    assert default["sgd"] == (f"`{{epochs = {sgd.epochs}, lr = {sgd.lr}, batch_size = "
                              f"{sgd.batch_size}, seed = {sgd.seed}}}`")
    for key in ("name", "settings", "n", "reps"):
        assert default[key] == "required", key
    # and the parser agrees: a config of the required keys alone takes those defaults
    parsed = parse_config({"name": "t", "settings": ["small-sparse-relu"], "n": [100], "reps": 40})
    assert (parsed.rep_block, parsed.seed, parsed.algorithm, parsed.max_iter, parsed.jitter,
            parsed.bound_scale, parsed.starts, parsed.start_splits, parsed.gram_dtype) == (
        20, 0, "lm", 200, 0.01, DEFAULT_BOUND_SCALE, DEFAULT_EXTRA_STARTS, "reference", "float64")


def test_the_key_table_states_the_code_bounds_and_choices():
    from kernels.moe.gram import GRAM_DTYPES
    from moe_theory.data import MAX_N
    from moe_theory.estimators import ALGORITHMS
    from moe_theory.estimators.bounds import PARAMETER_GROUPS
    from moe_theory.voronoi import ALL_KINDS

    accepted = {key: row[2] for key, row in key_table().items()}

    def listed(key: str) -> list[str]:
        return re.findall(r"`([^`]+)`", accepted[key])

    assert listed("algorithm") == list(ALGORITHMS)
    assert listed("gram_dtype") == list(GRAM_DTYPES)
    assert listed("start_splits") == list(config_module.START_SPLITS)
    assert listed("fit_gates")[:len(models.GATES)] == list(models.GATES)
    assert all(f"`{group}`" in accepted["bound_scale"] for group in PARAMETER_GROUPS)
    losses = set(listed("losses")) - {"err_{eta,beta1,A}_{exact,over}"}
    losses |= {f"err_{g}_{c}" for g in ("eta", "beta1", "A") for c in ("exact", "over")}
    assert losses == set(ALL_KINDS)
    assert MAX_N == 2**40 and "`1..2**40`" in accepted["n"]
    assert "`1..2**40`" in accepted["g_bar_design_size"]
    assert f"`0..{config_module.MAX_STARTS}`" in accepted["starts"]
    assert f"`1..{config_module.MAX_K_FIT}`" in accepted["k_fit"]
    assert f"at most {config_module.MAX_NAME_BYTES} bytes" in accepted["name"]
    shards = section(DESIGN, "## Configs")
    assert f"`MAX_SHARDS = {config_module.MAX_SHARDS:,}`".replace(",", " ") in shards


def test_the_key_table_bounds_are_where_the_parser_refuses():
    base = {"name": "t", "settings": ["small-sparse-relu"], "n": [100, 200], "reps": 4}
    accepted = [("starts", config_module.MAX_STARTS), ("starts", 0),
                ("k_fit", config_module.MAX_K_FIT), ("rep_block", 100), ("jitter", 0.0),
                ("n", [2**40]), ("g_bar_design_size", 2**40), ("bound_scale", float("inf"))]
    refused = [("starts", config_module.MAX_STARTS + 1), ("starts", -1),
               ("k_fit", config_module.MAX_K_FIT + 1), ("rep_block", 0), ("jitter", -0.1),
               ("n", [2**40 + 1]), ("n", [0]), ("g_bar_design_size", 0), ("seed", -1),
               ("max_iter", 0), ("reps", 0), ("start_jitter", 0), ("panels", ["x"]),
               ("bound_scale", 0), ("name", "x" * (config_module.MAX_NAME_BYTES + 1))]
    for key, value in accepted:
        extra = {"start_jitter": 0.1} if key == "jitter" else {}
        parse_config({**base, key: value, **extra})
    for key, value in refused:
        with pytest.raises(ValueError, match=f"config key '{key}"):
            parse_config({**base, key: value})
    # rep_block above reps is taken as reps; jitter = 0 with starts asks for start_jitter
    assert parse_config({**base, "rep_block": 100}).rep_block == 4
    with pytest.raises(ValueError, match="config key 'start_jitter'"):
        parse_config({**base, "jitter": 0.0})


def documented_columns(text: str) -> set[str]:
    return {name for row in table_rows(text) for name in re.findall(r"`([a-z_0-9]+)`", row[0])}


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory) -> Path:
    from moe_theory.outputs import write_report
    from moe_theory.sweep import run_sweep

    config = parse_config({"name": "audit-docs", "settings": ["small-sparse-relu"],
                           "fit_gates": ["sigmoid"], "n": [100, 200], "reps": 2,
                           "max_iter": 20, "starts": 1})
    out = tmp_path_factory.mktemp("audit") / "sweep"
    df = run_sweep(config, out, log=lambda msg: None)
    write_report(df, config, out)
    return out


def test_a_sweep_folder_holds_the_documented_files_and_columns(sweep_folder):
    """docs/theory.md#results-table: the tidy table's columns (`fit_measure` in the parquet
    table, not the CSV one), `fits.csv.gz`'s five columns, and the rates table's columns;
    README's command table: figure PNG+PDF, `results.csv`, `rates.txt/.csv/.json`."""
    results = section(THEORY, "## Results table")
    tidy = documented_columns(results[:results.index("Per-fit columns")])
    parquet = pd.read_parquet(sweep_folder / "results.parquet")
    assert set(parquet.columns) == tidy
    csv = pd.read_csv(sweep_folder / "results.csv")
    assert set(csv.columns) == tidy - {"fit_measure"}
    with gzip.open(sweep_folder / "fits.csv.gz", "rt") as f:
        assert f.readline().strip() == "setting,fit_gate,n,rep,fit_measure"
    rates_doc = results[results.index("`moe-theory rates DIR` turns"):]
    documented = documented_columns(rates_doc)
    rates = pd.read_csv(sweep_folder / "rates.csv")
    # `setting` ... `k_fit`: the tidy table's first row, "what was fitted to what"
    span = set(re.findall(r"`([a-z_0-9]+)`", table_rows(results)[0][0]))
    assert {"setting", "k_fit"} <= span
    assert set(rates.columns) == (documented | span)
    for name in ("audit-docs.png", "audit-docs.pdf", "rates.txt", "rates.json", "manifest.json"):
        assert (sweep_folder / name).is_file(), name


def test_the_documented_results_store_files_are_written(sweep_folder):
    """docs/design.md#results-store: the shard files and their checksums."""
    shards = sorted((sweep_folder / "shards" / "small-sparse-relu").iterdir())
    parquet = [p for p in shards if p.suffix == ".parquet"]
    assert parquet and all(p.with_name(p.name + ".sha256").is_file() for p in parquet)


def test_a_fast_sweep_goes_to_the_folder_its_preflight_prepared(tmp_path, monkeypatch):
    """docs/theory.md#planning: `preflight NAME --fast` writes G_bar and its certificates "into
    the folder the sweep will use", `results/NAME-fast` as `reproduce --fast`; `sweep NAME
    --fast` wrote `results/NAME` instead, a folder the full sweep then refused (another config)
    and one the preflight had not prepared."""
    import moe_theory.outputs
    import moe_theory.preflight
    import moe_theory.sweep
    from moe_theory.cli import main

    (tmp_path / "tiny.toml").write_text(
        'name = "tiny"\nsettings = ["small-sparse-relu"]\nn = [100, 200]\nreps = 2\n'
        "[fast]\nreps = 1\n")
    monkeypatch.chdir(tmp_path)
    folders = {}

    def sweep(config, out, **kw):
        folders["sweep", config.reps] = Path(out)
        return pd.DataFrame()

    def preflight(config, out, **kw):
        folders["preflight", config.reps] = Path(out)
        return pd.DataFrame()

    monkeypatch.setattr(moe_theory.sweep, "run_sweep", sweep)
    monkeypatch.setattr(moe_theory.outputs, "write_report", lambda *a, **kw: None)
    monkeypatch.setattr(moe_theory.preflight, "preflight", preflight)
    monkeypatch.setattr(moe_theory.preflight, "format_preflight", lambda *a, **kw: "")
    for fast in ([], ["--fast"]):
        assert main(["sweep", "tiny.toml", *fast]) == 0
        assert main(["preflight", "tiny.toml", *fast]) == 0
    assert folders == {("sweep", 2): Path("results/tiny"), ("preflight", 2): Path("results/tiny"),
                       ("sweep", 1): Path("results/tiny-fast"),
                       ("preflight", 1): Path("results/tiny-fast")}
