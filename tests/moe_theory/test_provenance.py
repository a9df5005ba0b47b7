"""provenance(): what every benchmark JSON and run.json records about the code and the device."""

from __future__ import annotations

import datetime
import shutil
import subprocess

import pytest

from moe_theory import provenance as prov_module
from moe_theory.provenance import provenance

KEYS = {"git_commit", "git_dirty", "device", "device_name", "torch", "cuda", "triton", "python",
        "date", "source_sha256"}


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


def _tree(root, files):
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_source_hash_follows_the_files_not_git(tmp_path):
    """The code's hash changes with any Python file of the packages and with nothing else."""
    _tree(tmp_path, {"moe_theory/a.py": "x = 1\n", "moe_theory/sub/b.py": "y = 2\n",
                     "kernels/k.py": "z = 3\n", "README.md": "words\n"})
    first = prov_module.source_hash(tmp_path)
    assert len(first) == 64
    (tmp_path / "README.md").write_text("other words\n")
    (tmp_path / "moe_theory" / "__pycache__").mkdir()
    (tmp_path / "moe_theory" / "__pycache__" / "a.py").write_text("cached\n")
    prov_module.source_hash.cache_clear()
    assert prov_module.source_hash(tmp_path) == first
    (tmp_path / "kernels" / "k.py").write_text("z = 4\n")
    prov_module.source_hash.cache_clear()
    assert prov_module.source_hash(tmp_path) != first
    # moving a file's bytes to another path is another tree
    _tree(tmp_path / "moved", {"moe_theory/a.py": "x = 1\ny = 2\n", "kernels/k.py": "z = 3\n"})
    _tree(tmp_path / "kept", {"moe_theory/a.py": "x = 1\n", "moe_theory/b.py": "y = 2\n",
                              "kernels/k.py": "z = 3\n"})
    assert prov_module.source_hash(tmp_path / "moved") != prov_module.source_hash(tmp_path / "kept")
    assert prov_module.source_hash(tmp_path / "README.md") is None
    prov_module.source_hash.cache_clear()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_hash_at_a_commit_equals_the_checkout_of_it(tmp_path):
    """source_hash_at(commit) reads git's objects; it equals the hash of that commit's files on
    disk, and tells a copy whose files moved on from its git metadata."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    _tree(tmp_path, {"moe_theory/a.py": "x = 1\n", "kernels/k.py": "z = 3\n",
                     "notes.txt": "not code\n"})
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    at_commit = prov_module.source_hash_at("HEAD", tmp_path)
    assert at_commit == prov_module.source_hash(tmp_path)
    (tmp_path / "moe_theory" / "a.py").write_text("x = 2\n")  # the files move on, git does not
    prov_module.source_hash.cache_clear()
    assert prov_module.source_hash(tmp_path) != at_commit
    assert prov_module.source_hash_at("0" * 40, tmp_path) is None
    prov_module.source_hash.cache_clear()
