"""Locate the content folders that ship with the package.

``worlds/``, ``agents/`` and ``experiments/`` live at the repository root so
users can read and copy them. A wheel carries them under
``scene_sim/_bundled/``; an editable install reads them from the checkout.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["content_dir"]

_PACKAGE = Path(__file__).resolve().parent


@cache
def content_dir(name: str) -> Path:
    """Return the folder ``name`` (``worlds``, ``agents`` or ``experiments``)."""
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"scene-sim content folder '{name}' not found next to {_PACKAGE}")
