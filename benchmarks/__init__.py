"""Benchmarks of the kernels and the fits: ``python -m benchmarks <name> [...]``.

The top layer of the repository: it imports ``kernels`` and ``moe_theory``; nothing imports it
but ``tests/``. Each benchmark checks its results before timing them with the functions of
:mod:`benchmarks.checks`, which the GPU tests (``tests/gpu``) run too. Results are JSON
(docs/kernels.md#measuring-speed) written by :func:`benchmarks.output.write_json`, which records
:func:`moe_theory.provenance.provenance`; committed runs live in
``benchmarks/results/<benchmark>/<date>_<gpu>_<commit7>[_<label>].json``.

This file imports nothing, so that ``pytest -p benchmarks.pytest_outcomes`` stays light.
"""
