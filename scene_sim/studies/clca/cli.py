"""``scene-sim clca ...``: the data commands and the training / evaluation commands."""

from __future__ import annotations

from scene_sim.plugins import CommandGroup
from scene_sim.studies.clca import data_cli, eval_cli

__all__ = ["register"]


def register(group: CommandGroup) -> None:
    """Add CLCA's commands to ``group``."""
    data_cli.register(group)
    eval_cli.register(group)
