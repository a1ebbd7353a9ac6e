"""The ``scene-sim`` command line: the root, with each study's commands.

The commands come from the studies (:mod:`scene_sim.plugins`). User mistakes
(bad files, unknown ids, missing keys) print one line and exit with status
2; nothing prints a traceback unless ``SCENE_SIM_DEBUG=1``. A closed output
pipe (``scene-sim scenarios | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence

from scene_sim.errors import SceneSimError
from scene_sim.plugins import CommandGroup, Study, discover_studies

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every other user error
        raise SceneSimError(f"{self.prog}: {message}")


def build_parser(studies: Iterable[Study] = ()) -> argparse.ArgumentParser:
    """The root parser with the commands of every installed study (and ``studies``)."""
    parser = _Parser(
        prog="scene-sim",
        description="Agent-based simulation of group chats and conversations with LLM agents.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for study in discover_studies(studies):
        if study.top_level:
            study.register(CommandGroup(sub))
            continue
        group = sub.add_parser(study.name, help=study.description, description=study.description)
        group.set_defaults(handler=None, group_parser=group)
        study.register(CommandGroup(group.add_subparsers(dest="study_command", parser_class=_Parser), study.name))
    return parser


def main(argv: Sequence[str] | None = None, *, studies: Iterable[Study] = ()) -> int:
    """Entry point of the ``scene-sim`` console script.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        studies: studies to host besides the installed ones (tests, notebooks).

    """
    debug = os.environ.get("SCENE_SIM_DEBUG") == "1"
    try:
        parser = build_parser(studies)
        args = parser.parse_args(argv)
        if args.version:
            from scene_sim._version import __version__

            print(__version__)
            return 0
        handler = getattr(args, "handler", None)
        if handler is None:
            (getattr(args, "group_parser", None) or parser).print_help()
            return 2
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit-time flush
        return code
    except BrokenPipeError:
        # the reader stopped reading (| head): not an error of ours; silence the exit-time flush too
        _silence_stdout()
        return 0
    except SceneSimError as exc:
        if debug:
            raise
        print(f"scene-sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scene-sim: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a captured stream): nothing to silence
        pass


if __name__ == "__main__":
    sys.exit(main())
