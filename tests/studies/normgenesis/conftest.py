from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private cache dir (response cache and the exemplar index) per test."""
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
