"""CLCA commands (registered by :mod:`scene_sim.studies.clca.cli`)."""

from __future__ import annotations

from scene_sim.plugins import CommandGroup

__all__ = ["register"]


def register(group: CommandGroup) -> None:
    """Add these commands to ``group``."""
