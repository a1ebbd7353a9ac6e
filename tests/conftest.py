from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from scene_sim.studies.scene.scenario import load_scenarios
from scene_sim.studies.scene.taxonomy import load_taxonomy

#: Ray's own switch for loopback-only clusters (else it binds the machine's address); read at import.
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--real-api", action="store_true", default=False, help="run tests that call real provider APIs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--real-api"):
        return
    skip = pytest.mark.skip(reason="real API test: pass --real-api (and set the provider's key) to run")
    for item in items:
        if "real_api" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def taxonomy():
    return load_taxonomy()


@pytest.fixture(scope="session")
def bank(taxonomy):
    return load_scenarios(taxonomy=taxonomy)


class LoopTicks:
    """Counts the turns of a background ticker task: proof that the event loop was not blocked.

    ``async with loop_ticks(0.01) as ticks: ...`` then ``ticks.count``.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> LoopTicks:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
def loop_ticks() -> type[LoopTicks]:
    """The :class:`LoopTicks` class, for tests that check the event loop keeps running."""
    return LoopTicks


@pytest.fixture(scope="session")
def cluster():
    """A local 2-CPU Ray cluster on loopback, shared by the Ray tests of this process; yields its address."""
    # Ray's own switch for loopback-only clusters (else it binds the machine's address); read at import
    before = os.environ.get(LOOPBACK)
    os.environ[LOOPBACK] = "0"
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        yield address
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop(LOOPBACK, None)
        else:
            os.environ[LOOPBACK] = before
