"""A short, bounded run of the fuzz targets (``scripts/fuzz`` runs them long)."""
from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import need
from tests.reliability.fuzz import FORMATS, build_seeds, mutate, target


@pytest.fixture(scope="module")
def seeds() -> dict[str, list[bytes]]:
    need("qemu-img")
    with tempfile.TemporaryDirectory() as tmp:
        return build_seeds(Path(tmp))


FLIPS = st.lists(st.tuples(st.one_of(st.integers(0, 200), st.integers(0, 1 << 16)),
                           st.integers(0, 255)), min_size=1, max_size=8)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_short_run(seeds: dict[str, list[bytes]], fmt: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, hard))
    try:
        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(which=st.integers(0, 16), flips=FLIPS)
        def run(which: int, flips: list[tuple[int, int]]) -> None:
            pool = seeds[fmt]
            target(mutate(pool[which % len(pool)], flips), fmt)
        run()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
