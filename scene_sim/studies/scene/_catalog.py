"""Process-wide caches of the parsed taxonomy and scenario sources.

Episodes of a sweep (or of ``mesa.batch_run``) share these instead of
re-reading and re-validating the JSON each time.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from scene_sim.studies.scene.scenario import ScenarioBank, load_scenarios
from scene_sim.studies.scene.taxonomy import Taxonomy, load_taxonomy

__all__ = ["scenario_source", "taxonomy_at"]


@cache
def taxonomy_at(directory: str | None = None) -> Taxonomy:
    """The taxonomy in ``directory`` (None: the shipped one), loaded once."""
    return load_taxonomy(directory)


@cache
def _source(path: str | None, taxonomy_dir: str | None, mtime: float) -> ScenarioBank:
    return load_scenarios(path, taxonomy=taxonomy_at(taxonomy_dir))


def scenario_source(path: str | Path | None = None, taxonomy_dir: str | None = None) -> ScenarioBank:
    """Scenarios from ``path`` (None: the shipped bank), reloaded when the file changes."""
    key = str(path) if path is not None else None
    mtime = Path(path).stat().st_mtime if path is not None and Path(path).exists() else 0.0
    return _source(key, taxonomy_dir, mtime)
