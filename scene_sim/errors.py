"""User-facing errors.

Anything a user can cause (a bad file, an unknown id, a missing key) raises
:class:`SceneSimError` with a one-line message; the CLI prints it without a
traceback and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

__all__ = ["SceneSimError", "suggest"]


class SceneSimError(Exception):
    """An error caused by input the user can fix; its message is one line."""


def suggest(word: str, choices: Iterable[str], n: int = 3, *, aliases: Mapping[str, str] | None = None) -> str:
    """Return a ' (did you mean ...?)' hint for ``word`` among ``choices``, or ''.

    Args:
        word: what the user wrote.
        choices: the valid words.
        n: at most this many suggestions.
        aliases: words people commonly use for a choice (``gemini`` -> ``google``);
            an alias beats spelling similarity, which knows nothing of meaning.

    """
    pool = [str(c) for c in choices]
    if aliases:
        key = word.strip().lower()
        hit = aliases.get(key) or next((v for k, v in aliases.items() if key.startswith(k)), None)
        if hit in pool:
            return f" (did you mean {hit!r}?)"
    close = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    if not close and len(word) >= 3:
        # ids are long: a fragment of one is a good enough hint
        close = [c for c in pool if word.lower() in c.lower()][:n]
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
