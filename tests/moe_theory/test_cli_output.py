"""What a person reads from the CLI: table headers and columns, --json, and help for every option."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from moe_theory.cli import build_parser, main
from moe_theory.config import named_configs
from moe_theory.reproduce import EXPERIMENTS
from moe_theory.settings import list_settings
from moe_theory.theory import theory_table


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command, header, count", [
    ("settings", ["setting", "truth", "score", "expert", "regime", "d", "k*", "k", "description"],
     lambda: len(list_settings())),
    ("theory", ["fit", "score", "regime", "expert", "loss", "exponent", "rate", "source"],
     lambda: len(theory_table())),
])
def test_table_has_a_header_and_aligned_columns(capsys, command, header, count):
    # counted when the test runs: other tests register settings of their own before it
    rows = count()
    assert main([command]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == header
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == rows + 2
    # every column starts where its header does: the cell before it ends with two spaces
    starts = [i for i in range(1, len(lines[1])) if lines[1][i] == "-" and lines[1][i - 1] == " "]
    for line in lines[2:]:
        for start in starts:
            assert line[start - 2:start] == "  " and line[start] != " ", (line, start)


@pytest.mark.parametrize("command, count", [("settings", lambda: len(list_settings())),
                                            ("theory", lambda: len(theory_table()))])
def test_json_parses(capsys, command, count):
    rows = count()  # when the test runs, as above
    assert main([command, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == rows and all(isinstance(r, dict) for r in records)


def test_every_option_has_help_and_lists_its_choices():
    for name, parser in subparsers().items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = action.option_strings or [action.dest]
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {label}: no help"
            for choice in action.choices or ():
                assert choice in text, f"{name} {label}: choice {choice!r} not in the help"


def test_reproduce_help_lists_every_figure():
    text = subparsers()["reproduce"].format_help().replace("\n", " ")
    text = " ".join(text.split())
    for name in named_configs() + list(EXPERIMENTS):
        assert name in text


def test_top_level_help_has_no_rst_markup():
    assert "``" not in build_parser().format_help()


def test_reproduce_gpus_on_the_cpu_is_refused_naming_the_field(tmp_path, capsys):
    """``--gpus`` pins workers to GPUs: on a machine without them (CI), or with ``--device cpu``,
    it exits 2 naming the option before writing anything."""
    out = tmp_path / "fig"
    assert main(["reproduce", "nguyen2024", "--fast", "--gpus", "0", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("reps", ["0", "-3", "two"])
def test_check_reps_names_the_option(tmp_path, capsys, reps):
    """``check --reps`` is refused by the parser under its own name (the library's message had
    said ``reps:``, a name the command line does not have), before the folder is read."""
    with pytest.raises(SystemExit) as stop:
        main(["check", str(tmp_path / "no-such"), "--reps", reps])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --reps: must be a positive integer" in err


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ("nguyen2024-measurable", True, True)),
    (["--no-certify"], ("nguyen2024-measurable", True, False)),
    (["nguyen2024", "--fast"], ("nguyen2024", True, False)),
    (["nguyen2024-measurable", "--certify"], ("nguyen2024-measurable", False, True)),
])
def test_reproduce_without_a_name_runs_the_certified_cpu_preset(monkeypatch, argv, expected):
    """The README's first command: the measurable comparison's CPU preset with the optimiser
    check, so that its table can show certified curves; a named figure certifies on request."""
    import moe_theory.reproduce

    calls = []
    monkeypatch.setattr(moe_theory.reproduce, "reproduce",
                        lambda name, **kw: calls.append((name, kw["fast"], kw["certify"])))
    assert main(["reproduce", *argv]) == 0
    assert calls == [expected]


@pytest.mark.parametrize(("argv", "device"), [
    (["--gpus", "0"], "cuda"), (["--gpus"], "cuda"), ([], "cpu"),
    (["--gpus", "0", "--device", "cpu"], "cpu"), (["--device", "cuda"], "cuda")])
def test_reproduce_gpus_means_cuda_as_for_sweep(monkeypatch, argv, device):
    """``--gpus`` pins workers to GPUs, so the device is CUDA unless said otherwise, for
    ``reproduce`` as for ``sweep`` (reproduce had passed 'cpu' on and refused its own default)."""
    import moe_theory.reproduce

    calls = []
    monkeypatch.setattr(moe_theory.reproduce, "reproduce",
                        lambda name, **kw: calls.append(kw["device"]))
    assert main(["reproduce", "nguyen2024", "--fast", *argv]) == 0
    assert calls == [device]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without GPUs")
def test_reproduce_gpus_without_gpus_names_the_option(tmp_path, capsys):
    """On a machine without GPUs (CI) ``reproduce --gpus 0`` exits 2 naming ``--gpus``, as the
    sweep does, before writing anything."""
    out = tmp_path / "fig"
    assert main(["reproduce", "nguyen2024", "--fast", "--gpus", "0", "--out", str(out)]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert not out.exists()


def test_every_command_is_in_the_documented_command_table():
    """docs/theory.md#public-interface lists every `moe-theory` command with its options: a
    command added to the parser but not to the table is a command a reader cannot find."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "theory.md").read_text()
    table = docs[docs.index("The command line, `moe-theory`"):]
    table = table[:table.index("\n\n", table.index("| command |"))]
    # a row's first cell names its commands: "`check DIR ...`", or "`settings`, `theory`"
    first_cells = re.findall(r"^\| (.+?) \| ", table, flags=re.M)
    documented = {name for cell in first_cells for name in re.findall(r"(?:^|, )`([a-z]+)", cell)}
    assert documented == set(subparsers()), (sorted(set(subparsers()) - documented),
                                            sorted(documented - set(subparsers())))


@pytest.mark.parametrize("r", ["nan", "inf", "0.5"])
def test_loss_refuses_an_exponent_that_is_not_a_finite_number_ge_1(tmp_path, capsys, r):
    """``--r nan`` printed NaN with exit 0: NaN passes the loss's own check ``r < 1``."""
    from moe_theory.settings import get_setting

    path = tmp_path / "g.json"
    path.write_text(get_setting("small-sparse-relu").truth().to_json())
    assert main(["loss", str(path), str(path), "--kind", "D2", "--r", "2"]) == 0
    capsys.readouterr()
    assert main(["loss", str(path), str(path), "--kind", "D2", "--r", r]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("moe-theory: error: --r: must be a finite number >= 1")
    assert len(captured.err.splitlines()) == 1


def test_loss_names_a_bad_file_and_prints_strict_json(tmp_path, capsys):
    """A folder for FITTED was exit 3 ("Is a directory", no field); an integer past float range
    (OverflowError) and lists nested past the interpreter's depth (RecursionError) were
    tracebacks; a loss that does not apply to the pair printed the non-standard NaN token."""
    from moe_theory.settings import get_setting

    good = tmp_path / "g.json"
    good.write_text(get_setting("small-sparse-linear").truth().to_json())
    huge = json.loads(good.read_text())
    huge["atoms"][0]["beta0"] = 10**400
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    # an atom's number nested 5000 lists deep (too deep for json.dumps to write it)
    deep_atom = json.loads(good.read_text())
    deep_atom["atoms"][0]["beta0"] = "DEEP"
    (tmp_path / "deep_atom.json").write_text(
        json.dumps(deep_atom).replace('"DEEP"', "[" * 5000 + "0.5" + "]" * 5000))
    (tmp_path / "folder").mkdir()
    for name, words in [("folder", "FITTED: "), ("huge.json", "FITTED ("),
                        ("deep.json", "FITTED ("), ("deep_atom.json", "FITTED (")]:
        assert main(["loss", str(tmp_path / name), str(good), "--kind", "D1"]) == 2, name
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1, name
        assert captured.err.startswith(f"moe-theory: error: {words}"), captured.err
    # err_A_over has no quadratic part to measure on linear scores: NaN, printed as null
    assert main(["loss", str(good), str(good), "--kind", "err_A_over"]) == 0
    assert json.loads(capsys.readouterr().out) is None


def test_loss_reads_a_pipe_and_prints_an_overflowing_loss_as_null(tmp_path, capsys):
    """A pipe (``<(...)``, ``/dev/stdin``) is no regular file but a file to read; a loss past
    float range printed the Infinity token (then, strict, an error naming no field)."""
    import threading

    from moe_theory.settings import get_setting

    truth = get_setting("small-sparse-linear").truth()
    good = tmp_path / "g.json"
    good.write_text(truth.to_json())
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(truth.to_json()))
    writer.start()
    assert main(["loss", str(fifo), str(good), "--kind", "D1"]) == 0
    writer.join()
    assert json.loads(capsys.readouterr().out) == 0.0
    far = json.loads(good.read_text())
    far["atoms"][0]["b"] = 1e308
    (tmp_path / "far.json").write_text(json.dumps(far))
    assert main(["loss", str(tmp_path / "far.json"), str(good), "--kind", "D2", "--r", "4"]) == 0
    assert json.loads(capsys.readouterr().out) is None


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 14.2 PiB for an array with shape (10**15, 8)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 160000000000 bytes.")])
def test_running_out_of_memory_is_an_environment_error_not_a_traceback(monkeypatch, capsys,
                                                                       error):
    """numpy's MemoryError and the CPU allocator's RuntimeError (whose words are not "out of
    memory") had ended a command in a traceback; they are exit 3 with one line. Any other
    RuntimeError is still a traceback: a bug, not the machine."""
    from moe_theory import sweep
    from moe_theory.errors import EXIT_ENVIRONMENT

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(sweep, "run_sweep", fails)
    assert main(["sweep", "nguyen2024", "--fast"]) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert err.startswith("moe-theory: error: out of memory: ") and len(err.splitlines()) == 1

    def bug(*args, **kwargs):
        raise RuntimeError("einsum(): subscript q has size 3")

    monkeypatch.setattr(sweep, "run_sweep", bug)
    with pytest.raises(RuntimeError, match="einsum"):
        main(["sweep", "nguyen2024", "--fast"])
