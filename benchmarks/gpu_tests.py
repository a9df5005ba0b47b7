"""Run test files on a GPU machine in parallel processes, for when one process is too slow.

``PYTHONPATH=. python benchmarks/gpu_tests.py [--procs 8] [--timeout 300] [--log DIR] [PATHS...]``
(default path ``tests/kernels``). On a GPU every oddly sized test shape compiles its own Triton
kernels, so ``tests/kernels`` in one process outlasts a 500 s session; compilation is CPU work, so
splitting the tests round-robin over processes divides the time. Prints each part's summary line
and every failure; exits 1 if any part failed or timed out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=["tests/kernels"])
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=300, help="seconds for all parts together")
    ap.add_argument("--log", default=None, help="folder for each part's full output")
    args = ap.parse_args()
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args.paths],
                            capture_output=True, text=True, check=False).stdout
    ids = [line for line in listed.splitlines() if "::" in line]
    parts = [ids[i :: args.procs] for i in range(args.procs) if ids[i :: args.procs]]
    print(f"{len(ids)} tests in {len(parts)} parts", flush=True)
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--tb=short", "-rf", *part], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for part in parts]
    failed, deadline = False, time.monotonic() + args.timeout
    for i, proc in enumerate(procs):
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\nTIMEOUT after {args.timeout:.0f} s"
        if args.log:
            Path(args.log).mkdir(parents=True, exist_ok=True)
            Path(args.log, f"part{i}.txt").write_text(out)
        lines = out.splitlines()
        summary = [ln for ln in lines if ln.startswith(("FAILED", "ERROR", "TIMEOUT"))
                   or " passed" in ln or " failed" in ln]
        print(f"== part {i} (exit {proc.returncode})", *summary, sep="\n", flush=True)
        failed |= proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
