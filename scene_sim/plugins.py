"""Studies as plugins: how the core finds SCENE, CLCA, NormGenesis and yours.

A study is a package that exposes a :class:`Study` object under the
entry-point group ``scene_sim.studies`` (the way pytest finds plugins)::

    # pyproject.toml of your package
    [project.entry-points."scene_sim.studies"]
    mystudy = "my_package.study:study"

The core imports no study: it reads the entry points, and each study adds
its own commands to the ``scene-sim`` command line through a
:class:`CommandGroup`. SCENE, the first study, puts its commands at the top
level (``scene-sim run``, ``scene-sim sweep``, ...); every other study gets
a group of its own (``scene-sim clca adapt``, ``scene-sim normgenesis
generate``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

__all__ = ["ENTRY_POINT_GROUP", "Command", "CommandGroup", "Study", "add_cache_argument", "discover_studies"]

#: The entry-point group studies are registered under.
ENTRY_POINT_GROUP = "scene_sim.studies"

#: A command handler: parsed arguments in, exit status out.
Command = Callable[[argparse.Namespace], int]


def add_cache_argument(parser: argparse.ArgumentParser, *, default: str | None = "read-write") -> None:
    """Add the contract's ``--cache read-write|read-only|off`` option.

    Args:
        parser: the command's parser.
        default: the mode without the flag; None leaves it to the command (e.g. a spec's ``run.cache``).

    """
    said = f"default {default}" if default else "default: the spec's run.cache"
    parser.add_argument(
        "--cache",
        default=default,
        choices=("read-write", "read-only", "off"),
        help=f"response cache mode ({said}; in $SCENE_SIM_CACHE_DIR)",
    )


class CommandGroup:
    """Where a study adds its commands: a thin wrapper over argparse sub-parsers.

    Args:
        subparsers: the ``add_subparsers`` action to add to.
        prefix: the command path so far (``""`` at the top level, ``"clca"`` for a group).

    """

    def __init__(self, subparsers: argparse._SubParsersAction, prefix: str = "") -> None:  # type: ignore[type-arg]
        self._sub = subparsers
        self.prefix = prefix

    def add(self, name: str, handler: Command, *, help: str) -> argparse.ArgumentParser:
        """Add command ``name`` run by ``handler``; returns its parser for arguments."""
        parser: argparse.ArgumentParser = self._sub.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser


@dataclass(frozen=True)
class Study:
    """A study the command line can host.

    Attributes:
        name: the study's name (its command group, e.g. ``clca``).
        description: one line for ``scene-sim --help``.
        register: adds the study's commands to a :class:`CommandGroup`.
        top_level: put the commands at the top level instead of under ``name``
            (SCENE, whose commands predate the study groups).

    """

    name: str
    description: str
    register: Callable[[CommandGroup], None]
    top_level: bool = False


@cache
def _installed() -> tuple[Study, ...]:
    found: list[Study] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            study = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down: say so, go on
            print(f"scene-sim: warning: study '{ep.name}' ({ep.value}) failed to load: {exc}", file=sys.stderr)
            continue
        if not isinstance(study, Study):
            print(f"scene-sim: warning: study '{ep.name}' ({ep.value}) is not a Study; skipped", file=sys.stderr)
            continue
        found.append(study)
    return tuple(found)


def discover_studies(extra: Iterable[Study] = ()) -> list[Study]:
    """The installed studies (from entry points), plus ``extra``, by name; later names win."""
    by_name = {s.name: s for s in (*_installed(), *extra)}
    return sorted(by_name.values(), key=lambda s: (not s.top_level, s.name))
