"""User-facing errors.

Anything a user can cause (a bad file, an unknown id, a missing key) raises
:class:`SceneSimError` with a one-line message; the CLI prints it without a
traceback and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["SceneSimError", "suggest"]


class SceneSimError(Exception):
    """An error caused by input the user can fix; its message is one line."""


def suggest(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ' (did you mean ...?)' hint for ``word`` among ``choices``, or ''."""
    pool = [str(c) for c in choices]
    close = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    if not close and len(word) >= 3:
        # ids are long: a fragment of one is a good enough hint
        close = [c for c in pool if word.lower() in c.lower()][:n]
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
