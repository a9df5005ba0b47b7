"""Fixtures shared by the moe_theory tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A G_bar cache of the module's own (``MOE_THEORY_CACHE``), so that a module's sweeps
    neither read nor fill the user's: a module that uses it says so with
    ``pytestmark = pytest.mark.usefixtures("module_cache")``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_THEORY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
