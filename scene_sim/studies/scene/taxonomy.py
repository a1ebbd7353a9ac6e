"""The SCENE taxonomy as data: events, norms, elicitors, sanctions, precedent.

The JSON files under ``worlds/scene/taxonomy/`` are the source of truth; this
module loads and validates them and answers the questions the rest of the
pipeline asks: which tuples are valid, which norm is a norm's pole partner,
and which observable cues mark compliance, breach, sanction and repair.

A new norm is a JSON entry (with its partner); nothing here changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scene_sim._resources import content_dir
from scene_sim.errors import SceneSimError, suggest

__all__ = [
    "AXES",
    "Cue",
    "Elicitor",
    "Event",
    "Norm",
    "Sanction",
    "SceneTuple",
    "Taxonomy",
    "default_taxonomy_dir",
    "load_taxonomy",
    "sample_tuples",
]

AXES = ("event", "norm", "elicitor", "sanction", "precedent")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Cue(_Frozen):
    """One observable pattern; every condition it sets must hold (AND).

    A list of cues matches when any cue matches (OR). Context flags
    (``*_offender``) only make sense when a turn is judged against an earlier
    breach turn.
    """

    action: Literal["message", "react"] | None = None
    match: tuple[str, ...] = ()
    not_match: tuple[str, ...] = ()
    min_words: int | None = None
    max_words: int | None = None
    emoji: tuple[str, ...] = ()
    targets_offender: bool = False
    mentions_offender: bool = False
    echoes_offender: bool = False
    ignores_offender: bool = False

    @field_validator("match", "not_match", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v


class _Entry(_Frozen):
    id: str
    description: str = Field(min_length=1)
    rationale: str = Field(min_length=1)


class Event(_Entry):
    """An event type: the situation the chat is about."""

    features: dict[str, bool]


class _Applicable(_Entry):
    applies_to: tuple[str, ...] = Field(min_length=1)
    requires: tuple[str, ...] = ()


class NormCues(_Frozen):
    comply: tuple[Cue, ...] = ()
    breach: tuple[Cue, ...] = ()


class ScriptedAction(_Frozen):
    action: Literal["message", "react"]
    content: str = Field(min_length=1)


class NormScripted(_Frozen):
    """Content the offline scripted subjects use to act in this norm's register."""

    comply: tuple[ScriptedAction, ...] = Field(min_length=1)
    repair: tuple[str, ...] = Field(min_length=1)


class Norm(_Applicable):
    """A hidden group norm; one pole of an opposing pair."""

    pair: int
    pole_partner: str
    kind: Literal["form", "content"]
    norm_text: str = Field(min_length=1)
    compliance_signals: tuple[str, ...] = Field(min_length=1)
    breach_signals: tuple[str, ...] = Field(min_length=1)
    key_terms: tuple[str, ...] = ()
    cues: NormCues
    scripted: NormScripted


class Elicitor(_Applicable):
    """How the scaffold positions the subject to act."""


class Sanction(_Applicable):
    """A sanction modality: how the personas mark a breach."""

    actors: Literal["one", "many"]
    form: Literal["react", "message", "ignore"]
    cues: tuple[Cue, ...] = Field(min_length=1)


@dataclass(frozen=True, order=True)
class SceneTuple:
    """One point of the design space: (event, norm, elicitor, sanction, precedent)."""

    event: str
    norm: str
    elicitor: str
    sanction: str
    precedent: int

    def as_dict(self) -> dict[str, Any]:
        """The tuple as the plain mapping used in scenarios and event logs."""
        return {
            "event": self.event,
            "norm": self.norm,
            "elicitor": self.elicitor,
            "sanction": self.sanction,
            "precedent": self.precedent,
        }


class Taxonomy:
    """The validated taxonomy. Build it with :func:`load_taxonomy`."""

    def __init__(
        self,
        events: Sequence[Event],
        norms: Sequence[Norm],
        elicitors: Sequence[Elicitor],
        sanctions: Sequence[Sanction],
        precedent: Sequence[int],
        patterns: dict[str, str],
        repair_cues: Sequence[Cue],
        banned_terms: Sequence[str] = (),
    ) -> None:
        self.events = {e.id: e for e in events}
        self.norms = {n.id: n for n in norms}
        self.elicitors = {e.id: e for e in elicitors}
        self.sanctions = {s.id: s for s in sanctions}
        self.precedent = tuple(precedent)
        self.patterns = {k: re.compile(v) for k, v in patterns.items()}
        self.repair_cues = tuple(repair_cues)
        self.banned_terms = tuple(banned_terms)

    # -- lookups ---------------------------------------------------------
    def norm(self, norm_id: str) -> Norm:
        """Return the norm ``norm_id`` or raise with close matches."""
        return _get(self.norms, norm_id, "norm")

    def partner(self, norm_id: str) -> Norm:
        """Return the opposing pole of ``norm_id``."""
        return self.norms[self.norm(norm_id).pole_partner]

    def pair(self, norm_id: str) -> tuple[Norm, Norm]:
        """Both poles of the pair containing ``norm_id``, in file order.

        The order does not reveal which pole is active, so offline learners can
        be handed the pair as their hypothesis space.
        """
        norm = self.norm(norm_id)
        poles = [n for n in self.norms.values() if n.pair == norm.pair]
        return poles[0], poles[1]

    def check_tuple(self, t: SceneTuple) -> None:
        """Raise :class:`SceneSimError` unless ``t`` is a valid tuple."""
        _get(self.events, t.event, "event")
        norm = _get(self.norms, t.norm, "norm")
        elicitor = _get(self.elicitors, t.elicitor, "elicitor")
        sanction = _get(self.sanctions, t.sanction, "sanction")
        if t.precedent not in self.precedent:
            raise SceneSimError(f"precedent must be one of {list(self.precedent)}, got {t.precedent!r}")
        for axis, entry in (("norm", norm), ("elicitor", elicitor), ("sanction", sanction)):
            if t.event not in entry.applies_to:
                raise SceneSimError(f"{axis} '{entry.id}' does not apply to event '{t.event}'")

    # -- the tuple space -------------------------------------------------
    @cached_property
    def valid_tuples(self) -> tuple[SceneTuple, ...]:
        """Every tuple that passes the applicability filter, sorted."""
        out = []
        for ev in self.events:
            norms = [n for n in self.norms.values() if ev in n.applies_to]
            elics = [e for e in self.elicitors.values() if ev in e.applies_to]
            sancs = [s for s in self.sanctions.values() if ev in s.applies_to]
            for n in norms:
                for el in elics:
                    for s in sancs:
                        for p in self.precedent:
                            out.append(SceneTuple(ev, n.id, el.id, s.id, p))
        return tuple(sorted(out))

    def counts(self) -> dict[str, int]:
        """The contract object printed by ``scene-sim taxonomy --json``."""
        sizes = {
            "events": len(self.events),
            "norms": len(self.norms),
            "elicitors": len(self.elicitors),
            "sanctions": len(self.sanctions),
            "precedent": len(self.precedent),
        }
        cart = 1
        for v in sizes.values():
            cart *= v
        return {**sizes, "cartesian": cart, "valid": len(self.valid_tuples)}

    def axis_values(self, axis: str) -> tuple[Any, ...]:
        """All values of one axis, in file order."""
        return {
            "event": tuple(self.events),
            "norm": tuple(self.norms),
            "elicitor": tuple(self.elicitors),
            "sanction": tuple(self.sanctions),
            "precedent": self.precedent,
        }[axis]


def _get(table: dict[str, Any], key: str, what: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise SceneSimError(f"unknown {what} '{key}'{suggest(str(key), table)}") from None


# -- loading -----------------------------------------------------------------

_FILES = {
    "event": "events.json",
    "norm": "norms.json",
    "elicitor": "elicitors.json",
    "sanction": "sanctions.json",
    "precedent": "precedent.json",
}
_MODELS: dict[str, type[_Entry]] = {"event": Event, "norm": Norm, "elicitor": Elicitor, "sanction": Sanction}


def default_taxonomy_dir() -> Path:
    """The taxonomy folder that ships with scene-sim."""
    return content_dir("worlds") / "scene" / "taxonomy"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SceneSimError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _pydantic_line(path: Path, prefix: str, exc: ValidationError) -> SceneSimError:
    err = exc.errors()[0]
    loc = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    return SceneSimError(f"{path}: {loc.lstrip('.')}: {err['msg']}")


def _entries(path: Path, model: type[_Entry]) -> list[Any]:
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list) or not doc["entries"]:
        raise SceneSimError(f"{path}: entries: must be a non-empty list")
    out, seen = [], set()
    for i, raw in enumerate(doc["entries"]):
        try:
            entry = model.model_validate(raw)
        except ValidationError as exc:
            raise _pydantic_line(path, f"entries[{i}]", exc) from None
        if entry.id in seen:
            raise SceneSimError(f"{path}: entries[{i}].id: duplicate id '{entry.id}'")
        seen.add(entry.id)
        out.append(entry)
    return out


def load_taxonomy(directory: str | Path | None = None) -> Taxonomy:
    """Load and validate the taxonomy folder (default: the shipped one).

    Raises:
        SceneSimError: naming the file and field of the first problem: unknown
            ids in ``applies_to``, asymmetric pole pairs, empty lists, unknown
            pattern names, events lacking a feature an entry requires.

    """
    root = Path(directory) if directory is not None else default_taxonomy_dir()
    loaded = {axis: _entries(root / _FILES[axis], model) for axis, model in _MODELS.items()}
    events: list[Event] = loaded["event"]
    norms: list[Norm] = loaded["norm"]
    elicitors: list[Elicitor] = loaded["elicitor"]
    sanctions: list[Sanction] = loaded["sanction"]

    prec_path = root / _FILES["precedent"]
    prec_doc = _read_json(prec_path)
    try:
        precedent = [int(e["id"]) for e in prec_doc["entries"]]
    except (KeyError, TypeError, ValueError):
        raise SceneSimError(f"{prec_path}: entries: each entry needs an integer id") from None
    if sorted(precedent) != [0, 1]:
        raise SceneSimError(f"{prec_path}: entries: precedent ids must be 0 and 1")

    pat_path = root / "patterns.json"
    patterns = _read_json(pat_path).get("patterns", {})
    for name, rx in patterns.items():
        try:
            re.compile(rx)
        except re.error as exc:
            raise SceneSimError(f"{pat_path}: patterns.{name}: invalid regular expression: {exc}") from None

    norm_doc = _read_json(root / _FILES["norm"])
    try:
        repair_cues = [Cue.model_validate(c) for c in norm_doc.get("repair_cues", [])]
    except ValidationError as exc:
        raise _pydantic_line(root / _FILES["norm"], "repair_cues", exc) from None
    banned = tuple(norm_doc.get("scaffold_banned_terms", ()))

    event_ids = {e.id: e for e in events}
    for axis, entries in (("norm", norms), ("elicitor", elicitors), ("sanction", sanctions)):
        path = root / _FILES[axis]
        for i, entry in enumerate(entries):
            for ev in entry.applies_to:
                if ev not in event_ids:
                    raise SceneSimError(
                        f"{path}: entries[{i}].applies_to: unknown event '{ev}'{suggest(ev, event_ids)}"
                    )
                for feature in entry.requires:
                    if not event_ids[ev].features.get(feature, False):
                        raise SceneSimError(
                            f"{path}: entries[{i}].applies_to: event '{ev}' has no '{feature}' feature "
                            f"required by '{entry.id}'"
                        )
            if len(set(entry.applies_to)) != len(entry.applies_to):
                raise SceneSimError(f"{path}: entries[{i}].applies_to: duplicate events")
            for j, cue in enumerate(_cues_of(entry)):
                for name in (*cue.match, *cue.not_match):
                    if name not in patterns:
                        raise SceneSimError(
                            f"{path}: entries[{i}].cues[{j}]: unknown pattern '{name}'{suggest(name, patterns)}"
                        )

    norm_path = root / _FILES["norm"]
    by_id = {n.id: n for n in norms}
    for i, n in enumerate(norms):
        partner = by_id.get(n.pole_partner)
        if partner is None:
            raise SceneSimError(
                f"{norm_path}: entries[{i}].pole_partner: unknown norm "
                f"'{n.pole_partner}'{suggest(n.pole_partner, by_id)}"
            )
        if partner.id == n.id or partner.pole_partner != n.id:
            raise SceneSimError(
                f"{norm_path}: entries[{i}].pole_partner: asymmetric pair "
                f"'{n.id}' -> '{partner.id}' -> '{partner.pole_partner}'"
            )
        if partner.pair != n.pair:
            raise SceneSimError(
                f"{norm_path}: entries[{i}].pair: '{n.id}' and '{partner.id}' have different pair numbers"
            )
        if set(partner.applies_to) != set(n.applies_to):
            raise SceneSimError(
                f"{norm_path}: entries[{i}].applies_to: '{n.id}' and its partner '{partner.id}' "
                "must apply to the same events"
            )
    return Taxonomy(events, norms, elicitors, sanctions, precedent, patterns, repair_cues, banned)


def _cues_of(entry: _Entry) -> Iterable[Cue]:
    if isinstance(entry, Norm):
        return (*entry.cues.comply, *entry.cues.breach)
    if isinstance(entry, Sanction):
        return entry.cues
    return ()


# -- sampling ------------------------------------------------------------------


def sample_tuples(taxonomy: Taxonomy, n: int, seed: int = 0) -> list[SceneTuple]:
    """Pick ``n`` distinct valid tuples that cover every axis value as evenly as possible.

    Greedy: each pick is the unused tuple that brings the most axis values
    not yet covered, then whose values have been used least so far (counts
    scaled by the axis size, so every axis weighs the same); ties go to a
    seeded random priority. Same seed, same list.

    Raises:
        SceneSimError: when ``n`` is not in ``1..len(valid tuples)``.

    """
    valid = taxonomy.valid_tuples
    if not 1 <= n <= len(valid):
        raise SceneSimError(f"--tuples must be between 1 and {len(valid)} (the number of valid tuples), got {n}")
    codes, sizes = [], []
    for axis in AXES:
        values = {v: i for i, v in enumerate(taxonomy.axis_values(axis))}
        codes.append(np.array([values[getattr(t, axis)] for t in valid]))
        sizes.append(len(values))
    rng = np.random.default_rng(seed)
    priority = rng.permutation(len(valid)).astype(np.float64) / len(valid)  # in [0, 1): only breaks ties
    counts = [np.zeros(s) for s in sizes]
    used = np.zeros(len(valid), dtype=bool)
    picks = []
    for _ in range(n):
        load = sum(c[code] * size for c, code, size in zip(counts, codes, sizes, strict=True))
        fresh = sum((c[code] == 0).astype(np.float64) for c, code in zip(counts, codes, strict=True))
        score = np.where(used, np.inf, load - fresh * 1e6 + priority)
        k = int(np.argmin(score))
        used[k] = True
        picks.append(valid[k])
        for c, code in zip(counts, codes, strict=True):
            c[code[k]] += 1
    return picks
