"""SCENE's ``view`` command: the core viewer plus the hidden facts behind its reveal control.

The viewer itself (reading a run directory, the page, its script) is the
core's :mod:`scene_sim.viewer`; this module adds, per episode, the hidden
norm, the sanction's description and the scenario's persona outlines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scene_sim import viewer as core
from scene_sim.rundir import RunDir
from scene_sim.viewer import DATA_ELEMENT_ID, add_view_arguments, render_viewer_html

__all__ = [
    "DATA_ELEMENT_ID",
    "add_view_arguments",
    "collect_viewer_data",
    "main",
    "render_viewer_html",
    "run_view",
    "scene_facts",
    "write_viewer",
]


class _ScenarioLookup:
    """Finds the scenario an episode ran (run's own source first, then the shipped bank)."""

    def __init__(self, run_dir: RunDir, spec: dict[str, Any]) -> None:
        self.sources: list[str | None] = []
        declared = spec.get("scenarios")
        if isinstance(declared, dict):  # a sweep spec: {"source": "bank" | "generate" | path, ...}
            declared = declared.get("source")
        if isinstance(declared, str) and declared and declared not in ("bank", "generate"):
            p = Path(declared)
            for cand in (p, run_dir.path / p):
                if cand.exists():
                    self.sources.append(str(cand))
                    break
        for name in ("scenarios.jsonl", "scenarios.json", "scenarios"):
            cand = run_dir.path / name
            if cand.exists():
                self.sources.append(str(cand))
        self.sources.append(None)  # the shipped bank
        self.taxonomy_dir = spec.get("taxonomy") if isinstance(spec.get("taxonomy"), str) else None
        self._banks: dict[str | None, Any] = {}
        self._cache: dict[str, Any] = {}

    def _bank(self, source: str | None) -> Any:
        if source not in self._banks:
            from scene_sim.studies.scene._catalog import scenario_source

            try:
                self._banks[source] = scenario_source(source, self.taxonomy_dir)
            except Exception:  # a broken source only costs the persona outlines
                self._banks[source] = None
        return self._banks[source]

    def get(self, scenario_id: str) -> Any:
        if scenario_id not in self._cache:
            found = None
            for source in self.sources:
                bank = self._bank(source)
                if bank is not None and scenario_id in bank:
                    found = bank.get(scenario_id)
                    break
            self._cache[scenario_id] = found
        return self._cache[scenario_id]


def _taxonomy(spec: dict[str, Any]) -> Any:
    from scene_sim.studies.scene._catalog import taxonomy_at

    directory = spec.get("taxonomy") if isinstance(spec.get("taxonomy"), str) else None
    try:
        return taxonomy_at(directory)
    except Exception:
        try:
            return taxonomy_at(None)
        except Exception:
            return None


def _norm_record(taxonomy: Any, norm_id: str) -> dict[str, Any]:
    if taxonomy is None or norm_id not in getattr(taxonomy, "norms", {}):
        return {"text": None}
    norm = taxonomy.norms[norm_id]
    partner = taxonomy.norms.get(norm.pole_partner)
    return {
        "text": norm.norm_text,
        "kind": norm.kind,
        "partner": norm.pole_partner,
        "partner_text": partner.norm_text if partner is not None else None,
    }


def _scenario_record(scenario: Any) -> dict[str, Any]:
    return {
        "subject": scenario.scaffold.subject.name,
        "channel": scenario.scaffold.channel.description,
        "personas": [[p.name, p.outline] for p in scenario.hidden.personas],
        "demonstrator": scenario.hidden.precedent_demonstrator,
    }


def scene_facts(rd: RunDir, spec: dict[str, Any], episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The viewer's SCENE data: ``norms``, ``sanctions`` and ``scenarios`` (hidden facts by id)."""
    taxonomy = _taxonomy(spec)
    lookup = _ScenarioLookup(rd, spec)
    norms: dict[str, Any] = {}
    sanctions: dict[str, str] = {}
    scenarios: dict[str, Any] = {}
    for ep in episodes:
        norm_id, sanction_id = ep["t"][1], ep["t"][3]
        if norm_id and norm_id not in norms:
            norms[norm_id] = _norm_record(taxonomy, norm_id)
        if sanction_id and sanction_id not in sanctions and taxonomy is not None:
            s = taxonomy.sanctions.get(sanction_id)
            if s is not None:
                sanctions[sanction_id] = s.description
        sid = ep["sc"]
        if sid and sid not in scenarios:
            sc = lookup.get(sid)
            scenarios[sid] = _scenario_record(sc) if sc is not None else None
    return {"norms": norms, "sanctions": sanctions, "scenarios": scenarios}


def collect_viewer_data(run_dir: str | Path) -> dict[str, Any]:
    """The viewer's data for a SCENE run directory (see :func:`scene_sim.viewer.collect_viewer_data`)."""
    return core.collect_viewer_data(run_dir, enrich=scene_facts)


def write_viewer(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the viewer of a SCENE run directory (see :func:`scene_sim.viewer.write_viewer`)."""
    return core.write_viewer(run_dir, out, enrich=scene_facts)


def run_view(args: argparse.Namespace) -> int:
    """Run the ``view`` command for parsed ``args``; returns the exit status."""
    return core.run_view(args, enrich=scene_facts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scene_sim.studies.scene.viewer RUN_DIR [--out FILE] [--open]``: the same as ``scene-sim view``."""
    from scene_sim.cli import main as cli_main

    return cli_main(["view", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
