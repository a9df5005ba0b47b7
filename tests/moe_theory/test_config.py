"""Sweep configs: the estimator's keys (box, starts) and their validation."""

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from moe_theory.cli import main
from moe_theory.config import load_config, named_configs, parse_config

BASE = {"name": "t", "settings": ["small-sparse-relu"], "n": [100], "reps": 2}


def test_defaults_are_a_box_of_ten_and_five_starts():
    config = parse_config(BASE)
    assert config.bound_scale == 10.0 and config.starts == 4 and config.start_jitter is None


def test_no_box_and_one_start_hash_as_before_those_keys():
    """Such a config's fits are those of the estimator before the box and the starts, bit for
    bit, so its results keep their identity."""
    plain = parse_config({**BASE, "bound_scale": math.inf, "starts": 0})
    again = parse_config({**BASE, "bound_scale": math.inf, "starts": 0, "start_jitter": 0.5})
    assert plain.hash == again.hash != parse_config(BASE).hash
    # the CPU preset as it was before the keys existed (and before its k* = 3 settings), and its
    # hash then (run.json)
    preset = replace(load_config("nguyen2024", fast=True), n=(1000, 1821, 3314, 6034, 10986, 20000),
                     bound_scale=math.inf, starts=0,
                     settings=("small-dense-relu", "small-dense-linear", "small-sparse-relu",
                               "small-sparse-linear"))
    assert preset.hash == "c8e77fa00b82"
    assert parse_config({**BASE, "starts": 1}).hash != parse_config({**BASE, "starts": 2}).hash
    assert parse_config({**BASE, "bound_scale": 5}).hash != parse_config(BASE).hash


def test_a_config_round_trips_through_its_manifest_dict():
    config = parse_config({**BASE, "bound_scale": math.inf, "starts": 2, "start_jitter": 0.3})
    back = parse_config(config.to_dict())
    assert back == config and back.hash == config.hash


def test_shipped_configs_parse_and_state_their_protocol():
    for name in named_configs():
        for fast in (False, True):
            config = load_config(name, fast=fast)
            if config.algorithm == "sgd-paper":
                assert math.isinf(config.bound_scale) and config.starts == 0
            else:
                # the CPU presets run at most the full configs' starts (fewer where they need it
                # to stay within minutes), one extra at least: the optimiser certificate asks
                # whether a second start reaches a fit's best SSR
                assert config.bound_scale == 10.0
                assert (1 <= config.starts <= 4) if fast else config.starts == 4


def test_a_box_per_parameter_group():
    """A table sets some groups' multiples, the others keep the default; it survives the
    manifest; a table with one multiple for every group is that multiple (same fits, same
    hash); inf everywhere is no box."""
    config = parse_config({**BASE, "bound_scale": {"beta0": 10, "a": 3, "b": 3}})
    assert config.bound_scale == {"beta0": 10.0, "beta1": 10.0, "A": 10.0, "a": 3.0, "b": 3.0}
    assert config.has_box and config.hash not in {parse_config({**BASE, "bound_scale": s}).hash
                                                  for s in (3, 10)}
    back = parse_config(config.to_dict())
    assert back == config and back.hash == config.hash
    same = {g: 3 for g in ("beta0", "beta1", "A", "a", "b")}
    assert parse_config({**BASE, "bound_scale": same}).hash == \
        parse_config({**BASE, "bound_scale": 3}).hash
    none = parse_config({**BASE, "bound_scale": dict.fromkeys(same, math.inf), "starts": 0})
    assert not none.has_box and none.hash == parse_config(
        {**BASE, "bound_scale": math.inf, "starts": 0}).hash


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"bound_scale": {"beta2": 3}}, "bound_scale.beta2"),
     ({"bound_scale": {"a": 0}}, "bound_scale.a"), ({"bound_scale": {"b": "big"}}, "bound_scale.b"),
     ({"bound_scale": {}}, "bound_scale"),
     ({"bound_scale": {"b": 3}, "algorithm": "lbfgs"}, "bound_scale")],
)
def test_a_bad_group_box_names_the_group(extra, field):
    with pytest.raises(ValueError, match=f"config key '{field}'"):
        parse_config({**BASE, **extra})


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"bound_scale": 0}, "bound_scale"), ({"bound_scale": -1.0}, "bound_scale"),
     ({"bound_scale": math.nan}, "bound_scale"), ({"bound_scale": "big"}, "bound_scale"),
     ({"algorithm": "lbfgs"}, "bound_scale"), ({"starts": -1}, "starts"),
     ({"starts": 1.5}, "starts"), ({"start_jitter": 0.0}, "start_jitter"),
     ({"start_jitter": math.inf}, "start_jitter"), ({"jitter": math.nan}, "jitter"),
     ({"jitter": 0.0}, "start_jitter")],
)
def test_bad_estimator_keys_name_the_field(extra, field):
    with pytest.raises(ValueError, match=f"config key '{field}'"):
        parse_config({**BASE, **extra})


def test_the_cli_exits_2_on_a_bad_box(tmp_path: Path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nsettings = ["small-sparse-relu"]\nn = [100]\nreps = 2\n'
                    "bound_scale = -3.0\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "bound_scale" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gram_dtype_key():
    """The float64 Gram (the default) hashes as before the key existed: its fits are unchanged,
    bit for bit; a lower-precision Gram takes another path to the same fixed points, so its
    results are told apart. A bad value is named."""
    assert parse_config(BASE).gram_dtype == "float64"
    assert parse_config({**BASE, "gram_dtype": "float64"}).hash == parse_config(BASE).hash
    mixed = parse_config({**BASE, "gram_dtype": "tf32"})
    assert mixed.gram_dtype == "tf32" and mixed.hash != parse_config(BASE).hash
    assert parse_config(mixed.to_dict()) == mixed
    with pytest.raises(ValueError, match="gram_dtype"):
        parse_config({**BASE, "gram_dtype": "bf16"})


def test_g_bar_design_size_key():
    """Unset, G_bar takes the device's design and the hash is as before the key existed; set, the
    references differ (another design), so the results are told apart. A bad value is named."""
    assert parse_config(BASE).g_bar_design_size is None
    sized = parse_config({**BASE, "g_bar_design_size": 4_000_000})
    assert sized.g_bar_design_size == 4_000_000 and sized.hash != parse_config(BASE).hash
    assert parse_config(sized.to_dict()) == sized
    for bad in (0, -5, 2.5e6, "big"):
        with pytest.raises(ValueError, match="g_bar_design_size"):
            parse_config({**BASE, "g_bar_design_size": bad})


def test_gate_reps_key():
    """Fewer replications of one fitted gate, in whole shards. Unset, or equal to ``reps``, the
    hash is as before the key existed (the same fits); set, the results are told apart. A bad
    value names the field."""
    two = {**BASE, "settings": ["small-dense-relu"], "reps": 8, "rep_block": 2}
    plain = parse_config(two)
    assert plain.gate_reps == {} and plain.reps_of("softmax") == 8
    assert parse_config({**two, "gate_reps": {"softmax": 8}}).hash == plain.hash
    fewer = parse_config({**two, "gate_reps": {"softmax": 4}})
    assert fewer.hash != plain.hash and parse_config(fewer.to_dict()) == fewer
    assert fewer.reps_of("softmax") == 4 and fewer.reps_of("sigmoid") == 8
    setting = fewer.setting("small-dense-relu")
    assert fewer.gates_in(setting, 2) == ("sigmoid", "softmax")
    assert fewer.gates_in(setting, 4) == ("sigmoid",)
    for bad, field in ((3, "gate_reps.softmax"), (10, "gate_reps.softmax"),
                       (0, "gate_reps.softmax"), (1.5, "gate_reps.softmax"),
                       ({"sigmoid": 2}, None)):
        gate_reps = bad if isinstance(bad, dict) else {"softmax": bad}
        with pytest.raises(ValueError, match=f"config key '{field or 'gate_reps.sigmoid'}'"):
            parse_config({**two, "fit_gates": ["softmax"], "gate_reps": gate_reps})
    with pytest.raises(ValueError, match="config key 'gate_reps'"):
        parse_config({**two, "gate_reps": 4})


def _rows(losses: dict[str, dict[str, list[float]]]):
    """A results table of one setting: per (gate, loss), the values at n = 100 and 200."""
    import pandas as pd

    return pd.DataFrame([
        {"setting": "small-dense-relu", "fit_gate": gate, "loss_name": loss, "n": n,
         "loss_value": value}
        for gate, by_loss in losses.items() for loss, values in by_loss.items()
        for n, value in zip((100, 100, 200, 200), values, strict=True)])


def test_plot_draws_one_curve_per_list_each_from_its_candidates():
    from moe_theory.outputs import figure_panels, plot_losses

    raw = {"name": "p", "n": [100, 200], "reps": 2, "settings": ["small-dense-relu"],
           "plot": {"softmax": [["err_eta_over", "D2"], ["D1"], "D1"], "sigmoid": ["D3", "D1"]}}
    config = parse_config(raw)
    assert plot_losses(config, "softmax") == (("err_eta_over", "D2"), ("D1",), ("D1",))
    assert plot_losses(config, "sigmoid") == (("D3", "D1"),)
    # err_eta_over NaN in every fit: the first curve falls back to D2; D1 is drawn once
    df = _rows({"softmax": {"err_eta_over": [math.nan] * 4, "D2": [1, 2, 0.5, 0.6],
                            "D1": [1, 1, 0.7, 0.7]},
                "sigmoid": {"D3": [3, 3, 2, 2]}})
    (panel,) = figure_panels(df, config)
    assert panel[2] == [("sigmoid", "D3"), ("softmax", "D2"), ("softmax", "D1")]


def test_a_loss_with_every_fit_on_the_box_falls_back_as_a_nan_one_does():
    """Values but no point: every err_eta_over fit has a parameter at its bound, so the figure
    would leave the curve out (plotting.drawable_curve) while the table marked it plotted and
    paired it in the gap between the gates: the candidate falls through to D2 instead."""
    from moe_theory.outputs import figure_panels

    raw = {"name": "p", "n": [100, 200], "reps": 2, "settings": ["small-dense-relu"],
           "plot": {"softmax": [["err_eta_over", "D2"]], "sigmoid": ["D3"]}}
    config = parse_config(raw)
    df = _rows({"softmax": {"err_eta_over": [1, 2, 0.5, 0.6], "D2": [1, 2, 0.5, 0.6]},
                "sigmoid": {"D3": [3, 3, 2, 2]}})
    df["bound_active"] = df["loss_name"].eq("err_eta_over")
    (panel,) = figure_panels(df, config)
    assert panel[2] == [("sigmoid", "D3"), ("softmax", "D2")]
    df["bound_active"] = False  # off the box, the first candidate is drawn
    (panel,) = figure_panels(df, config)
    assert panel[2] == [("sigmoid", "D3"), ("softmax", "err_eta_over")]


@pytest.mark.parametrize("plot", [{"softmax": [["D1"], []]}, {"softmax": [["D1", "bogus"]]},
                                  {"softmax": [["D1"], 3]}, {"softmax": 3}, {"tanh": "D1"}])
def test_bad_plot_entries_name_the_field(plot):
    gate = next(iter(plot))
    with pytest.raises(ValueError, match=f"config key 'plot.{gate}'"):
        parse_config({"name": "p", "n": [100, 200], "reps": 2, "settings": ["small-dense-relu"],
                      "plot": plot})


def test_a_plot_entry_for_a_gate_no_setting_fits_is_refused_and_a_written_one_still_reads(
        tmp_path: Path):
    """Its curve was missing from every panel without a word. A finished sweep's manifest is
    read as it was run, so results written before the rule still open."""
    import json

    from moe_theory.store import MANIFEST_FILE, read_manifest_config

    raw = {**BASE, "fit_gates": ["sigmoid"], "plot": {"sigmoid": "D1", "softmax": "D1"}}
    with pytest.raises(ValueError, match=r"config key 'plot.softmax': no setting fits the "
                                         r"softmax gate \(fitted: sigmoid\)"):
        parse_config(raw)
    with pytest.raises(ValueError, match="config key 'fast.plot.softmax'"):
        parse_config({**BASE, "fit_gates": ["sigmoid"],
                      "fast": {"plot": {"softmax": "D1"}}})
    written = parse_config({**raw, "fit_gates": ["sigmoid", "softmax"]}).to_dict()
    assert written["plot"] == raw["plot"]
    written["fit_gates"] = ["sigmoid"]  # as an older version wrote it
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"config": written}))
    assert read_manifest_config(tmp_path).plot == raw["plot"]


@pytest.mark.parametrize("name", ["../run1/audit", "a/b", "a\\b", ".", "..", "", " t", "t ", 3])
def test_a_name_that_is_not_a_plain_file_name_is_refused(name):
    """The name names the figure inside --out: ``../run1/audit`` overwrote another run's."""
    with pytest.raises(ValueError, match="config key 'name': must be a plain file name"):
        parse_config({**BASE, "name": name})


def test_a_path_in_the_name_writes_nothing(tmp_path: Path, capsys):
    path = tmp_path / "clobber.toml"
    path.write_text('name = "../run1/audit"\nsettings = ["small-sparse-relu"]\nn = [100]\n'
                    "reps = 2\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "run_x")]) == 2
    err = capsys.readouterr().err
    assert "config key 'name'" in err and "'../run1/audit'" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clobber.toml"]


@pytest.mark.parametrize(("sgd", "field"), [
    ({"lr": math.inf}, "sgd.lr"), ({"lr": math.nan}, "sgd.lr"), ({"lr": 0.0}, "sgd.lr"),
    ({"lr": True}, "sgd.lr"), ({"lr": "fast"}, "sgd.lr"), ({"epochs": 0}, "sgd.epochs"),
    ({"epochs": 2.0}, "sgd.epochs"), ({"batch_size": -1}, "sgd.batch_size"),
    ({"seed": -1}, "sgd.seed")])
def test_every_sgd_entry_is_checked_and_named(sgd, field):
    """An infinite rate was accepted (NaN fits that only their stop reason reports), while an
    infinite jitter was refused: every entry of the table is checked, as its key."""
    with pytest.raises(ValueError, match=f"config key '{field}'"):
        parse_config({**BASE, "algorithm": "sgd-paper", "bound_scale": math.inf, "sgd": sgd})


def test_a_valid_sgd_table_is_kept_as_written():
    """The table is hashed as written, so checking it must not rewrite it (1 stays 1)."""
    sgd = {"epochs": 3, "lr": 1, "batch_size": 16, "seed": 5}
    config = parse_config({**BASE, "sgd": sgd})
    assert config.sgd == sgd and config.sgd_protocol().lr == 1.0


@pytest.mark.parametrize(("n", "message"), [
    ({"min": 100.0, "max": 1000, "num": 3}, "config key 'n.min': must be an integer, got 100.0"),
    ({"min": 100, "max": 1000}, "config key 'n.num': missing"),
    ({"min": 100, "max": 10, "num": 3}, "config key 'n.max': must be >= n.min = 100, got 10"),
    ({"min": 100, "max": 1000, "num": 0}, "config key 'n.num': must be >= 1, got 0"),
    # geomspace with num = 1 gives n.min alone, and rounding merges sizes under 1 apart: both
    # had run on fewer sizes than the config asks for, without a word
    ({"min": 100, "max": 1000, "num": 1}, "config key 'n.num': must be at least 2 to span "
     "n.min = 100 to n.max = 1000, got 1 (one sample size: n = [N])"),
    ({"min": 100, "max": 102, "num": 5}, "config key 'n.num': 5 log-spaced sizes from 100 to "
     "102 round to 3 distinct integers; ask for at most 3")])
def test_a_key_of_the_n_table_is_named_with_its_table(n, message):
    """``min`` alone does not say which table; a missing key is "missing", not "got None"."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_config({**BASE, "n": n})


def test_a_config_that_is_not_utf8_is_named(tmp_path: Path, capsys):
    """The decoder's own message ("'utf-8' codec can't decode byte 0xff") does not say which
    file; the config's path does."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "t"\ndescription = "caf\xe9"\n'.encode("latin-1") + b"\xff\n")
    with pytest.raises(ValueError, match=f"config: {re.escape(str(path))} is not UTF-8"):
        load_config(path)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("panels", [["a", "b"], [1, 2], "x"])
def test_panels_are_refused_since_no_figure_reads_them(panels):
    """A key the figures ignore would let a config look as if it chose its panels; manifests
    written with it empty still read."""
    with pytest.raises(ValueError, match="config key 'panels': is not read by any figure"):
        parse_config({**BASE, "panels": panels})
    assert parse_config({**BASE, "panels": []}).panels == ()


def test_a_grid_of_too_many_shards_is_named_before_anything_is_planned():
    """reps = 10^9 parsed, and the sweep ran out of memory listing its shards."""
    with pytest.raises(ValueError, match=r"config key 'reps': 1000000000 replications in blocks "
                                         r"of rep_block = 20 .* more than 100000"):
        parse_config({**BASE, "reps": 10**9})
    # the bound is on shards: the same replications in large blocks plan few
    config = parse_config({**BASE, "reps": 10**6, "rep_block": 10**5})
    assert config.reps == 10**6


def test_presenting_a_config_named_with_a_dot_reads_no_folder_of_that_name(tmp_path, monkeypatch):
    """A study's config named ``...-box1.5`` is no named config; a results folder of that name
    where the command runs (``results/NAME`` or a sweep's own folder) is not read as one (it
    raised IsADirectoryError through load_config's name-or-path reading)."""
    from dataclasses import replace

    from moe_theory.config import named_config, presented

    monkeypatch.chdir(tmp_path)
    study = replace(load_config("nguyen2024", fast=True), name="nguyen2024-box1.5")
    (tmp_path / study.name).mkdir()
    assert named_config({study.hash}, [study.name]) is None
    assert presented(study) is study
    # a named config is still found, by its file
    fast = load_config("nguyen2024", fast=True)
    found, source = named_config({fast.hash}, ["nguyen2024"])
    assert found.hash == fast.hash and source == "simulations/configs/nguyen2024.toml --fast"


@pytest.mark.parametrize(("n", "key"), [([200, 2**40 + 1], "n"), ([10**20], "n"),
                                        ({"min": 100, "max": 2**41, "num": 3}, "n.max")])
def test_a_sample_size_no_machine_holds_is_refused_by_its_key(n, key):
    """n = 10^20 reached numpy, whose "Maximum allowed dimension exceeded" names no key (and
    10^10 a traceback of its allocator, now the sweep's ResourceError naming the shard's n)."""
    with pytest.raises(ValueError, match=rf"^config key '{re.escape(key)}': .*at most {2**40}"):
        parse_config({**BASE, "n": n})
    assert parse_config({**BASE, "n": [2**40]}).n == (2**40,)


@pytest.mark.parametrize(("key", "value", "limit"), [
    ("k_fit", 10**6, 256), ("starts", 10**9, 4096), ("g_bar_design_size", 10**15, 2**40)])
def test_a_size_no_fit_can_hold_is_refused_by_its_key(key, value, limit):
    """k_fit = 10^6 passed and asked the CPU for 160 GB in the reference certificate (a
    traceback, after the manifest was written), g_bar_design_size = 10^15 for 14 PiB, and
    starts = 10^9 was blamed on the sample size; the limit itself passes."""
    with pytest.raises(ValueError, match=rf"^config key '{key}': must be at most {limit}"):
        parse_config({**BASE, key: value})
    assert getattr(parse_config({**BASE, key: limit}), key) == limit


def test_a_name_too_long_to_name_files_is_refused_before_any_fit():
    """The name names files (NAME.png, NAME-fast): 300 characters failed after every fit, when
    the figure was to be written, naming no key."""
    with pytest.raises(ValueError, match=r"^config key 'name': must be at most 200 bytes"):
        parse_config({**BASE, "name": "a" * 201})
    with pytest.raises(ValueError, match=r"^config key 'name'"):
        parse_config({**BASE, "name": "é" * 101})  # 202 bytes
    assert parse_config({**BASE, "name": "a" * 200}).name == "a" * 200


def test_a_folder_for_a_config_or_a_file_for_a_folder_is_bad_input(tmp_path: Path, capsys):
    """Exit 2 naming the argument, as every other bad argument: they were exit 3 ("Is a
    directory", "Not a directory"), the code of a file system that refused."""
    (tmp_path / "cfgdir.toml").mkdir()
    (tmp_path / "afile.txt").write_text("")
    assert main(["sweep", str(tmp_path / "cfgdir.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-theory: error: config: ") and "is a folder, not a config file" in err
    # a folder without a suffix, as a results folder is (it was "no file"); a bare name of a
    # config is still the config's where a folder of that name is at hand
    (tmp_path / "results").mkdir()
    assert main(["sweep", str(tmp_path / "results"), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder, not a config file" in capsys.readouterr().err
    (tmp_path / "results").rmdir()
    for command in ("remeasure", "rates", "check"):
        assert main([command, str(tmp_path / "afile.txt")]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("moe-theory: error: DIR: ") and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "cfgdir.toml"]
    # a file where a folder to read from is asked for (exit 3, "Not a directory", until
    # 2026-12-07)
    assert main(["compare", str(tmp_path / "afile.txt"), str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("moe-theory: error: A: ")
    assert main(["sweep", "nguyen2024", "--fast", "--out", str(tmp_path / "o"),
                 "--references-from", str(tmp_path / "afile.txt")]) == 2
    assert capsys.readouterr().err.startswith("moe-theory: error: references_from: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "cfgdir.toml"]


def test_losses_that_no_fit_of_a_setting_has_are_refused_before_any_folder(tmp_path, capsys):
    """A sigmoid fit of a dense truth is measured against G_bar (D3 and parameter errors), so
    losses = ["D1"] gave it no rows: the sweep wrote its folder and then failed ("No objects to
    concatenate"), and the corrected config was refused there without --force."""
    raw = {**BASE, "settings": ["small-dense-relu"], "fit_gates": ["sigmoid"], "losses": ["D1"]}
    with pytest.raises(ValueError, match=r"^config key 'losses': none of \['D1'\] measures a "
                       r"fit of setting 'small-dense-relu' in every shard \(sigmoid against its "
                       r"G_bar: D3, "):
        parse_config(raw)
    assert parse_config({**raw, "losses": ["D3"]}).losses == ("D3",)
    # with both gates the softmax fit has D1 in every shard: a config (and the manifests of
    # folders it made) that measures one gate only is still read; not where gate_reps leaves
    # the later shards to the sigmoid fit alone
    both = {**raw, "fit_gates": ["sigmoid", "softmax"], "reps": 4, "rep_block": 2}
    assert parse_config(both).losses == ("D1",)
    with pytest.raises(ValueError, match=r"^config key 'losses': none of \['D1'\] measures"):
        parse_config({**both, "gate_reps": {"softmax": 2}})
    with pytest.raises(ValueError, match=r"^config key 'n.num': must be at most"):
        parse_config({**BASE, "n": {"min": 200, "max": 400, "num": 10**12}})


@pytest.mark.parametrize(("fast", "message"), [
    (1, "config key 'fast': must be a non-empty table of overrides, got 1"),
    ({}, "config key 'fast': must be a non-empty table of overrides, got {}"),
    ({"nope": 1}, "config key 'fast.nope': unknown key"),
    ({"reps": -1}, "config key 'fast.reps': must be >= 1, got -1"),
    ({"n": [100, -3]}, "config key 'fast.n': sample sizes must be positive integers, got -3")])
def test_a_broken_fast_table_is_refused_whether_or_not_fast_is_asked(fast, message):
    """A broken [fast] table was found only by the first run with --fast, and its errors named
    the key without its table (reps, not fast.reps)."""
    for with_fast in (False, True):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            parse_config({**BASE, "fast": fast}, fast=with_fast)
    assert parse_config({**BASE, "fast": {"reps": 1}}, fast=True).reps == 1
    assert parse_config({**BASE, "fast": {"reps": 1}}).reps == BASE["reps"]


@pytest.mark.parametrize("description", [1, [], {"a": 1}])
def test_a_description_that_is_not_text_is_refused(description):
    with pytest.raises(ValueError, match="^config key 'description': must be a string"):
        parse_config({**BASE, "description": description})


def test_a_loss_listed_twice_is_refused_as_a_setting_or_gate_listed_twice_is():
    """losses = ["D1", "D1"] passed, measured D1 once and hashed as another config."""
    with pytest.raises(ValueError, match=r"^config key 'losses': 'D1' is listed twice"):
        parse_config({**BASE, "losses": ["D1", "D2", "D1"]})
    assert parse_config({**BASE, "losses": ["D1", "D2"]}).losses == ("D1", "D2")


@pytest.mark.parametrize(("flag", "options", "allowed"), [
    ("--scheduler", {"scheduler": "tcp://host:8786"}, "dask"),
    ("--gpus", {"gpus": (0,)}, "dask"), ("--local-workers", {"local_workers": 2},
                                          "dask or processes")])
def test_an_executor_flag_without_its_executor_names_the_executors_that_take_it(flag, options,
                                                                                 allowed):
    """--scheduler and --gpus with the local executor were told "only with --executor dask or
    processes", and processes then refused them too."""
    from moe_theory.executors import check_executor

    with pytest.raises(ValueError, match=rf"^{flag}: only with --executor {allowed}$"):
        check_executor("local", **options)
