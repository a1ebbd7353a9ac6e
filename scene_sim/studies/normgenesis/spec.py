"""Experiment specs for ``normgenesis generate --spec SPEC.toml``: the ``[generate]`` table's options.

Keys are the command's long options with ``_`` for ``-`` (``norms_per_category``);
lists may be TOML arrays or comma strings. Unknown keys are errors, named.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from scene_sim.errors import SceneSimError

__all__ = ["SPEC_KEYS", "load_spec"]

#: The keys a spec's ``[generate]`` table may set, and their types.
SPEC_KEYS: dict[str, type] = {
    "langs": str, "categories": str, "norms_per_category": int, "scenarios_per_norm": int, "types": str,
    "model": str, "judge": str, "threshold": int, "max_rounds": int, "seed": int, "mode": str, "top_k": int,
    "encoder": str, "concurrency": int, "budget": float,
}  # fmt: skip


def load_spec(path: str | Path) -> dict[str, Any]:
    """The ``[generate]`` table of ``path``, checked (lists joined with commas).

    Raises:
        SceneSimError: a missing or unreadable file, no ``[generate]`` table, an unknown key or a wrong type.

    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{path}: spec not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SceneSimError(f"{path}: not valid TOML ({exc})") from None
    table = doc.get("generate")
    if not isinstance(table, dict):
        raise SceneSimError(f"{path}: needs a [generate] table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        kind = SPEC_KEYS.get(key)
        if kind is None:
            raise SceneSimError(f"{path}: generate.{key}: unknown key (known: {', '.join(SPEC_KEYS)})")
        if kind is str and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SceneSimError(f"{path}: generate.{key}: must be {kind.__name__}, got {value!r}")
        out[key] = value
    return out
