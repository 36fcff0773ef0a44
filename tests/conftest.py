"""Shared fixtures: small synthetic archives built once per session, a fake NBIA server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio, the loop aiohttp needs."""
    return "asyncio"


@pytest.fixture(scope="session")
def small_spec() -> ArchiveSpec:
    """A fast archive: 1 collection, 2 patients, 2 studies each, 2 series each, 5-8 64x64 images."""
    return ArchiveSpec(
        patients_per_collection=2,
        studies_per_patient=2,
        series_per_study=2,
        images_per_series=(5, 6, 7, 8),
        rows=64,
        columns=64,
        seed=7,
    )


@pytest.fixture(scope="session")
def small_archive(small_spec: ArchiveSpec, tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """The small archive, built once per session into a temporary cache directory."""
    return FakeArchive.build(small_spec, tmp_path_factory.mktemp("archive-cache"))


@pytest.fixture(scope="session")
def awkward_archive(tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """An archive whose IDs and descriptions hold every awkward value (../, CON, emoji, ...)."""
    spec = ArchiveSpec(
        patients_per_collection=3,
        studies_per_patient=2,
        series_per_study=3,
        images_per_series=2,
        rows=16,
        columns=16,
        seed=11,
        awkward=True,
    )
    return FakeArchive.build(spec, tmp_path_factory.mktemp("awkward-cache"))


@pytest.fixture
def nbia_server(small_archive: FakeArchive) -> Iterator[FakeNbiaServer]:
    """A fake NBIA server over ``small_archive`` on 127.0.0.1, fresh log and no faults per test."""
    server = FakeNbiaServer(small_archive)
    with run_in_thread(server) as running:
        yield running
