"""Run test files on a GPU machine in parallel processes, for when one process is too slow.

``PYTHONPATH=. python benchmarks/gpu_tests.py [--procs 8] [--timeout 300] [--log DIR] [PATHS...]``
(default path ``tests/kernels``). On a GPU every oddly sized test shape compiles its own Triton
kernels, so ``tests/kernels`` in one process outlasts a 500 s session; compilation is CPU work, so
splitting the tests round-robin over processes divides the time. Prints each part's summary line
and failures as the part ends; exits 1 if any part failed or timed out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=["tests/kernels"])
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds for everything, collection included")
    ap.add_argument("--log", default=None, help="folder for each part's full output (default: a "
                    "new temporary folder)")
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout  # collection counts too
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args.paths],
                            capture_output=True, text=True, check=False).stdout
    ids = [line for line in listed.splitlines() if "::" in line]
    parts = [ids[i :: args.procs] for i in range(args.procs) if ids[i :: args.procs]]
    print(f"{len(ids)} tests in {len(parts)} parts", flush=True)
    logs = Path(args.log or tempfile.mkdtemp(prefix="gpu_tests_"))
    logs.mkdir(parents=True, exist_ok=True)
    # output to files, not pipes: a part that fills a pipe buffer would block; a part's summary
    # is printed as soon as it ends, so a run cut short still reports the parts that finished
    procs = {}
    for i, part in enumerate(parts):
        with open(logs / f"part{i}.txt", "w") as out:
            procs[i] = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p",
                                         "no:cacheprovider", "--tb=short", "-rf", *part],
                                        stdout=out, stderr=subprocess.STDOUT)
    failed = False
    while procs:
        for i, proc in list(procs.items()):
            late = time.monotonic() > deadline
            if proc.poll() is None and not late:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                with open(logs / f"part{i}.txt", "a") as out:
                    out.write(f"\nTIMEOUT after {args.timeout:.0f} s\n")
            lines = (logs / f"part{i}.txt").read_text().splitlines()
            summary = [ln for ln in lines if ln.startswith(("FAILED", "ERROR", "TIMEOUT"))
                       or " passed" in ln or " failed" in ln]
            print(f"== part {i} (exit {proc.returncode})", *summary, sep="\n", flush=True)
            failed |= proc.returncode != 0
            del procs[i]
        time.sleep(0.5)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
