"""Time the parts of one Levenberg-Marquardt iteration that do not scale with the passes' kernels.

``python -m benchmarks lm-parts [--json PATH]`` (needs a CUDA GPU). At the N24 shape
(R = 20 problems, p = 594 free parameters, float64): the damped solve of ``(J^T J + lam D) delta =
J^T r`` by several routes, and the Gram product ``W^T V`` of ``kernels/moe/gram.py`` formed with
advanced indexing vs ``index_select``, at n = 10^5.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton.testing

from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.moe import gram
from kernels.moe.torch_pass import jacobian_coefficients
from moe_theory import models
from moe_theory.provenance import provenance


def _bench(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median"))


def _solves(R: int = 20, p: int = 594) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    A = torch.randn(R, p, p + 100, device="cuda", dtype=torch.float64, generator=g)
    S = A @ A.mT
    b = torch.randn(R, p, device="cuda", dtype=torch.float64, generator=g)
    out = {}

    def chol_solve():
        c, _ = torch.linalg.cholesky_ex(S)
        return torch.cholesky_solve(b[..., None], c)[..., 0]

    def chol_triangular():
        c, _ = torch.linalg.cholesky_ex(S)
        y = torch.linalg.solve_triangular(c, b[..., None], upper=False)
        return torch.linalg.solve_triangular(c.mT, y, upper=True)[..., 0]

    def chol_inverse():
        c, _ = torch.linalg.cholesky_ex(S)
        return (torch.cholesky_inverse(c) @ b[..., None])[..., 0]

    def lu_solve():
        return torch.linalg.solve_ex(S, b)[0]

    def inv_matvec():
        return (torch.linalg.inv_ex(S)[0] @ b[..., None])[..., 0]

    want = chol_solve()
    for name, fn in (("cholesky + cholesky_solve", chol_solve),
                     ("cholesky + 2 solve_triangular", chol_triangular),
                     ("cholesky + cholesky_inverse + matvec", chol_inverse),
                     ("LU solve_ex", lu_solve), ("inv_ex + matvec", inv_matvec)):
        got = fn()
        out[name] = {"ms": _bench(fn),
                     "rel_diff": float((got - want).norm() / want.norm())}
    out["cholesky alone"] = {"ms": _bench(lambda: torch.linalg.cholesky_ex(S))}
    return out


def _gram_forms(R: int = 20, n: int = 100_000, d: int = 32, k: int = 9) -> dict:
    g = torch.Generator(device="cuda").manual_seed(1)
    X = torch.rand(R, n, d, device="cuda", dtype=torch.float64, generator=g) * 2 - 1
    gp = torch.randn(R, k, d + 1, device="cuda", dtype=torch.float64, generator=g)
    ep = torch.randn(R, k, d + 1, device="cuda", dtype=torch.float64, generator=g) / d**0.5
    kw = dict(gate="sigmoid", score="linear", expert=models.get_expert("relu"))
    U = jacobian_coefficients(X, gp, ep, **kw)
    tab = gram.tables("sigmoid", "relu", d, k)
    ia, ja, index, _ = gram.device_tables("sigmoid", "relu", d, k, X.device)
    fa, ga = (torch.tensor(t, device=X.device) for t in (tab.fa, tab.ga))

    def advanced():
        step = gram.CHUNK_BYTES["cuda"] // (R * (tab.A + tab.Q + d + 1) * 8)
        out = X.new_zeros(R, tab.A, tab.Q)
        for s in range(0, n, step):
            Uc, Xc = U[:, :, s : s + step], X[:, s : s + step]
            V = gram.with_constant(Xc)
            out.baddbmm_(Uc[:, ia] * Uc[:, ja], V[..., fa] * V[..., ga])
        return out.reshape(R, -1)[:, index]

    def current():
        return gram.gram_jtj(U, X, gate="sigmoid", expert="relu", k=k)

    diff = float((advanced() - current()).norm() / current().norm())
    return {"advanced indexing ms": _bench(advanced), "index_select ms (gram.gram_jtj)":
            _bench(current), "rel_diff": diff, "shape": [R, n, d, k]}


def run(args: argparse.Namespace) -> int:
    """Time the solves and the Gram forms and write the JSON."""
    if not torch.cuda.is_available():
        print("lm-parts needs a CUDA GPU", file=sys.stderr)
        return 2
    prov = provenance("cuda")
    out = {"provenance": prov, "solves": _solves(), "gram": _gram_forms()}
    print(json.dumps(out, indent=1))
    write_json(output_path(args, "lm_parts", prov), out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``lm-parts`` subcommand."""
    p = subparsers.add_parser("lm-parts", help="damped solves and Gram forms of one LM iteration",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.set_defaults(run=run)
