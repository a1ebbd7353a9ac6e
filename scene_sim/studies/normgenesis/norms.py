"""Norms, categories and exemplars as data (``worlds/normgenesis/``), validated on load.

Every problem names the file and the field (``norms/ko.json: norms[3].category: unknown category
'greet'``), so the bank can grow by editing JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError

__all__ = ["Bank", "Exemplar", "Norm", "load_bank", "worlds_dir"]


@dataclass(frozen=True)
class Norm:
    """One culture-specific norm."""

    id: str
    lang: str
    category: str
    norm: str
    setting: str
    topic: str


@dataclass(frozen=True)
class Exemplar:
    """A hand-written exemplar: a scenario-situation pair and a short dialogue."""

    id: str
    lang: str
    category: str
    scenario: str
    situation: str
    dialogue: tuple[str, ...]

    @property
    def text(self) -> str:
        """What is embedded for retrieval."""
        return f"{self.scenario} {self.situation} {' '.join(self.dialogue)}"


@dataclass(frozen=True)
class Bank:
    """Categories, norms per language and the exemplar bank."""

    categories: tuple[str, ...]
    norms: dict[str, tuple[Norm, ...]]
    exemplars: tuple[Exemplar, ...]

    @property
    def langs(self) -> tuple[str, ...]:
        """The languages that have norms."""
        return tuple(sorted(self.norms))

    def norms_for(self, lang: str, category: str) -> list[Norm]:
        """The norms of ``lang`` in ``category``, in file order."""
        return [n for n in self.norms.get(lang, ()) if n.category == category]


def worlds_dir() -> Path:
    """The study's data folder."""
    return content_dir("worlds") / "normgenesis"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SceneSimError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SceneSimError(f"{where}.{key}: must be a non-empty string")
    return value.strip()


def _list(doc: Any, key: str, where: str) -> list[Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise SceneSimError(f"{where}: needs a list '{key}'")
    return doc[key]


def _categories(path: Path) -> tuple[str, ...]:
    ids: list[str] = []
    for i, entry in enumerate(_list(_read(path), "categories", path.name)):
        where = f"{path.name}: categories[{i}]"
        if not isinstance(entry, dict):
            raise SceneSimError(f"{where}: must be an object")
        cid = _text(entry, "id", where)
        if cid in ids:
            raise SceneSimError(f"{where}.id: duplicate category '{cid}'")
        ids.append(cid)
    return tuple(ids)


def _lang_of(path: Path, doc: Any) -> str:
    lang = doc.get("lang") if isinstance(doc, dict) else None
    if lang != path.stem:
        where = f"{path.parent.name}/{path.name}"
        raise SceneSimError(f"{where}: lang: must be '{path.stem}' (the file's name), got {lang!r}")
    return lang


def _norms(path: Path, categories: tuple[str, ...], seen: set[str]) -> tuple[Norm, ...]:
    doc = _read(path)
    name = f"{path.parent.name}/{path.name}"
    lang = _lang_of(path, doc)
    out: list[Norm] = []
    for i, entry in enumerate(_list(doc, "norms", name)):
        where = f"{name}: norms[{i}]"
        if not isinstance(entry, dict):
            raise SceneSimError(f"{where}: must be an object")
        nid = _text(entry, "id", where)
        if nid in seen:
            raise SceneSimError(f"{where}.id: duplicate norm id '{nid}'")
        seen.add(nid)
        category = _text(entry, "category", where)
        if category not in categories:
            raise SceneSimError(f"{where}.category: unknown category '{category}'")
        fields = {k: _text(entry, k, where) for k in ("norm", "setting", "topic")}
        out.append(Norm(nid, lang, category, **fields))
    return tuple(out)


def _exemplars(path: Path, categories: tuple[str, ...], seen: set[str]) -> list[Exemplar]:
    doc = _read(path)
    name = f"{path.parent.name}/{path.name}"
    lang = _lang_of(path, doc)
    out: list[Exemplar] = []
    for i, entry in enumerate(_list(doc, "exemplars", name)):
        where = f"{name}: exemplars[{i}]"
        if not isinstance(entry, dict):
            raise SceneSimError(f"{where}: must be an object")
        eid = _text(entry, "id", where)
        if eid in seen:
            raise SceneSimError(f"{where}.id: duplicate exemplar id '{eid}'")
        seen.add(eid)
        category = _text(entry, "category", where)
        if category not in categories:
            raise SceneSimError(f"{where}.category: unknown category '{category}'")
        lines = entry.get("dialogue")
        if not isinstance(lines, list) or not lines or not all(isinstance(x, str) and x.strip() for x in lines):
            raise SceneSimError(f"{where}.dialogue: must be a non-empty list of 'Name: utterance' strings")
        out.append(
            Exemplar(
                eid, lang, category, _text(entry, "scenario", where), _text(entry, "situation", where), tuple(lines)
            )
        )
    return out


def load_bank(root: str | Path | None = None) -> Bank:
    """Load and validate ``categories.json``, ``norms/*.json`` and ``exemplars/*.json``.

    Raises:
        SceneSimError: naming the bad file and field.

    """
    return _load(str(Path(root) if root is not None else worlds_dir()))


@cache
def _load(root_text: str) -> Bank:
    root = Path(root_text)
    categories = _categories(root / "categories.json")
    norms: dict[str, tuple[Norm, ...]] = {}
    seen: set[str] = set()
    for path in sorted((root / "norms").glob("*.json")):
        norms[path.stem] = _norms(path, categories, seen)
    if not norms:
        raise SceneSimError(f"{root / 'norms'}: no norms/<lang>.json files")
    exemplars: list[Exemplar] = []
    seen_ex: set[str] = set()
    for path in sorted((root / "exemplars").glob("*.json")):
        exemplars.extend(_exemplars(path, categories, seen_ex))
    return Bank(categories, norms, tuple(exemplars))
