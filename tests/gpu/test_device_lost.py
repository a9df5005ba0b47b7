"""On a real GPU, a process whose CUDA context a fault ends (a device-side assert: CUDA fails every
later call of that process) loses only its shard's run: the shard is computed again in another
process, and the table is bit for bit an undisturbed run's (``moe_theory.executors.map_shards``).

On a CPU nothing here runs (the ``gpu`` marker skips it): tests/moe_theory/test_executors.py
raises the error by hand; only a device shows that a real fault reads as a lost context and that
the other processes, and a new one, go on with the same GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.gpu

CONFIG = """name = "device-lost"
settings = ["small-sparse-relu"]
fit_gates = ["sigmoid", "softmax"]
n = [300, 600, 1200]
reps = 4
rep_block = 2
"""

def _sweep(config: Path, out: Path, script: Path | None, env: dict) -> subprocess.CompletedProcess:
    repo = str(Path(__file__).resolve().parents[2])
    # tests/scripts/lose_gpu_cli.py: the sweep with a real fault (a device-side assert) in one process
    head = [str(script)] if script is not None else ["-m", "moe_theory.cli"]
    return subprocess.run(
        [sys.executable, *head, "sweep", str(config), "--out", str(out), "--device", "cuda",
         "--executor", "processes", "--local-workers", "3"],
        capture_output=True, text=True, timeout=500,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
            [repo, os.environ.get("PYTHONPATH", "")])})


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device-lost")
    config = folder / "config.toml"
    config.write_text(CONFIG)
    proc = _sweep(config, folder / "undisturbed", None, {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, pd.read_parquet(folder / "undisturbed" / "results.parquet")


@pytest.mark.parametrize("who", ["worker", "here"])
def test_a_real_fault_costs_a_run_of_its_shard_not_the_sweep(undisturbed, who, tmp_path):
    config, want = undisturbed
    script = Path(__file__).resolve().parents[1] / "scripts" / "lose_gpu_cli.py"
    marker = tmp_path / "lost"
    proc = _sweep(config, tmp_path / "out", script,
                  {"LOSE_WHO": who, "LOSE_HOW": "assert", "LOSE_MARKER": str(marker)})
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists(), "no process of that kind computed a shard"
    assert f"process {marker.read_text()} lost its GPU context" in proc.stderr
    assert "device-side assert" in proc.stderr
    got = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(got.drop(columns="wall_s"), want.drop(columns="wall_s"),
                                  check_exact=True)
