from __future__ import annotations

import pytest

from scene_sim.scenario import load_scenarios
from scene_sim.taxonomy import load_taxonomy


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
