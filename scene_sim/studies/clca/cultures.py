"""The cultures a scenario is adapted to and role-played in (``worlds/clca/cultures.json``).

Each culture carries seed 004's verbalised Hofstede dimensions (Table 17)
and Inglehart-Welzel position (Table 18), which go into the role-players'
system prompt, plus names and places used only by the offline adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError

__all__ = ["Culture", "builtin_cultures_path", "load_cultures", "resolve_cultures"]


class Culture(BaseModel):
    """One culture."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    adjective: str = ""
    hofstede: str = Field(min_length=1)
    inglehart_welzel: str = Field(min_length=1)
    names: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    places: tuple[str, ...] = ()


def builtin_cultures_path() -> Path:
    """The shipped ``cultures.json``."""
    return content_dir("worlds") / "clca" / "cultures.json"


def validation_line(path: Path | str, exc: ValidationError, prefix: str = "") -> str:
    """One line naming the file and the first bad field of a pydantic error."""
    err = exc.errors()[0]
    loc = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    return f"{path}: {loc.lstrip('.') or 'record'}: {err['msg']}"


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing or malformed file into one clear line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SceneSimError(f"{path}: not valid JSON ({exc})") from None


def load_cultures(path: str | Path | None = None) -> dict[str, Culture]:
    """Load the cultures file (default: the shipped one), by name.

    Raises:
        SceneSimError: naming the file and the bad field.

    """
    file = Path(path) if path else builtin_cultures_path()
    data = read_json(file)
    items = data.get("cultures") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise SceneSimError(f"{file}: cultures: expected a non-empty list of cultures")
    out: dict[str, Culture] = {}
    for i, item in enumerate(items):
        try:
            culture = Culture.model_validate(item)
        except ValidationError as exc:
            raise SceneSimError(validation_line(file, exc, f"cultures[{i}]")) from None
        if culture.name in out:
            raise SceneSimError(f"{file}: cultures[{i}].name: duplicate culture '{culture.name}'")
        out[culture.name] = culture
    return out


def resolve_cultures(names: str | list[str], cultures: dict[str, Culture]) -> list[Culture]:
    """The cultures named in ``names`` (comma-separated or a list; names or aliases, any case)."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not wanted:
        raise SceneSimError("--cultures: name at least one culture")
    index: dict[str, Culture] = {}
    for c in cultures.values():
        for key in (c.name, *c.aliases):
            index[key.lower()] = c
    out: list[Culture] = []
    for name in wanted:
        culture = index.get(name.lower())
        if culture is None:
            raise SceneSimError(f"unknown culture '{name}'; known: {', '.join(cultures)}")
        if culture not in out:
            out.append(culture)
    return out
