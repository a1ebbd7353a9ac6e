from __future__ import annotations

import asyncio
import contextlib

import pytest

from scene_sim.studies.scene.scenario import load_scenarios
from scene_sim.studies.scene.taxonomy import load_taxonomy


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
