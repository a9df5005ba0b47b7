"""provenance(): what every benchmark JSON and run.json records about the code and the device."""

from __future__ import annotations

import datetime
import shutil
import subprocess

import pytest

from moe_theory import provenance as prov_module
from moe_theory.provenance import provenance

KEYS = {"git_commit", "git_dirty", "device", "device_name", "torch", "cuda", "triton", "python",
        "date"}


def test_fields_on_cpu():
    got = provenance("cpu")
    assert set(got) == KEYS
    assert got["device"] == "cpu" and got["device_name"]
    assert datetime.datetime.fromisoformat(got["date"]).utcoffset() == datetime.timedelta(0)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_of_this_checkout():
    root = prov_module._SOURCE_ROOT
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    got = provenance("cpu")
    assert got["git_commit"] == head.stdout.strip() and len(got["git_commit"]) == 40
    assert isinstance(got["git_dirty"], bool)


def test_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(prov_module, "_SOURCE_ROOT", tmp_path)
    got = provenance("cpu")
    assert got["git_commit"] is None and got["git_dirty"] is None


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        provenance("tpu:x")
